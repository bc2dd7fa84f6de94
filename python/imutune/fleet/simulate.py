"""A *simulated* fleet made from the embedded watch data (for benchmarks and trials; not real users).

The watch data set has 10 real subjects x 2 arm sides (7 exercises each). A simulated user is one real
(subject, arm side) stream seen through one simulated phone (a sensor distortion of
:mod:`imutune.signal.distortions` at one severity, or none) and one simulated labelling habit (a label-noise
model of :mod:`imutune.signal.label_noise`, or none). Users are drawn without replacement from the
combinations ``subjects x sides x distortions x label noises`` in a seeded order, so the first N users of a
fleet of N+M are the fleet of N.

Per user (:func:`simulate_fleet`), in this order:

1. the distortion is applied to the subject's 7 exercise recordings of that side as one device
   (:func:`imutune.signal.distortions.distort_recordings`: device parameters shared, noise per recording;
   device seed from the user id);
2. each recording is split by the calibrate-then-use protocol
   (:func:`imutune.personalize.protocols.calibrate_then_use`): its first ``calibration_fraction`` calibrates,
   the rest after a gap of one window is for use (test);
3. the calibration parts are joined in exercise order into one calibration session
   (:func:`imutune.signal.label_noise.concatenate_session`), so labels have neighbours, and the label noise
   acts on it (sample-level models: ``boundary``, ``shift``); the test parts are joined likewise and keep
   their true labels;
4. ``<out>/<user_id>/calibration/session.npz`` and ``<out>/<user_id>/test/session.npz`` are written (the
   explicit-split layout of :mod:`imutune.fleet.users`) and the user's recipe goes into
   ``<out>/simulation.json``.

Window-level label-noise models (``symmetric``, ``confusion``) relabel individual overlapping windows,
which per-sample label files cannot carry, so the simulated fleet uses the sample-level ones only.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import _validation as V
from .._io import write_json_atomic

__all__ = ["SimulationConfig", "simulate_fleet", "simulated_combinations", "DEFAULT_LABEL_NOISES"]

DEFAULT_LABEL_NOISES = ("none", "boundary:0.2", "shift:1-3")


def _default_distortions() -> tuple[str, ...]:
    from ..signal.distortions import BENCH_SEVERITIES, DISTORTION_NAMES

    return ("none",) + tuple(f"{n}:{s:g}" for n in DISTORTION_NAMES for s in BENCH_SEVERITIES[n])


@dataclass(frozen=True)
class SimulationConfig:
    """How the simulated fleet is drawn."""

    subjects: tuple[int, ...] = (6, 7, 8, 9, 10)   # watch subjects (1..10) the users are made from
    sides: tuple[int, ...] = (0, 1)                # arm sides
    distortions: tuple[str, ...] | None = None     # distortion specs ("none" or parse_distortion specs); None: all
    label_noises: tuple[str, ...] = DEFAULT_LABEL_NOISES  # sample-level label-noise specs ("none" included)
    calibration_fraction: float = 0.5              # calibrate-then-use split per recording
    window_s: float = 2.0                          # window length the split keeps apart (gap = one window)
    seed: int = 0                                  # order of the combinations and every device seed

    def __post_init__(self) -> None:
        if not self.subjects or any(int(s) not in range(1, 11) for s in self.subjects):
            raise ValueError(f"subjects must be watch subject numbers in 1..10, got {self.subjects!r}")
        if not self.sides or any(s not in (0, 1) for s in self.sides):
            raise ValueError(f"sides must be a non-empty subset of (0, 1), got {self.sides!r}")
        if not self.label_noises:
            raise ValueError("label_noises must not be empty; include 'none' for clean labels")
        V.check_positive("window_s", self.window_s, where="SimulationConfig")
        if not 0.0 < float(self.calibration_fraction) < 1.0:
            raise ValueError(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction!r}")


def simulated_combinations(config: SimulationConfig = SimulationConfig()) -> list[dict[str, Any]]:
    """Every (subject, side, distortion, label noise) combination in the fleet's seeded order."""
    dists = config.distortions if config.distortions is not None else _default_distortions()
    combos = [{"subject": int(s), "side": int(a), "distortion": d, "label_noise": n}
              for s in config.subjects for a in config.sides for d in dists for n in config.label_noises]
    order = np.random.default_rng(config.seed).permutation(len(combos))
    return [combos[i] for i in order]


