"""Distillation losses for decoder students (the avatar-compression recipe: L_kl + feature consistency).

* **Distribution consistency** ``L_kl = KL(P || Q)``: the teacher's and the student's outputs are turned into
  distributions and compared. For the texture (and any feature map) the distribution is the channel-wise one of
  channel-wise distillation: per sample and channel, a softmax over the spatial positions of the map divided by a
  temperature ``T``, so each channel says *where* its energy is; ``L = T**2 * mean over (sample, channel) of
  KL(P_t || P_s)``. For the geometry it is a Gaussian per vertex coordinate, ``N(v_t, s**2)`` against
  ``N(v_s, s**2)`` with one spread ``s`` (decimetres), whose KL is ``(v_t - v_s)**2 / (2 s**2)``, averaged.
* **Feature consistency**: ``1 - cos(f_t, P(f_s))`` per sample between matched teacher and student features
  (flattened), ``P`` a learned 1x1 projection (a linear layer for vectors) from the student's width to the
  teacher's where they differ; maps of different sizes are matched after resizing the student's to the teacher's.

Matched features (:func:`match_features`): the geometry MLP's last hidden layer, and the texture decoder's maps
paired from the last one backwards (the student's last map with the teacher's last, and so on, as far as the
shorter stack goes).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


def channel_kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T**2 * mean_{b,c} KL(softmax(t_bc / T) || softmax(s_bc / T))`` over the spatial positions of (B, C, ...) maps."""
    if teacher.shape != student.shape:
        raise ValueError(f"channel_kl needs equal shapes, got {tuple(teacher.shape)} and {tuple(student.shape)}")
    t = teacher.flatten(2) / temperature
    s = student.flatten(2) / temperature
    p_log = F.log_softmax(t, -1)
    kl = (p_log.exp() * (p_log - F.log_softmax(s, -1))).sum(-1)
    return temperature ** 2 * kl.mean()


def gaussian_kl(teacher: torch.Tensor, student: torch.Tensor, spread: float) -> torch.Tensor:
    """Mean over elements of ``KL(N(t, s^2) || N(s_, s^2)) = (t - s_)^2 / (2 s^2)``."""
    return ((teacher - student) ** 2).mean() / (2.0 * spread ** 2)


def cosine_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``1 - cos`` between each sample's flattened teacher and student features."""
    return (1.0 - F.cosine_similarity(teacher.flatten(1), student.flatten(1), dim=1, eps=1e-8)).mean()


def match_features(teacher_feats: dict, student_feats: dict) -> list[tuple[str, int, int]]:
    """(part, teacher index, student index) pairs: the geometry hidden layer, and texture maps from the last back."""
    pairs = [("geometry", len(teacher_feats["geometry"]) - 1, len(student_feats["geometry"]) - 1)]
    nt, ns = len(teacher_feats["texture"]), len(student_feats["texture"])
    pairs += [("texture", nt - 1 - k, ns - 1 - k) for k in range(min(nt, ns))]
    return pairs


class FeatureProjector(nn.Module):
    """Learned projections from the student's matched features to the teacher's widths (trained with the student).
    ``pairs`` (part, teacher index, student index) default to the decoder's :func:`match_features`; 2-d features
    (vectors) get a linear layer, maps a 1x1 convolution."""

    def __init__(self, teacher_feats: dict, student_feats: dict, pairs: list[tuple[str, int, int]] | None = None):
        super().__init__()
        self.pairs = match_features(teacher_feats, student_feats) if pairs is None else list(pairs)
        layers = {}
        for part, ti, si in self.pairs:
            ct, cs = teacher_feats[part][ti].shape[1], student_feats[part][si].shape[1]
            key = f"{part}{ti}_{si}"
            if ct == cs:
                layers[key] = nn.Identity()
            elif student_feats[part][si].dim() == 2:
                layers[key] = nn.Linear(cs, ct, bias=False)
            else:
                layers[key] = nn.Conv2d(cs, ct, 1, bias=False)
        self.proj = nn.ModuleDict(layers)

    def forward(self, teacher_feats: dict, student_feats: dict) -> torch.Tensor:
        """Mean over the matched pairs of :func:`cosine_loss` (the teacher's features are not trained)."""
        losses = []
        for part, ti, si in self.pairs:
            t = teacher_feats[part][ti].detach()
            s = self.proj[f"{part}{ti}_{si}"](student_feats[part][si])
            if s.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            losses.append(cosine_loss(t, s))
        return torch.stack(losses).mean()


