"""Shared output of the benchmarks: JSON, a Markdown table and PNG figures, all atomic."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._host import cpu_name
from .._io import write_bytes_atomic, write_json_atomic, write_text_atomic

__all__ = ["cached_bundle", "jsonable", "markdown_table", "new_figure", "save_figure", "write_report", "host_info",
           "load_average_text", "paired_comparison", "recorded_load_text"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, floatfmt: str = ".4f") -> str:
    """A GitHub Markdown table; floats formatted with ``floatfmt``."""
    def fmt(v: Any) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] = (6.4, 4.8),
               squeeze: bool = True):
    """A matplotlib ``Figure`` and its axes through the object API (no pyplot state, no backend switch):
    ``fig, ax = new_figure()``; ``squeeze`` as in ``Figure.subplots``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Render a matplotlib figure to PNG in memory and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return write_bytes_atomic(path, buf.getvalue())


def host_info() -> dict[str, Any]:
    """CPU model, core count, Python and torch versions of this host."""
    import torch

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available()}


def paired_comparison(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> dict[str, Any]:
    """Paired comparison of ``a`` against ``b`` (same units, same order): the statistics of ``bench filterloss``
    (pairs = subjects) and ``bench transfer`` (pairs = seeds).

    Returns
    -------
    dict
        ``n``, ``wins`` (a > b), ``losses``, ``ties``, ``mean_diff`` (a - b) and
        ``ci_low``/``ci_high``: the ``confidence`` t-interval of the mean
        difference (None with fewer than 2 pairs).
    """
    import numpy as np
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size == 0:
        raise ValueError("paired_comparison needs at least one pair")
    out: dict[str, Any] = {"n": int(d.size), "wins": int((d > 1e-12).sum()), "losses": int((d < -1e-12).sum()),
                           "ties": int((np.abs(d) <= 1e-12).sum()), "mean_diff": float(d.mean()),
                           "ci_low": None, "ci_high": None}
    if d.size >= 2:
        sem = d.std(ddof=1) / math.sqrt(d.size)
        h = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1) * sem)
        out["ci_low"], out["ci_high"] = out["mean_diff"] - h, out["mean_diff"] + h
    return out


def load_average_text(loads) -> str | None:
    """``"1-min load average A-B"`` over the 1-minute load averages a benchmark recorded around its timed parts
    (the min and max of ``loads``), or None when it recorded none: the measured host line of a report."""
    loads = [float(v) for v in (loads or [])]
    return f"1-min load average {min(loads):.1f}-{max(loads):.1f}" if loads else None


def recorded_load_text(records) -> str | None:
    """:func:`load_average_text` over the ``"load_average_1min"`` pairs that benchmark records (runs, cells,
    fits) each stored around themselves; records cached by an older version hold none."""
    return load_average_text([v for r in records for v in r.get("load_average_1min", [])])


def write_report(out_dir: str | os.PathLike, name: str, data: Mapping[str, Any], markdown: str,
                 figures: Mapping[str, Any] = {}) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` and each figure as ``<fig_name>.png`` into ``out_dir``.

    Returns the written paths by kind.
    """
    out = Path(out_dir)
    paths = {"json": write_json_atomic(out / f"{name}.json", dict(data)),
             "md": write_text_atomic(out / f"{name}.md", markdown.rstrip() + "\n")}
    for fig_name, fig in figures.items():
        paths[fig_name] = save_figure(fig, out / f"{fig_name}.png")
    return paths


def jsonable(d: Any) -> Any:
    """``d`` with every tuple turned into a list, recursively (dicts and lists kept), as JSON round-trips it."""
    if isinstance(d, dict):
        return {k: jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [jsonable(v) for v in d]
    return d


def cached_json_value(path: str | os.PathLike, fingerprint: str, key: str, compute, *, log=None, name: str = ""):
    """The value under ``key`` of the JSON file ``path`` when its ``"fingerprint"`` equals ``fingerprint``
    (same settings); else ``compute()``, saved atomically as ``{key: value, "fingerprint": fingerprint}``
    and returned. A missing, unreadable or foreign file counts as absent. ``log`` (given) hears a reuse."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == fingerprint:
            if log is not None:
                log(f"[{name}] reusing {path}")
            return saved[key]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    value = compute()
    write_json_atomic(path, {key: value, "fingerprint": fingerprint})
    return value


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike):
    """Hold an exclusive lock on the file ``path`` (created if missing) for the ``with`` block.

    Benchmark shards started together on one ``--out`` (``imutune bench selective --shard I/N``) would each
    pretrain the same base model into the same folder and checkpoint; under this lock the first pretrains and
    the others wait, then find its bundle cached. POSIX ``flock``; where it does not exist, no lock is taken.
    """
    try:
        import fcntl
    except ImportError:        # pragma: no cover - not POSIX
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def cached_bundle(folder: str | os.PathLike, fingerprint: str):
    """The model bundle a previous run of a benchmark left in ``folder``, when its ``info["bench_fingerprint"]``
    equals ``fingerprint`` (same settings); ``None`` when there is none or it was made with other settings."""
    from ..train.bundle import load_bundle

    if not (Path(folder) / "model.json").exists():
        return None
    b = load_bundle(folder)
    return b if b.info.get("bench_fingerprint") == fingerprint else None
