"""The shared training scaffold (avcore.training): limits, checkpoints, resume, Ctrl-C, on a toy regression."""
from __future__ import annotations

import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avcore.training import TrainingLoop, load_checkpoint, save_checkpoint  # noqa: E402

torch.set_num_threads(1)

X = torch.from_numpy(np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32))
Y = X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def toy_run(path, steps: int, *, interrupt_at: int | None = None, seen: dict | None = None):
    """Full-batch linear regression with Adam (deterministic) on the scaffold; resumes from ``path``."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    ck = load_checkpoint(path)
    history: list = []
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        history = list(ck["loss_history"])
    seen = {} if seen is None else seen
    seen.update(model=model, opt=opt, steps=[])
    loop = TrainingLoop(path, lambda: {"model": model.state_dict(), "optimizer": opt.state_dict(), "loss_history": history},
                        steps=steps, time_budget_s=1e9, step=ck["step"] if ck else 0,
                        elapsed_s=ck["elapsed_s"] if ck else 0.0, progress=False)
    for step, _ in loop:
        seen["steps"].append(step)
        loss = ((model(X) - Y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
        if step == interrupt_at:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C sends; the step still finishes
    return model, opt, loop, history


def test_interrupted_run_checkpoints_and_resumes_where_it_stopped(tmp_path):
    path = tmp_path / "checkpoint.pt"
    handler = signal.getsignal(signal.SIGINT)
    seen: dict = {}
    with pytest.raises(KeyboardInterrupt):
        toy_run(path, 30, interrupt_at=7, seen=seen)
    assert signal.getsignal(signal.SIGINT) is handler  # the loop put the previous handler back
    assert seen["steps"] == list(range(1, 8))
    ck = load_checkpoint(path)
    assert ck["step"] == 7 and len(ck["loss_history"]) == 7 and ck["elapsed_s"] > 0
    # The checkpoint holds the optimizer exactly as it was when interrupted (Adam moments and step count).
    live = seen["opt"].state_dict()["state"]
    for i, s in live.items():
        assert torch.equal(ck["optimizer"]["state"][i]["exp_avg"], s["exp_avg"])
        assert torch.equal(ck["optimizer"]["state"][i]["exp_avg_sq"], s["exp_avg_sq"])
        assert float(ck["optimizer"]["state"][i]["step"]) == 7

    seen2: dict = {}
    model, opt, loop, history = toy_run(path, 30, seen=seen2)
    assert seen2["steps"] == list(range(8, 31))  # resumed at step 8, not 1
    assert loop.step == 30 and loop.stopped_by == "steps" and not loop.interrupted
    assert history[-1] < 0.3 * history[0], (history[0], history[-1])  # the loss falls across the interruption
    # Interrupted + resumed is the same run as an uninterrupted one (deterministic full-batch training).
    ref, _, _, ref_history = toy_run(tmp_path / "ref.pt", 30)
    assert ref_history == history
    for a, b in zip(ref.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_time_budget_and_periodic_checkpoints(tmp_path):
    path = tmp_path / "c.pt"
    loop = TrainingLoop(path, lambda: {"x": torch.zeros(1)}, steps=1000, time_budget_s=0.0, progress=False)
    assert list(loop) == [] and loop.stopped_by == "time" and load_checkpoint(path)["step"] == 0
    # Resumed elapsed time counts against the budget.
    loop = TrainingLoop(path, lambda: {}, steps=1000, time_budget_s=5.0, elapsed_s=5.0, progress=False)
    assert list(loop) == [] and loop.stopped_by == "time"
    # checkpoint_every_s=0: a checkpoint after every step, holding that step.
    path.unlink()
    loop = TrainingLoop(path, lambda: {}, steps=3, time_budget_s=1e9, checkpoint_every_s=0.0, progress=False)
    for step, frac in loop:
        assert frac == pytest.approx((step - 1) / 3, abs=1e-6)  # the step limit is the nearer one here
        if step > 1:
            assert load_checkpoint(path)["step"] == step - 1
    assert load_checkpoint(path)["step"] == 3


def test_checkpoints_refuse_pickled_objects(tmp_path):
    save_checkpoint(tmp_path / "ok.pt", {"w": torch.ones(2), "cfg": {"a": [1, 2.5, "x", None, True]}})
    assert load_checkpoint(tmp_path / "ok.pt")["cfg"] == {"a": [1, 2.5, "x", None, True]}
    for bad in ({"arr": np.zeros(3)}, {"obj": object()}, {"nested": [{"x": {1, 2}}]}):
        with pytest.raises(TypeError, match="checkpoint"):
            save_checkpoint(tmp_path / "bad.pt", bad)
    assert not (tmp_path / "bad.pt").exists() and load_checkpoint(tmp_path / "missing.pt") is None
