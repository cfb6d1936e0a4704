"""``avcall eval``: evaluations that print a table or JSON and write results."""
from __future__ import annotations

from . import codec_cmds, decoder_cmds, distill, encoder_cmds, latex_cmds, renderer_cmds, search


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate models (decoder, encoder, the encoder tables, LATEX, latent stream codec, neural renderer, search predictors)", description="Evaluate models on held-out data.")
    es = p.add_subparsers(dest="eval_command", metavar="WHAT")
    es.required = True
    for mod in (decoder_cmds, distill, encoder_cmds, latex_cmds, codec_cmds, renderer_cmds, search):
        mod.add_eval(es)
