"""Device profiles: definitions, host checks, pinning, and every backend obeying the thread count."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from imutune.runtime.profiles import (
    PROFILES,
    DeviceProfile,
    apply_profile,
    available_cores,
    get_profile,
    list_profiles,
    pin_process,
)
from imutune.runtime.replay import ReplayConfig

HAS_AFFINITY = hasattr(os, "sched_setaffinity")


def test_builtin_profiles_document_their_constraints():
    assert {"phone-big-core", "phone-two-cores", "host"} <= set(list_profiles())
    big, two = get_profile("phone-big-core"), get_profile("phone-two-cores")
    assert (big.num_threads, big.cpu_affinity, big.realtime, big.chunk_samples) == (1, (0,), True, None)
    assert (two.num_threads, two.cpu_affinity, two.realtime) == (2, (0, 1), True)
    assert get_profile("phone-big-core-per-sample").chunk_samples == 1
    assert not get_profile("host").realtime and get_profile("host").cpu_affinity is None
    for p in PROFILES.values():
        assert p.description and p.to_dict()["name"] == p.name
    assert get_profile(big) is big
    with pytest.raises(ValueError, match="unknown.*phone-big-core"):
        get_profile("phone-9000")


def test_profile_validation():
    with pytest.raises(ValueError, match="3 threads but pins only 2"):
        DeviceProfile("x", "d", num_threads=3, cpu_affinity=(0, 1))
    with pytest.raises(ValueError, match="repeats"):
        DeviceProfile("x", "d", cpu_affinity=(0, 0))
    with pytest.raises(ValueError, match="empty"):
        DeviceProfile("x", "d", cpu_affinity=())
    with pytest.raises(ValueError, match="num_threads"):
        DeviceProfile("x", "d", num_threads=0)
    with pytest.raises(ValueError, match="chunk_samples"):
        DeviceProfile("x", "d", chunk_samples=0)
    with pytest.raises(ValueError, match="core id"):
        DeviceProfile("x", "d", cpu_affinity=(-1,))


def test_host_check_rejects_missing_cores_and_threads():
    n = len(available_cores())
    missing = max(available_cores()) + 1000
    with pytest.raises(ValueError, match=rf"no core\(s\) \[{missing}\]"):
        DeviceProfile("far", "d", cpu_affinity=(missing,)).check()
    with pytest.raises(ValueError, match=f"asks for {n + 1} threads"):
        DeviceProfile("many", "d", num_threads=n + 1).check()
    with pytest.raises(ValueError, match=r"no core\(s\)"):
        ReplayConfig.from_profile(DeviceProfile("far", "d", cpu_affinity=(missing,)))
    with pytest.raises(ValueError, match="no core"):
        pin_process((missing,))


@pytest.mark.skipif(not HAS_AFFINITY, reason="needs os.sched_setaffinity")
def test_apply_profile_pins_every_thread_and_restores():
    import threading

    before = os.sched_getaffinity(0)
    core = available_cores()[0]
    stop = threading.Event()
    th = threading.Thread(target=stop.wait)
    th.start()
    try:
        with apply_profile(DeviceProfile("one", "d", cpu_affinity=(core,))) as p:
            assert p.name == "one"
            assert os.sched_getaffinity(0) == {core}
            assert os.sched_getaffinity(th.native_id) == {core}   # threads started earlier are pinned too
        assert os.sched_getaffinity(0) == before
    finally:
        stop.set()
        th.join()


def test_replay_config_from_profile():
    rc = ReplayConfig.from_profile("phone-big-core")
    assert (rc.num_threads, rc.cpu_affinity, rc.realtime, rc.chunk_samples, rc.profile) == \
        (1, (0,), True, None, "phone-big-core")
    rc = ReplayConfig.from_profile("phone-big-core", realtime=False, smoothing_k=3)
    assert not rc.realtime and rc.smoothing_k == 3 and rc.cpu_affinity == (0,)
    with pytest.raises(ValueError, match="exceeds"):
        ReplayConfig(num_threads=2, cpu_affinity=(0,))


# --------------------------------------------------------------------------- thread counts, measured


def _cpu_ticks_by_thread() -> dict[str, int]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = open(f"/proc/self/task/{tid}/stat").read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[tid] = int(fields[11]) + int(fields[12])       # utime + stime, clock ticks
    return out


def _busy_threads(run, seconds: float = 0.4) -> dict[str, int]:
    run()
    before = _cpu_ticks_by_thread()
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        run()
    after = _cpu_ticks_by_thread()
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) >= 3}


@pytest.fixture(scope="module")
def thread_models(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("executorch")
    from imutune.deploy.export import export_onnx, export_pte
    from imutune.models.resnet1d import create_model

    torch.manual_seed(0)
    model = create_model("mobilecnn1d", in_channels=6, num_classes=4).eval()
    x = np.random.default_rng(0).standard_normal((1, 6, 1024)).astype(np.float32)
    out = tmp_path_factory.mktemp("threads")
    (out / "m.onnx").write_bytes(export_onnx(model, x).SerializeToString())
    (out / "m.pte").write_bytes(export_pte(model, x).buffer)
    return model, x, out


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc per-thread CPU times")
def test_every_backend_obeys_the_profiles_thread_count(thread_models):
    from imutune.deploy.backends import OnnxBackend, PteBackend, TorchBackend

    model, x, out = thread_models
    makers = {"onnxruntime": lambda n: OnnxBackend(out / "m.onnx", num_threads=n),
              "executorch": lambda n: PteBackend(out / "m.pte", num_threads=n),
              "torch": lambda n: TorchBackend(model, num_threads=n)}
    profiles = [get_profile("phone-big-core")]
    if len(available_cores()) >= 2:
        profiles.append(get_profile("phone-two-cores"))
    for prof in profiles:
        with apply_profile(prof):
            for name, make in makers.items():
                b = make(prof.num_threads)
                b.prepare()
                assert b.threads_in_effect() == prof.num_threads, (name, prof.name)
                busy = _busy_threads(lambda: b.run(x))
                if prof.num_threads == 1:
                    assert len(busy) == 1, (name, busy)        # all work on the calling thread
                else:
                    assert len(busy) >= 2, (name, busy)        # the work is shared


def test_replay_rejects_backend_with_other_thread_count():
    from imutune.data.recordings import Recording
    from imutune.deploy.manifest import Manifest
    from imutune.runtime.replay import replay

    class Fake:
        name, num_threads = "fake", 2

        def run(self, x):
            return np.zeros((x.shape[0], 2), np.float32)

    man = Manifest("m", {}, ("a", "b"), ("c0",), 50.0, 0.2, 0.1, (0.0,), (1.0,))
    rec = Recording(np.zeros((40, 1), np.float32), np.zeros(40, np.int64), 50.0, ("c0",), ("a", "b"), "u")
    with pytest.raises(ValueError, match="runs 2 threads, but profile 'phone-big-core' allows 1"):
        replay(rec, Fake(), man, config=ReplayConfig.from_profile("phone-big-core", realtime=False))
    Fake.num_threads = 1
    res = replay(rec, Fake(), man, config=ReplayConfig.from_profile("phone-big-core", realtime=False))
    assert res.profile == "phone-big-core" and res.cpu_affinity == (0,) and res.n_windows == 7


def test_run_replay_with_profile_and_stream(thread_models, tmp_path):
    from imutune._io import sha256_file
    from imutune.data.recordings import Recording, save_npz
    from imutune.deploy.manifest import Manifest
    from imutune.jobs import run_replay

    _, x, out = thread_models
    chans = tuple(f"c{i}" for i in range(6))
    man = Manifest("mobilecnn1d", {}, ("a", "b", "c", "d"), chans, 100.0, 10.24, 5.12, (0.0,) * 6, (1.0,) * 6)
    man = man.with_artifact("m.onnx", sha256=sha256_file(out / "m.onnx"), format="onnx", precision="fp32")
    man.save(out / "manifest.json")
    rng = np.random.default_rng(0)
    rec = Recording(rng.standard_normal((4096, 6)).astype(np.float32), rng.integers(0, 4, 4096), 100.0, chans,
                    ("a", "b", "c", "d"), "u")
    data = save_npz(rec, tmp_path / "rec.npz")
    s = run_replay(out / "m.onnx", [data], tmp_path / "r", profile="phone-big-core", realtime=False,
                   chunk_samples="hop", smoothing_k=3, stream=True)
    assert s["profile"] == "phone-big-core" and s["num_threads"] == 1 and s["cpu_affinity"] == [0]
    assert s["chunk_samples"] is None and s["realtime"] is False and s["n_windows"] == 1 + (4096 - 1024) // 512
    assert s["replay_config"]["smoothing_k"] == 3 and (tmp_path / "r" / "replay_report.md").is_file()
    assert "Profile phone-big-core" in (tmp_path / "r" / "replay_report.md").read_text()
    with pytest.raises(ValueError, match="unknown"):
        run_replay(out / "m.onnx", [data], tmp_path / "r2", profile="tablet")
