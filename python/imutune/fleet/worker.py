"""The per-user job of a fleet run: recordings in, a patch and metrics out.

For one user (:func:`personalize_user`):

1. load the user's recording files (``.npz``/``.csv``, given as bytes so the job runs on any Ray node);
2. split them: the user's explicit ``calibration``/``test`` files, or, per recording, the calibrate-then-use
   protocol (:func:`imutune.personalize.protocols.calibrate_then_use`: the first ``calibration_fraction`` of
   each recording in time calibrates, the rest after a gap of one window is the test set); recordings too
   short to split are skipped and listed;
3. cut windows with the base bundle's window config and channels; optionally subsample the calibration
   windows to ``max_calibration_windows`` (seeded);
4. score the base model on the test windows ("before"), personalize on the calibration windows with the
   chosen method -- FilterLoss-soft (``filterloss-soft``, the default: the full filter with fixed soft weights
   and the source view; Han, Zhong, Feng, ICCC 2025, arXiv 2602.07772, extended;
   :func:`imutune.personalize.finetune.finetune`), the other FilterLoss variants, plain
   cross-entropy, or selective filter fine-tuning (``selective``, arXiv 1904.03949;
   :func:`imutune.personalize.selective.personalize`) -- and score the result ("after");
5. write the difference to the base as a patch (:mod:`imutune.personalize.patch`, tied to the base by
   ``base_sha256``) and, if asked, the patched bundle and an ONNX export.

Every random choice is seeded by :func:`user_seed`, a hash of the fleet seed and the user id, so a user's
result does not depend on the order, the worker or the number of workers. The job never raises for a
user's bad input: it returns ``status="failed"`` with a ``reason`` (:data:`FAILURE_REASONS`) and the message.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import _validation as V
from ..personalize.finetune import FinetuneConfig
from ..personalize.selective import SelectiveConfig
from ..train.bundle import ModelBundle
from . import EXPORT_KINDS, FLEET_METHODS

__all__ = ["FleetConfig", "FLEET_METHODS", "EXPORT_KINDS", "FAILURE_REASONS", "UserFailure", "user_seed",
           "personalize_user", "config_fingerprint", "bundle_files", "bundle_from_files"]

FLEET_FORMAT = "1"   # bump when the job's outputs change for the same config
#: ``bad_input`` unreadable or invalid files; ``too_few_windows`` below the minimum after splitting;
#: ``training_error`` personalization failed; ``export_error``; ``worker_died`` the worker process was lost
#: after Ray's retries (set by the orchestrator); ``internal_error`` anything else.
FAILURE_REASONS = ("bad_input", "too_few_windows", "training_error", "export_error", "worker_died",
                   "internal_error")


@dataclass(frozen=True)
class FleetConfig:
    """What every user's job does (the same for all users of a run)."""

    method: str = FLEET_METHODS[0]      # one of FLEET_METHODS; default "filterloss-soft" (= finetune's default)
    finetune: FinetuneConfig = FinetuneConfig()    # methods other than "selective" (its loss is set from method)
    selective: SelectiveConfig = SelectiveConfig()  # method "selective"
    calibration_fraction: float = 0.5   # calibrate-then-use: share of each recording (from its start) that calibrates
    gap_s: float | None = None          # calibrate-then-use gap between the parts in seconds (None: one window)
    max_calibration_windows: int | None = None  # subsample calibration windows to at most this many (seeded)
    min_calibration_windows: int = 10   # fewer calibration windows fail the user with "too_few_windows"
    min_test_windows: int = 1           # fewer test windows fail the user with "too_few_windows"
    seed: int = 0                       # fleet seed; each user's seed is user_seed(user_id, seed)
    torch_threads: int = 1              # torch CPU threads per user job
    exports: tuple[str, ...] = ()       # per-user extras: "bundle" (patched bundle), "onnx" (model.onnx + manifest)
    # also fit the classical reference (RandomForest, 200 trees, on 13 statistics per channel:
    # imutune.personalize.reference) on each user's calibration windows and score it on their test windows
    classical_reference: bool = True

    def __post_init__(self) -> None:
        V.check_choice("method", self.method, FLEET_METHODS)
        if self.method != "selective" and self.method != self.finetune.loss:
            object.__setattr__(self, "finetune", replace(self.finetune, loss=self.method))
        frac = float(self.calibration_fraction)
        if not 0.0 < frac < 1.0:
            raise ValueError(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction!r}")
        if self.gap_s is not None:
            V.check_positive("gap_s", self.gap_s, where="FleetConfig")
        if self.max_calibration_windows is not None:
            V.check_int_at_least("max_calibration_windows", self.max_calibration_windows, 2)
        V.check_int_at_least("min_calibration_windows", self.min_calibration_windows, 2)
        V.check_int_at_least("min_test_windows", self.min_test_windows, 1)
        V.check_int_at_least("torch_threads", self.torch_threads, 1)
        V.check_int_at_least("seed", self.seed, 0)
        exports = tuple(self.exports)
        for e in exports:
            V.check_choice("export", e, EXPORT_KINDS)
        object.__setattr__(self, "exports", exports)


