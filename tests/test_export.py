"""Tests for imutune.export: ONNX / ExecuTorch export, parity and the artifact writer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("executorch")

from imutune._io import sha256_file  # noqa: E402
from imutune.deploy.backends import OnnxBackend, PteBackend, load_backend  # noqa: E402
from imutune.deploy.export import (
    export_onnx,
    export_pte,
    parity_max_abs_err,
    write_exports,
)
from imutune.deploy.manifest import Manifest, load_manifest  # noqa: E402
from imutune.models.resnet1d import create_model  # noqa: E402

C, K, T = 6, 5, 100
TOL = 1e-4


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give batch norms non-trivial running stats so parity is a real check."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            n = mod.num_features
            mod.running_mean.copy_(0.2 * torch.randn(n, generator=g))
            mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
            with torch.no_grad():
                mod.weight.copy_(0.5 + torch.rand(n, generator=g))
                mod.bias.copy_(0.1 * torch.randn(n, generator=g))
    return model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _randomize_bn(create_model("mobilecnn1d", in_channels=C, num_classes=K)).eval()


@pytest.fixture(scope="module")
def manifest():
    return Manifest(model_name="mobilecnn1d", model_config={"layers": [1, 1, 1]},
                    class_names=tuple(f"c{i}" for i in range(K)),
                    channels=("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"),
                    sample_rate_hz=50.0, window_s=2.0, hop_s=1.0,
                    norm_mean=(0.0,) * C, norm_std=(1.0,) * C)


@pytest.fixture(scope="module")
def windows():
    return np.random.default_rng(0).standard_normal((12, C, T)).astype(np.float32)


@pytest.fixture(scope="module")
def onnx_proto(model, windows, manifest):
    return export_onnx(model, windows[:1], manifest=manifest)


@pytest.fixture(scope="module")
def exported(model, manifest, windows, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    stale = manifest.with_artifact("old.onnx", sha256="0" * 64, format="onnx")  # must be dropped
    final = write_exports(model, stale, out, windows, config={"seed": 0, "note": "test"})
    return out, final


# --------------------------------------------------------------------------- ONNX


def test_onnx_passes_checker_and_is_self_contained(onnx_proto):
    onnx.checker.check_model(onnx_proto, full_check=True)
    assert [i.name for i in onnx_proto.graph.input] == ["x"]
    assert [o.name for o in onnx_proto.graph.output] == ["logits"]
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in onnx_proto.graph.initializer)
    dims = onnx_proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [C, T]


def test_onnx_dynamic_batch_and_parity(onnx_proto, model, windows, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_proto.SerializeToString())
    backend = OnnxBackend(path)
    assert backend.batch_size is None
    for n in (1, 5):
        out = backend.run(windows[:n])
        assert out.shape == (n, K) and out.dtype == np.float32
    err = parity_max_abs_err(model, backend, windows)
    assert 0.0 <= err < TOL


def test_onnx_metadata_props_carry_manifest(onnx_proto, manifest):
    props = {p.key: p.value for p in onnx_proto.metadata_props}
    expected = manifest.metadata_props()
    assert {k: props.get(k) for k in expected} == expected
    assert json.loads(props["imutune.channels"]) == list(manifest.channels)
    assert json.loads(props["imutune.window_samples"]) == T
    assert "imutune.artifacts" not in props


def test_onnx_static_batch(model, windows, tmp_path):
    proto = export_onnx(model, windows[:2], dynamic_batch=False)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [2, C, T]
    path = tmp_path / "static.onnx"
    path.write_bytes(proto.SerializeToString())
    backend = OnnxBackend(path)
    assert backend.batch_size == 2
    assert parity_max_abs_err(model, backend, windows[:5]) < TOL  # 5 rows -> chunks of 2, last padded


# --------------------------------------------------------------------------- ExecuTorch


@pytest.mark.parametrize("delegate, name", [("xnnpack", "executorch-xnnpack"), (None, "executorch-portable")])
def test_pte_export_runs_with_parity(model, windows, tmp_path, delegate, name):
    program = export_pte(model, torch.from_numpy(windows[:1]), delegate=delegate)
    path = tmp_path / "m.pte"
    path.write_bytes(program.buffer)
    backend = PteBackend(path)
    assert backend.name == name
    assert (backend.batch_size, backend.in_channels, backend.window_samples) == (1, C, T)
    out = backend.run(windows[:3])  # looped over the static batch of 1
    assert out.shape == (3, K) and out.dtype == np.float32
    assert parity_max_abs_err(model, backend, windows) < TOL


def test_pte_rejects_unknown_delegate(model, windows):
    with pytest.raises(ValueError, match="delegate"):
        export_pte(model, windows[:1], delegate="coreml")


# --------------------------------------------------------------------------- input checks


def test_exporters_validate_inputs(model, windows):
    with pytest.raises(ValueError, match="float32"):
        export_onnx(model, windows[:1].astype(np.float64))
    with pytest.raises(ValueError, match=r"\(N, C, T\)"):
        export_pte(model, windows[0])
    with pytest.raises(ValueError, match="torch.nn.Module"):
        export_onnx("not a model", windows[:1])
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            export_pte(model, windows[:1])
    finally:
        model.eval()


# --------------------------------------------------------------------------- write_exports


def test_write_exports_files_and_manifest(exported, windows):
    out, final = exported
    assert sorted(p.name for p in out.iterdir()) == ["export_config.json", "manifest.json", "model.onnx",
                                                     "model.pte"]
    assert json.loads((out / "export_config.json").read_text()) == {"seed": 0, "note": "test"}
    on_disk = load_manifest(out / "manifest.json")
    assert on_disk.artifacts == final.artifacts
    assert sorted(final.artifacts) == ["model.onnx", "model.pte"]
    for name, fmt, delegate in [("model.onnx", "onnx", None), ("model.pte", "pte", "xnnpack")]:
        entry = final.artifacts[name]
        assert entry["sha256"] == sha256_file(out / name)
        assert entry["size_bytes"] == (out / name).stat().st_size
        assert (entry["format"], entry["precision"], entry["delegate"]) == (fmt, "fp32", delegate)
        assert 0.0 <= entry["parity_max_abs_err"] < TOL
        load_backend(out / name, manifest=on_disk)  # hash + shape check pass


def test_write_exports_tampered_onnx_fails_hash(exported, tmp_path):
    out, final = exported
    copy = tmp_path / "model.onnx"
    data = bytearray((out / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_backend(copy, manifest=final)


class _ExportMismatch(torch.nn.Module):
    """Eager and ONNX agree; the torch.export graph used for .pte adds 1 to every logit."""

    def __init__(self) -> None:
        super().__init__()
        self.net = create_model("tinycnn1d", in_channels=C, num_classes=K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if torch.onnx.is_in_onnx_export():
            return y
        if torch.compiler.is_exporting():
            return y + 1.0
        return y


def test_write_exports_parity_failure_leaves_nothing(manifest, windows, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"parity check failed for model\.pte.*expected <= 0\.0001"):
        write_exports(_ExportMismatch().eval(), manifest, out, windows[:4], config={"a": 1})
    # model.onnx passed its own check but is not left behind either; no staging folder or lock remains
    assert list(tmp_path.iterdir()) == []


def test_write_exports_validates(model, manifest, windows, tmp_path):
    with pytest.raises(ValueError, match="channels"):
        write_exports(model, manifest, tmp_path, windows[:, :3])
    with pytest.raises(ValueError, match="samples"):
        write_exports(model, manifest, tmp_path, windows[:, :, :50])
    with pytest.raises(ValueError, match="formats"):
        write_exports(model, manifest, tmp_path, windows, formats=("tflite",))
    with pytest.raises(ValueError, match="tolerance"):
        write_exports(model, manifest, tmp_path, windows, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- XNNPACK rewrite, variants


def _n_delegates(buffer: bytes) -> int:
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(buffer)
    program = getattr(pte, "program", pte)
    return sum(len(plan.delegates) for plan in program.execution_plan)


def test_conv1d_as_conv2d_is_equivalent_and_lowers_to_one_partition():
    from imutune.deploy.export import _compute_pte, conv1d_as_conv2d

    torch.manual_seed(0)
    m = _randomize_bn(create_model("tinycnn1d", in_channels=3, num_classes=4, stem_pool=True)).eval()
    m.stages.append(torch.nn.AvgPool1d(2, 1))          # another 1-D pool the rewrite must cover
    x = torch.randn(2, 3, 40)
    m2 = conv1d_as_conv2d(m)
    assert not any(isinstance(mod, (torch.nn.Conv1d, torch.nn.BatchNorm1d, torch.nn.MaxPool1d)) for mod in m2.modules())
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x), rtol=1e-5, atol=1e-5)
    rewritten, info = _compute_pte(m, x[:1], "xnnpack")
    plain, info_plain = _compute_pte(m, x[:1], "xnnpack", rewrite=False)
    assert info["graph_rewrite"] == "conv1d->conv2d" and info_plain["graph_rewrite"] is None
    assert _n_delegates(rewritten.buffer) == 1 < _n_delegates(plain.buffer)


def test_rewrite_falls_back_when_outputs_differ():
    from imutune.deploy.export import _rewrite_for_xnnpack

    class LastStep(torch.nn.Module):         # functional 1-D code: x[..., -1] differs on (N, C, 1, T)
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)[..., -1]

    m = LastStep().eval()
    out, name = _rewrite_for_xnnpack(m, torch.randn(1, 3, 16))
    assert out is m and name is None


def test_write_exports_portable_variant(model, manifest, windows, tmp_path):
    m = write_exports(model, manifest, tmp_path, windows[:4], formats=("pte-portable",))
    e = m.artifacts["model_portable.pte"]
    assert (e["variant"], e["delegate"], e["precision"], e["graph_rewrite"]) == ("pte-portable", None, "fp32", None)
    b = load_backend(tmp_path / "model_portable.pte", manifest=m)
    assert b.name == "executorch-portable" and b.delegates == [] and e["parity_max_abs_err"] <= TOL
    assert b.embedded_metadata["channels"] == list(manifest.channels)
    with pytest.raises(ValueError, match="formats entry"):
        write_exports(model, manifest, tmp_path, windows[:4], formats=("tflite",))


# --------------------------------------------------------------------------- folder switch, lock, progress


def _export_state(out) -> str:
    """The ONNX sha256 of ``out`` after checking that every manifest entry matches its file."""
    m = load_manifest(out / "manifest.json")
    for name, entry in m.artifacts.items():
        assert sha256_file(out / name) == entry["sha256"], f"{name} does not match manifest.json"
    return m.artifacts["model.onnx"]["sha256"]


@pytest.fixture(scope="module")
def old_export(manifest, windows, tmp_path_factory):
    """An ONNX-only export of a tiny model (the 'old' folder content)."""
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("old") / "out"
    m = write_exports(create_model("tinycnn1d", in_channels=C, num_classes=K).eval(), manifest, out, windows[:4],
                      formats=("onnx",))
    return out, m.artifacts["model.onnx"]["sha256"]


_EXPORT_KILLER = '''
import os, signal, sys
import numpy as np, torch
from imutune import _io
from imutune.deploy.export import write_exports
from imutune.deploy.manifest import Manifest
from imutune.models.resnet1d import create_model
out, point = sys.argv[1], sys.argv[2]
def step(name):
    if name == point:
        os.kill(os.getpid(), signal.SIGKILL)
_io._step = step
torch.manual_seed(2)
model = create_model("tinycnn1d", in_channels=6, num_classes=5).eval()
man = Manifest(model_name="mobilecnn1d", model_config={"layers": [1, 1, 1]},
               class_names=tuple(f"c{i}" for i in range(5)),
               channels=("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"),
               sample_rate_hz=50.0, window_s=2.0, hop_s=1.0, norm_mean=(0.0,) * 6, norm_std=(1.0,) * 6)
x = np.random.default_rng(0).standard_normal((4, 6, 100)).astype(np.float32)
write_exports(model, man, out, x, formats=("onnx",))
sys.exit(3)
'''


@pytest.mark.parametrize("point, expect_new", [("staged", False), ("exchanged", True)])
def test_write_exports_killed_between_staging_and_switch(old_export, manifest, windows, tmp_path, point,
                                                         expect_new):
    """SIGKILL after the parity checks (staged) or mid-switch (exchanged): the folder holds one complete set."""
    import shutil
    import signal
    import subprocess
    import sys

    from imutune._io import StaleLockWarning

    out = tmp_path / "out"
    shutil.copytree(old_export[0], out)
    script = tmp_path / "kill_export.py"
    script.write_text(_EXPORT_KILLER)
    proc = subprocess.Popen([sys.executable, str(script), str(out), point], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    state = _export_state(out)  # consistent right after the kill, before any recovery
    assert (state != old_export[1]) == expect_new
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    debris = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out."))
    assert debris and ".out.lock" in debris
    # the rerun takes over the dead writer's lock, tidies up and writes its own complete set
    torch.manual_seed(3)
    with pytest.warns(StaleLockWarning, match=rf"pid {proc.pid}\) is no longer running"):
        m = write_exports(create_model("tinycnn1d", in_channels=C, num_classes=K).eval(), manifest, out,
                          windows[:4], formats=("onnx",))
    assert _export_state(out) == m.artifacts["model.onnx"]["sha256"] not in (state, old_export[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kill_export.py", "out"]


def test_write_exports_refuses_a_second_writer(old_export, manifest, windows, tmp_path):
    import os
    import shutil

    from imutune._io import FolderLockedError, folder_lock

    out = tmp_path / "out"
    shutil.copytree(old_export[0], out)
    with folder_lock(out):  # another export is running into the same folder
        with pytest.raises(FolderLockedError, match=rf"being written by another process \(pid {os.getpid()}\b"
                                                    rf".*lock file '.*\.out\.lock'"):
            write_exports(create_model("tinycnn1d", in_channels=C, num_classes=K).eval(), manifest, out,
                          windows[:4], formats=("onnx",))
    assert _export_state(out) == old_export[1]


def test_write_exports_keeps_other_files_drops_stale_variants_and_shows_progress(old_export, manifest, windows,
                                                                                 tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(old_export[0], out)
    (out / "replay_report.json").write_text("{}")
    (out / "model_int8.onnx").write_bytes(b"from an earlier export")
    (out / ".model.onnx.abc.tmp").write_bytes(b"debris of an interrupted writer")
    m = write_exports(create_model("tinycnn1d", in_channels=C, num_classes=K).eval(), manifest, out, windows[:4],
                      formats=("onnx",), progress=True)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "replay_report.json"]
    assert _export_state(out) == m.artifacts["model.onnx"]["sha256"]
    err = capsys.readouterr().err
    assert "export" in err and "onnx: reload + parity" in err
    write_exports(create_model("tinycnn1d", in_channels=C, num_classes=K).eval(), manifest, out, windows[:4],
                  formats=("onnx",))
    err = capsys.readouterr().err
    assert "variant" not in err and "reload + parity" not in err  # progress=False (the default): no bar


# --------------------------------------------------------------------------- ExecuTorch native log lines

_NATIVE_NOISE = ("cpuinfo_utils.cpp", "Failed to open midr file", "threadpool.cpp")


def test_pte_load_prints_no_native_noise(exported, windows, capfd):
    from executorch.extension.pybindings import portable_lib

    out, m = exported
    n = portable_lib._threadpool_get_thread_count()
    capfd.readouterr()
    # a thread count other than the current one makes the runtime reset its pool (and log it)
    backend = PteBackend(out / "model.pte", num_threads=n + 1)
    backend.prepare()
    load_backend(out / "model.pte", manifest=m, num_threads=n).run(windows[:1])
    err = capfd.readouterr().err
    assert not [ln for ln in err.splitlines() if any(k in ln for k in _NATIVE_NOISE)], err


def test_quiet_executorch_keeps_real_native_errors(capfd):
    import os

    from imutune.deploy._quiet import quiet_executorch

    with quiet_executorch():
        os.write(2, b"[cpuinfo_utils.cpp:87] Failed to open midr file /sys/x\n"
                    b"[threadpool.cpp:66] Resetting threadpool to 3 threads.\n"
                    b"[method.cpp:100] Missing operator: aten::foo\n")
    err = capfd.readouterr().err
    assert err == "[method.cpp:100] Missing operator: aten::foo\n"
    with pytest.raises(RuntimeError, match="load failed") as info:
        with quiet_executorch():
            os.write(2, b"[program.cpp:7] Program identifier 'XXXX' != expected 'ET12'\n")
            raise RuntimeError("load failed")
    assert "Program identifier" in capfd.readouterr().err
    assert any("Program identifier" in note for note in info.value.__notes__)


def test_replay_many_progress_bar_counts_recordings(exported, capsys):
    from imutune.data.recordings import Recording
    from imutune.runtime.replay import ReplayConfig, replay_many

    out, m = exported
    rng = np.random.default_rng(0)
    recs = [Recording(rng.standard_normal((300, C)).astype(np.float32), rng.integers(0, K, 300), 50.0,
                      tuple(m.channels), tuple(m.class_names), user="u", name=f"rec{i}") for i in range(3)]
    cfg = ReplayConfig(chunk_samples=None)
    capsys.readouterr()
    s = replay_many(recs, out / "model.onnx", m, config=cfg, progress=True)
    err = capsys.readouterr().err
    assert s["n_recordings"] == 3 and "replay" in err and "2/3" in err and "rec2; 10 windows so far" in err
    replay_many(recs, out / "model.onnx", m, config=cfg)
    assert "recording" not in capsys.readouterr().err  # progress=False (the default): no bar