def simulate_fleet(out_dir: str | os.PathLike, n_users: int, *, config: SimulationConfig = SimulationConfig(),
                   recordings: list | None = None) -> list[dict[str, Any]]:
    """Write ``n_users`` simulated users into ``out_dir`` (module notes); return their recipes.

    Parameters
    ----------
    out_dir : path-like
        Receives ``<user_id>/calibration/session.npz``, ``<user_id>/test/session.npz`` and
        ``simulation.json``. Users already written with the same recipe are kept.
    n_users : int
        At least 1 and at most the number of combinations.
    config : SimulationConfig
    recordings : list of Recording, optional
        The watch recordings (:func:`imutune.data.recordings.load_watch`) if already loaded.

    Returns
    -------
    list of dict
        One per user: ``user_id``, ``subject``, ``side``, ``distortion``, ``label_noise``, ``device_seed``,
        ``calibration_samples``, ``test_samples``, ``noisy_label_fraction`` (share of calibration samples
        whose label the noise changed).

    Raises
    ------
    ValueError
        If ``n_users`` is below 1 or above the number of combinations, or a spec is malformed.
    """
    V.check_int_at_least("n_users", n_users, 1)
    combos = simulated_combinations(config)
    if n_users > len(combos):
        raise ValueError(f"n_users={n_users} exceeds the {len(combos)} simulated combinations (subjects x sides x "
                         "distortions x label noises); add subjects, distortions or label noises")
    from ..data.recordings import load_watch

    recs = recordings if recordings is not None else load_watch()
    out = Path(out_dir)
    prev = _previous(out / "simulation.json", config)
    users = []
    for i, c in enumerate(combos[:n_users]):
        uid = f"u{i:04d}_s{c['subject']:02d}_side{c['side']}"
        recipe = {"user_id": uid, **c, "device_seed": int(config.seed) * 100003 + i}
        d = out / uid
        old = prev.get(uid)
        if old is not None and all(old.get(k) == v for k, v in recipe.items()) and \
                (d / "calibration" / "session.npz").is_file() and (d / "test" / "session.npz").is_file():
            users.append(old)
            continue
        users.append({**recipe, **_write_user(d, recipe, recs, config)})
    write_json_atomic(out / "simulation.json", {
        "note": "SIMULATED fleet: real watch subjects x arm sides seen through simulated distortions and "
                "simulated label noise (imutune.fleet.simulate); not real users.",
        "config": asdict(config), "n_users": n_users, "users": users})
    return users


def _previous(path: Path, config: SimulationConfig) -> dict[str, dict]:
    import json

    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if obj.get("config") != json.loads(json.dumps(asdict(config))):
        return {}
    return {u["user_id"]: u for u in obj.get("users", []) if isinstance(u, dict) and "user_id" in u}


def _write_user(d: Path, recipe: dict, recs: list, config: SimulationConfig) -> dict[str, Any]:
    from ..data.recordings import save_npz
    from ..personalize.protocols import calibrate_then_use
    from ..signal.distortions import distort_recordings, parse_distortion
    from ..signal.label_noise import concatenate_session, noisy_recording, parse_label_noise

    mine = sorted((r for r in recs if r.meta.get("subject") == recipe["subject"] and r.meta.get("side") == recipe["side"]),
                  key=lambda r: (int(r.labels[0]), r.name))
    if not mine:
        raise ValueError(f"watch subject {recipe['subject']} side {recipe['side']} has no recordings")
    if recipe["distortion"] != "none":
        mine = distort_recordings(mine, parse_distortion(recipe["distortion"]), seed=recipe["device_seed"])
    cal, test = calibrate_then_use(mine, window_s=config.window_s, calibration_fraction=config.calibration_fraction)
    uid = recipe["user_id"]
    cal_s = concatenate_session(cal, name=f"{uid}:calibration")
    test_s = concatenate_session(test, name=f"{uid}:test")
    noisy = noisy_recording(cal_s, parse_label_noise(recipe["label_noise"]), seed=recipe["device_seed"])
    changed = float(np.mean(noisy.labels != cal_s.labels))
    save_npz(_renamed(noisy, uid), d / "calibration" / "session.npz")
    save_npz(_renamed(test_s, uid), d / "test" / "session.npz")
    return {"calibration_samples": noisy.n_samples, "test_samples": test_s.n_samples,
            "noisy_label_fraction": changed}


def _renamed(rec, uid: str):
    from ..data.recordings import Recording

    return Recording(rec.values, rec.labels, rec.sample_rate_hz, rec.channels, rec.class_names, uid, rec.name, {})