class UserFailure(ValueError):
    """A user's job could not finish; ``reason`` is one of :data:`FAILURE_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def user_seed(user_id: str, seed: int = 0) -> int:
    """The user's seed in ``[0, 2**31)``: the first 4 bytes of ``sha256(f"{seed}:{user_id}")``.

    Independent of the order of users and of the worker that runs the job.
    """
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{user_id}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def config_fingerprint(config: FleetConfig, base_sha256: str) -> str:
    """SHA-256 of the config and the base model hash: a user's earlier result is reused only when both match."""
    obj = {"config": asdict(config), "base_sha256": base_sha256, "format": FLEET_FORMAT}
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def bundle_files(bundle_dir: str | os.PathLike) -> dict[str, bytes]:
    """``{"model.json": bytes, "model.safetensors": bytes}`` of a bundle folder (to ship to workers).

    Raises
    ------
    FileNotFoundError
        If either file is missing.
    """
    d = Path(bundle_dir)
    d = d if d.is_dir() else d.parent
    return {n: V.check_file(d / n, what="base bundle file").read_bytes() for n in ("model.json", "model.safetensors")}


def bundle_from_files(files: dict[str, bytes]) -> ModelBundle:
    """The :class:`ModelBundle` of :func:`bundle_files` output (written to a temporary folder and loaded)."""
    from ..train.bundle import load_bundle

    with tempfile.TemporaryDirectory(prefix="imutune_base_") as tmp:
        for n, data in files.items():
            (Path(tmp) / n).write_bytes(data)
        return load_bundle(tmp)


# --------------------------------------------------------------------------- the job

def personalize_user(base: ModelBundle, user_id: str, files: Sequence[tuple[str, str, bytes]], *,
                     config: FleetConfig = FleetConfig(), base_sha256: str | None = None) -> dict[str, Any]:
    """Personalize ``base`` for one user (module notes); never raises for the user's bad input.

    Parameters
    ----------
    base : ModelBundle
        The base model (not modified).
    user_id : str
        The user's id (seeds the job through :func:`user_seed`).
    files : sequence of (role, file name, bytes)
        As :func:`imutune.fleet.users.read_user_files` gives them; role ``recording`` (split by
        calibrate-then-use) or ``calibration``/``test`` (an explicit split).
    config : FleetConfig
    base_sha256 : str, optional
        :func:`imutune.personalize.patch.state_hash` of ``base.model`` if already known.

    Returns
    -------
    dict
        ``user_id``, ``status`` (``"ok"`` or ``"failed"``), ``result`` (deterministic: before/after
        accuracy and macro-F1, ``gain_macro_f1``, window counts, patch hashes and size, the method's info;
        ``None`` on failure), ``reason`` and ``error`` (failure only), ``timing`` (seconds per stage,
        ``cpu_s`` process CPU seconds, ``pid``, ``node``) and ``outputs`` (``{relative path: bytes}``:
        ``patch.safetensors`` and the exports).

    Raises
    ------
    ValueError
        If ``files`` is empty or a role is unknown (a caller bug, not the user's input).
    """
    if not files:
        raise ValueError(f"user {user_id!r} has no files; expected at least one (role, name, bytes)")
    for role, name, data in files:
        V.check_choice(f"role of file {name!r}", role, ("recording", "calibration", "test"))
    return _compute_user(base, str(user_id), list(files), config, base_sha256)


