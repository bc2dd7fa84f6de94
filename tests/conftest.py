"""Shared fixtures: tiny on-disk data sets written into ``tmp_path``."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest

# Let ``python -m pytest`` run from a plain checkout (no ``pip install -e .``).
_SRC = Path(__file__).resolve().parents[1] / "python"
if importlib.util.find_spec("imutune") is None and _SRC.is_dir():
    sys.path.insert(0, str(_SRC))


def write_shl_folder(folder: Path, *, order: Sequence[int], frame_len: int = 6000,
                     channels: Sequence[str] = ("Acc_x", "Acc_y", "Acc_z", "Gyr_x", "Gyr_y", "Gyr_z"),
                     labels: np.ndarray | None = None, order_name: str = "train_order.txt",
                     seed: int = 0) -> dict:
    """Write a tiny SHL-2018-layout folder and return what was written.

    Line ``i`` of every file is the frame whose time position is ``order[i]``.
    Channel ``c`` of a frame with order value ``t`` holds
    ``t * 1000 + c * 100 + k / frame_len`` at sample ``k``, so time order and
    channel selection can be read back from the values. ``labels`` is an
    (n_lines, frame_len) array of raw codes (0 = Null, 1..8); random by default.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    order = [int(o) for o in order]
    n = len(order)
    if labels is None:
        labels = np.random.default_rng(seed).integers(0, 9, size=(n, frame_len))
    ramp = np.arange(frame_len) / frame_len
    data = {}
    for c, name in enumerate(channels):
        rows = np.array([t * 1000 + c * 100 + ramp for t in order], dtype=np.float32)
        data[name] = rows
        _write_rows(folder / f"{name}.txt", rows, "%.6f")
    _write_rows(folder / "Label.txt", np.asarray(labels), "%d")
    (folder / order_name).write_text("".join(f"{o}\n" for o in order))
    return {"folder": folder, "order": order, "labels": np.asarray(labels), "data": data}


def _write_rows(path: Path, rows: np.ndarray, fmt: str) -> None:
    np.savetxt(path, rows, fmt=fmt, delimiter=" ")


@pytest.fixture
def shl_folder(tmp_path) -> Callable[..., dict]:
    """Factory: ``shl_folder(order=[...], **kw)`` writes ``tmp_path/train`` (see :func:`write_shl_folder`)."""
    def make(name: str = "train", **kw) -> dict:
        return write_shl_folder(tmp_path / name, **kw)
    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    the tiny test models gain nothing from more, and a shared CPU makes them crawl. Restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def watch_recordings():
    """The embedded watch data set, loaded once per session."""
    from imutune.data.recordings import load_watch

    return load_watch()


def crashing_loss(fail_at: int | None = None, *, perturb_global_rngs: bool = False):
    """Weighted cross-entropy that raises ``KeyboardInterrupt`` on call ``fail_at`` (a simulated kill) and
    counts its calls in ``.calls``. With ``perturb_global_rngs`` each call also scales the loss by draws from
    numpy's and Python's global RNGs, which a resume must restore to give the same run."""
    import random

    from imutune.train.losses import WeightedCrossEntropy

    class CrashingLoss(WeightedCrossEntropy):
        def __init__(self) -> None:
            super().__init__()
            self.fail_at, self.calls = fail_at, 0

        def forward(self, logits, targets, weights=None):
            self.calls += 1
            if self.calls == self.fail_at:
                raise KeyboardInterrupt("simulated kill")
            loss = super().forward(logits, targets, weights)
            if perturb_global_rngs:
                loss = loss * (1.0 + 1e-2 * (np.random.rand() + random.random()))
            return loss

    return CrashingLoss()
