"""Which models the runtime runs: directories, defaults, the model id on the wire, what is installed.

The model objects themselves live with their packages and run on onnxruntime
only (never torch): the sender's :class:`encoder.runtime.Encoder` s
(:class:`~encoder.runtime.HmcEncoder`, and :class:`~encoder.latex.LatexEncoder`
when LATEX gates it) and the receiver's :class:`decoder.runtime.Avatar`.

A code only means something to the decoder whose latent space the encoder was
trained against. Both ends name that latent space with a **model id**,
``IDENTITY/zDIM`` (e.g. ``S1/z256``), carried in every frame; a receiver
refuses codes of another model with a clear message instead of drawing a
stranger's face.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from avcore.errors import UsageError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""Root that the default model directories are relative to."""
def default_encoder_dir(identity: str = "S1") -> str:
    """The sender's default encoder of ``identity`` relative to the package root (``encoder/models/IDENTITY/ARCH``,
    ARCH as :func:`encoder.runtime.default_arch` reads it from ``encoder/models/defaults.json``)."""
    from encoder.runtime import default_arch

    return f"encoder/models/{identity}/{default_arch(identity)}"


DEFAULT_ENCODER_DIR = default_encoder_dir()
"""Default per-view encoder models of S1 (relative to the installed package root)."""
DEFAULT_AVATAR_DIR = "decoder/models/S1"
"""Default codec-avatar decoder + topology (relative to the installed package root)."""


class MissingModelError(UsageError):
    """No model where one was asked for; the message names the command that makes it."""


def resolve_encoder_dir(model_dir: str | Path | None) -> Path | None:
    """The encoder directory to use: ``model_dir``, else the installed default if present, else None."""
    if model_dir:
        return Path(model_dir)
    default = PACKAGE_ROOT / DEFAULT_ENCODER_DIR
    return default if (default / "arch.json").is_file() else None


def resolve_avatar_dir(model_dir: str | Path | None) -> Path | None:
    """The decoder directory to use: ``model_dir``, else the installed default if present, else None."""
    if model_dir:
        return Path(model_dir)
    default = PACKAGE_ROOT / DEFAULT_AVATAR_DIR
    return default if (default / "config.json").is_file() and (default / "decoder.onnx").is_file() else None


def _ensure(found: Path | None, default: str, marker: str, what: str, train: str, flag: str) -> Path:
    if found is None or not (found / marker).is_file():
        raise MissingModelError(f"no trained {what} at {found or PACKAGE_ROOT / default} ({marker} missing); train one "
                                f"with '{train}' or pass {flag} DIR ('avcall models' lists the installed ones)")
    return found


def ensure_encoder_dir(model_dir: str | Path | None, identity: str = "S1") -> Path:
    """``model_dir``, else the installed default encoder; a clear error naming the command that trains one for
    ``identity`` otherwise."""
    return _ensure(resolve_encoder_dir(model_dir), DEFAULT_ENCODER_DIR, "arch.json", "encoder",
                   f"avcall train encoder --arch EEM --identity {identity} --install", "--encoder")


def ensure_avatar_dir(model_dir: str | Path | None, identity: str = "S1") -> Path:
    """``model_dir``, else the installed default avatar (decoder); a clear error naming the command that trains one
    for ``identity`` otherwise."""
    return _ensure(resolve_avatar_dir(model_dir), DEFAULT_AVATAR_DIR, "config.json", "avatar decoder",
                   f"avcall train decoder --identity {identity} --out DIR", "--avatar")


def ensure_render_models(avatar_dir: str | Path, render: str) -> None:
    """The neural renderer files (G, W and their settings: ``renderer.engine.RENDERER_FILES``) are in ``avatar_dir``
    when ``render`` is a display-clock mode (both modes load G and W); else one line that names what is missing and
    the command that trains and installs them."""
    if render == "raster":
        return
    from renderer.engine import renderer_files_missing

    missing = renderer_files_missing(avatar_dir)
    if not missing:
        return
    identity = "S1"
    try:
        identity = json.loads((Path(avatar_dir) / "config.json").read_text())["decoder"]["identity"] or identity
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise MissingModelError(f"--render {render} needs the neural renderer in the avatar directory {avatar_dir} "
                            f"({', '.join(missing)} missing); train and install it with 'avcall train renderer "
                            f"--identity {identity} --install' (or use --render raster)")