def distillation_losses(teacher_out: tuple, student_out: tuple, projector: FeatureProjector | None, *,
                        temperature: float = 1.0, geometry_spread: float = 0.05) -> dict[str, torch.Tensor]:
    """``kl`` (texture channel KL + geometry Gaussian KL) and ``feature`` (cosine) between a teacher's and a
    student's ``forward(z, view, features=True)`` outputs. Textures of different sizes are compared at the
    teacher's resolution."""
    tv, tt, tf = teacher_out
    sv, st, sf = student_out
    if st.shape[-2:] != tt.shape[-2:]:
        st = F.interpolate(st, size=tt.shape[-2:], mode="bilinear", align_corners=False)
    kl = channel_kl(tt.detach(), st, temperature) + gaussian_kl(tv.detach(), sv, geometry_spread)
    out = {"kl": kl}
    if projector is not None:
        out["feature"] = projector(tf, sf)
    return out


class TeacherTargets:
    """The teacher's outputs for every (pose, view) of a training set, computed once and read from disk.

    A student distils in its teacher's latent space: its codes are the frozen encoder's means, so what the teacher
    decodes for a training sample (vertices, texture, intermediate features) never changes during training.
    Computing it once (:meth:`open`) instead of at every step makes a distillation step about as cheap as a plain
    student step: the teacher's pass with features is most of the cost. The directory holds one ``.npy`` per output
    (vertices float32; texture and features float16, which the losses do not notice), memory-mapped so that
    students running side by side share the pages, and ``key.txt``: another teacher, encoder or training set
    rebuilds it. It is written beside its final name and renamed into place.
    """

    def __init__(self, directory: Path, names: list[str]):
        import numpy as np

        self.directory = Path(directory)
        self.arrays = {n: np.load(self.directory / f"{n}.npy", mmap_mode="r") for n in names}

    @classmethod
    def open(cls, directory, key: str, teacher: nn.Module, inputs, shape: tuple[int, int], *, batch: int = 16,
             progress: bool = True) -> "TeacherTargets":
        """The targets in ``directory`` if built with ``key``, else built there: ``inputs(pose_idx, view_idx)`` gives
        the teacher's (codes, view directions) of those samples; ``shape`` = (poses, views per pose)."""
        import os
        import shutil

        import numpy as np

        from avcore.progress import progress as progress_bar

        directory = Path(directory)
        if (directory / "key.txt").is_file() and (directory / "key.txt").read_text() == key:
            return cls(directory, json.loads((directory / "names.json").read_text()))
        n_pose, n_view = shape
        pose_idx, view_idx = np.divmod(np.arange(n_pose * n_view), n_view)
        tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        files: dict[str, np.ndarray] = {}
        bar = progress_bar(total=len(pose_idx), desc="teacher targets", unit="sample", disable=not progress)
        with torch.no_grad():
            for s in range(0, len(pose_idx), batch):
                pi, vi = pose_idx[s:s + batch], view_idx[s:s + batch]
                z, view = inputs(pi, vi)
                for name, value in _flat_outputs(teacher(z, view, features=True)).items():
                    value = value.numpy()
                    if name not in files:
                        dtype = np.float32 if name == "vertices" else np.float16
                        files[name] = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype,
                                                                shape=(n_pose, n_view, *value.shape[1:]))
                    if name != "vertices" and np.abs(value).max() > 6e4:
                        raise ValueError(f"teacher targets: {name} exceeds float16's range")
                    files[name][pi, vi] = value
                bar.update(len(pi))
        bar.close()
        for arr in files.values():
            arr.flush()
        (tmp / "names.json").write_text(json.dumps(list(files)))
        (tmp / "key.txt").write_text(key)
        shutil.rmtree(directory, ignore_errors=True)  # a stale set (another key)
        try:
            tmp.rename(directory)
        except OSError:  # another student built it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(directory, list(files))

    def lookup(self, pose_idx, view_idx) -> tuple:
        """The teacher's ``forward(z, view, features=True)`` output for these samples (float32 tensors)."""
        import numpy as np

        got = {n: torch.from_numpy(np.asarray(a[pose_idx, view_idx], dtype=np.float32)) for n, a in self.arrays.items()}
        feats = {part: [got[f"{part}_feature{i}"] for i in range(sum(n.startswith(f"{part}_feature") for n in got))]
                 for part in ("geometry", "texture")}
        return got["vertices"], got["texture"], feats


def _flat_outputs(out: tuple) -> dict[str, torch.Tensor]:
    verts, tex, feats = out
    flat = {"vertices": verts, "texture": tex}
    for part in ("geometry", "texture"):
        flat |= {f"{part}_feature{i}": f for i, f in enumerate(feats[part])}
    return flat
