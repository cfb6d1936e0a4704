"""``avcall train``: training commands of the model packages (torch is imported only inside them)."""
from __future__ import annotations

from . import codec_cmds, decoder_cmds, encoder_cmds, latex_cmds, renderer_cmds


def register(sub) -> None:
    p = sub.add_parser("train", help="train models (decoder, encoder, LATEX early head, latent stream codec, neural renderer)", description="Train a model; checkpoints resume an interrupted run.")
    ts = p.add_subparsers(dest="train_command", metavar="WHAT")
    ts.required = True
    for mod in (decoder_cmds, encoder_cmds, latex_cmds, codec_cmds, renderer_cmds):
        mod.add_train(ts)