def _compute_user(base: ModelBundle, user_id: str, files: list[tuple[str, str, bytes]], config: FleetConfig,
                  base_sha256: str | None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(config.torch_threads)
    t_start, c_start = time.perf_counter(), time.process_time()
    timing: dict[str, Any] = {"pid": os.getpid(), "node": platform.node()}
    out: dict[str, Any] = {"user_id": user_id, "status": "ok", "result": None, "timing": timing, "outputs": {}}
    try:
        with _native_threads(config.torch_threads):
            res, outputs = _run_stages(base, user_id, files, config, base_sha256, timing)
        out.update(result=res, outputs=outputs)
    except UserFailure as e:
        out.update(status="failed", reason=e.reason, error=str(e))
    except Exception as e:  # one user's failure must not stop the fleet; keep the type and the place
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        out.update(status="failed", reason="internal_error", error=f"{type(e).__name__}: {e}{where}")
    timing["total_s"] = time.perf_counter() - t_start
    timing["cpu_s"] = time.process_time() - c_start
    return out


def _native_threads(n: int):
    """Context manager: every BLAS and OpenMP thread pool of this process at ``n`` threads during the job.

    ``torch.set_num_threads`` covers torch's own intra-op pool only; numpy/scipy's OpenBLAS and other OpenMP
    runtimes (scikit-learn, used through cleanlab) size their pools from the environment. Ray sets
    ``OMP_NUM_THREADS`` to a task's ``num_cpus`` only when the variable is unset
    (``ray._private.utils.set_omp_num_threads_if_unset``), so a user's exported ``OMP_NUM_THREADS`` or
    ``OPENBLAS_NUM_THREADS`` would give each of W workers that many threads on W cores. threadpoolctl
    (a scikit-learn dependency) pins them for the job and restores them after; without it this is a no-op.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=int(n))


def _stage(timing: dict, name: str, t0: float) -> float:
    t = time.perf_counter()
    timing[f"{name}_s"] = t - t0
    return t


def _load(files: list[tuple[str, str, bytes]], user_id: str) -> dict[str, list]:
    from ..data.recordings import load_recordings

    recs: dict[str, list] = {"recording": [], "calibration": [], "test": []}
    with tempfile.TemporaryDirectory(prefix="imutune_user_") as tmp:
        for i, (role, name, data) in enumerate(files):
            d = Path(tmp) / f"{i:05d}"
            d.mkdir()
            p = d / Path(name).name
            p.write_bytes(data)
            try:
                recs[role].extend(load_recordings(p))
            except (ValueError, FileNotFoundError) as e:
                msg = str(e).replace(str(p), name)   # name the user's file, not the temporary copy
                raise UserFailure("bad_input", f"user {user_id!r}: {role} file {name!r}: {msg}") from None
    return recs


def _split(recs: dict[str, list], base: ModelBundle, config: FleetConfig, user_id: str):
    from ..personalize.protocols import calibrate_then_use

    if recs["calibration"] or recs["test"]:
        if not recs["calibration"] or not recs["test"]:
            raise UserFailure("bad_input", f"user {user_id!r} has {len(recs['calibration'])} calibration and "
                                           f"{len(recs['test'])} test recordings; an explicit split needs both")
        return recs["calibration"], recs["test"], [], "explicit"
    cal, test, skipped = [], [], []
    for rec in recs["recording"]:
        try:
            c, t = calibrate_then_use([rec], window_s=base.window.window_s,
                                      calibration_fraction=config.calibration_fraction, gap_s=config.gap_s)
        except ValueError as e:
            skipped.append({"recording": rec.name, "why": str(e)})
            continue
        cal += c
        test += t
    if not cal:
        why = skipped[0]["why"] if skipped else "no recordings"
        raise UserFailure("too_few_windows", f"user {user_id!r}: no recording is long enough for the "
                                             f"calibrate-then-use split ({len(skipped)} skipped; first: {why})")
    return cal, test, skipped, "calibrate-then-use"


def _windows(recs: list, base: ModelBundle, what: str, user_id: str):
    from ..signal.windows import make_windows

    try:
        return make_windows(recs, base.window, channels=base.channels)
    except ValueError as e:
        reason = "too_few_windows" if str(e).startswith("no window") else "bad_input"
        raise UserFailure(reason, f"user {user_id!r}: {what} recordings: {e}") from None


def _run_stages(base: ModelBundle, user_id: str, files: list, config: FleetConfig, base_sha256: str | None,
                timing: dict) -> tuple[dict[str, Any], dict[str, bytes]]:
    from ..personalize.patch import make_patch, patch_bytes, state_hash
    from ..train.bundle import evaluate_bundle

    seed = user_seed(user_id, config.seed)
    t = time.perf_counter()
    recs = _load(files, user_id)
    t = _stage(timing, "load", t)
    cal_recs, test_recs, skipped, protocol = _split(recs, base, config, user_id)
    wc = _windows(cal_recs, base, "calibration", user_id)
    wt = _windows(test_recs, base, "test", user_id)
    if wc.class_names != wt.class_names:
        raise UserFailure("bad_input", f"user {user_id!r}: calibration classes {list(wc.class_names)} differ from "
                                       f"test classes {list(wt.class_names)}")
    n_cal_all = len(wc)
    if config.max_calibration_windows is not None and len(wc) > config.max_calibration_windows:
        idx = np.random.default_rng([seed, 1]).choice(len(wc), size=config.max_calibration_windows, replace=False)
        wc = wc.subset(np.sort(idx))
    if len(wc) < config.min_calibration_windows or len(wt) < config.min_test_windows:
        raise UserFailure("too_few_windows", f"user {user_id!r} has {len(wc)} calibration and {len(wt)} test "
                                             f"windows; expected at least {config.min_calibration_windows} and "
                                             f"{config.min_test_windows}")
    t = _stage(timing, "windows", t)
    same_classes = tuple(wc.class_names) == tuple(base.class_names)
    before = evaluate_bundle(base, wt, device="cpu") if same_classes else None
    t = _stage(timing, "before", t)
    try:
        tuned, info = _personalize(base, wc, config, seed)
    except ValueError as e:
        raise UserFailure("training_error", f"user {user_id!r}: {config.method}: {e}") from None
    t = _stage(timing, "personalize", t)
    after = evaluate_bundle(tuned, wt, device="cpu")
    t = _stage(timing, "after", t)
    reference, reference_error = None, None
    if config.classical_reference:   # the honest classical peer on the same calibration windows and labels
        from ..personalize.reference import reference_score

        try:
            reference = reference_score(wc, wt, seed=seed)
        except ValueError as e:   # e.g. one class only: the user's model still counts, the reference is absent
            reference_error = str(e)
        t = _stage(timing, "reference", t)
    base_hash = base_sha256 or state_hash(base.model)
    patch = make_patch(base.model, tuned.model, class_names=None if same_classes else tuned.class_names,
                       info={"user_id": user_id, "method": config.method, "user_seed": seed})
    if patch.base_sha256 != base_hash:
        raise UserFailure("internal_error", f"base model hash changed during user {user_id!r}'s job")
    pbytes = patch_bytes(patch)
    outputs = {"patch.safetensors": pbytes}
    t = _stage(timing, "patch", t)
    if config.exports:
        try:
            outputs.update(_exports(tuned, wc, config.exports))
        except Exception as e:
            raise UserFailure("export_error", f"user {user_id!r}: export {list(config.exports)}: "
                                              f"{type(e).__name__}: {e}") from None
        t = _stage(timing, "export", t)
    result = {
        "method": config.method, "protocol": protocol, "user_seed": seed,
        "n_calibration": len(wc), "n_calibration_available": n_cal_all, "n_test": len(wt),
        "calibration_class_counts": wc.class_counts().tolist(), "test_class_counts": wt.class_counts().tolist(),
        "class_names": list(wc.class_names), "head_replaced": not same_classes,
        "before": before, "after": after,
        "gain_macro_f1": None if before is None else after["macro_f1"] - before["macro_f1"],
        "random_forest": reference, "random_forest_error": reference_error,
        "model_minus_random_forest": None if reference is None else after["macro_f1"] - reference["macro_f1"],
        "base_sha256": patch.base_sha256, "patched_sha256": patch.patched_sha256,
        "patch_bytes": len(pbytes), "patch_values": patch.n_values(), "patch_entries": len(patch.tensors),
        "skipped_recordings": skipped, "info": info}
    return result, outputs


def _personalize(base: ModelBundle, wc, config: FleetConfig, seed: int) -> tuple[ModelBundle, dict[str, Any]]:
    if config.method == "selective":
        from ..personalize.selective import personalize

        cfg = replace(config.selective, train=replace(config.selective.train, seed=seed))
        tuned, info = personalize(base, wc.x, wc.y, config=cfg, class_names=wc.class_names, progress=False)
        keep = ("ranking", "selected_filters", "total_filters", "trainable_parameters", "category_counts")
        return tuned, {k: info[k] for k in keep if k in info}
    from ..personalize.finetune import finetune

    cfg = replace(config.finetune, train=replace(config.finetune.train, seed=seed))
    tuned = finetune(base, wc, config=cfg, progress=False)
    keep = ("loss", "category_counts", "category_weights", "class_balance", "filter_mode", "n_train")
    return tuned, {k: tuned.info[k] for k in keep if k in tuned.info}


def _exports(tuned: ModelBundle, wc, kinds: tuple[str, ...]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if "bundle" in kinds:
        from ..train.bundle import save_bundle

        with tempfile.TemporaryDirectory(prefix="imutune_export_") as tmp:
            save_bundle(replace(tuned, info={k: v for k, v in tuned.info.items() if k != "base"}), tmp)
            for n in ("model.json", "model.safetensors"):
                out[f"model/{n}"] = (Path(tmp) / n).read_bytes()
    if "onnx" in kinds:
        from ..deploy.export import export_onnx
        from ..deploy.manifest import manifest_for

        manifest = manifest_for(tuned)
        proto = export_onnx(tuned.model.eval(), tuned.normalizer(wc.x[:1]), manifest=manifest)
        out["export/model.onnx"] = proto.SerializeToString()
        out["export/manifest.json"] = (json.dumps(manifest.to_dict(), indent=2) + "\n").encode()
    return out