def model_id(identity: str, latent_dim: int) -> str:
    """The latent space's name on the wire: ``IDENTITY/zDIM`` (``unknown`` when the model does not say its identity)."""
    return f"{identity or 'unknown'}/z{int(latent_dim)}"


def load_encoder(model_dir: str | Path | None, *, threads: int = 1, latex=None):
    """The sender's :class:`encoder.runtime.Encoder`: per-view encoders, gated by LATEX when ``latex``
    (a :class:`encoder.latex.LatexConfig`) is given."""
    from encoder.runtime import HmcEncoder

    encoder = HmcEncoder(ensure_encoder_dir(model_dir), threads=threads)
    if latex is None:
        return encoder
    from encoder.latex import LatexEncoder

    return LatexEncoder(encoder, latex, threads=threads)


def load_avatar(model_dir: str | Path | None, *, size: int = 512, threads: int = 1):
    """The receiver's :class:`decoder.runtime.Avatar` (decoder + eyes + rasterizer; GL made on first render)."""
    from decoder.runtime import Avatar

    return Avatar(ensure_avatar_dir(model_dir), size=size, threads=threads)


@dataclass
class InstalledModel:
    kind: str
    """``encoder`` or ``decoder``."""
    identity: str
    name: str
    """Encoder architecture (EEM, ...) or decoder preset."""
    path: Path
    latent_dim: int
    latex: bool = False
    """Encoder only: has a LATEX early model (``--latex`` works)."""
    default: bool = False
    """Encoder only: the one the sender runs for its identity (``encoder/models/defaults.json``)."""

    @property
    def model_id(self) -> str:
        return model_id(self.identity, self.latent_dim)


def installed_models() -> list[InstalledModel]:
    """The embedded models shipped with this installation (encoders and decoders), sorted."""
    out: list[InstalledModel] = []
    for d in sorted((PACKAGE_ROOT / "decoder" / "models").glob("*/config.json")):
        cfg = json.loads(d.read_text()).get("decoder", {})
        out.append(InstalledModel("decoder", str(cfg.get("identity", d.parent.name)), str(cfg.get("preset", "default")),
                                  d.parent, int(cfg.get("latent_dim", 0))))
    from encoder.runtime import default_arch

    enc_root = PACKAGE_ROOT / "encoder" / "models"
    for a in sorted(enc_root.glob("*/*/arch.json")):
        arch = json.loads(a.read_text())
        meta = a.parent / "meta.json"
        ident = json.loads(meta.read_text()).get("identity", a.parent.parent.name) if meta.is_file() else a.parent.parent.name
        out.append(InstalledModel("encoder", str(ident), str(arch.get("name", a.parent.name)), a.parent,
                                  int(arch.get("latent_dim", 0)), latex=(a.parent / "latex.json").is_file(),
                                  default=a.parent.name == default_arch(a.parent.parent.name, enc_root)))
    return out


def codec_dir_of(encoder_dir: str | Path | None) -> str:
    """``encoder_dir`` as the ``codec_dir`` of its receiver when it holds codec tables, else "" (a sender whose
    encoder has none sends plain frames, which need no tables)."""
    from transport.latent_codec import CODEC_JSON

    return str(encoder_dir) if encoder_dir and (Path(encoder_dir) / CODEC_JSON).is_file() else ""


def codecs_for(model: str, codec_dir: str | Path = "") -> dict:
    """Codec tables a receiver of ``model`` (a model id) decodes coded frames with, by codec id: those of
    ``codec_dir`` (when given) and those installed next to every encoder of that model. A missing or
    unreadable ``codec_dir`` is a clear error."""
    from transport.latent_codec import CODEC_JSON, load_codec

    out = {}
    if codec_dir:
        if not (Path(codec_dir) / CODEC_JSON).is_file():
            raise MissingModelError(f"no codec tables in {codec_dir} ({CODEC_JSON} missing); fit them with "
                                    f"'avcall train codec --model-dir DIR'")
        t = load_codec(codec_dir)
        out[t.codec_id] = t
    for m in installed_models():
        if m.kind == "encoder" and m.model_id == model and (m.path / CODEC_JSON).is_file():
            t = load_codec(m.path)
            out.setdefault(t.codec_id, t)
    return out


def cache_dir() -> Path:
    """Per-user cache for files the runtime derives (bench recordings); ``AVCALL_CACHE`` overrides it."""
    base = os.environ.get("AVCALL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "avcall")
    return Path(base)
