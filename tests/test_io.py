"""Tests for imutune._io: atomic files (mode, fsync), atomic folder switches under SIGKILL, folder locks."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imutune import _io
from imutune._io import (
    FolderLockedError,
    StaleLockWarning,
    atomic_folder,
    folder_lock,
    recover_folder,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)

_SRC = str(Path(__file__).resolve().parents[1] / "python")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_honours_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        p = write_bytes_atomic(tmp_path / "a.bin", b"x")
        q = write_json_atomic(tmp_path / "sub" / "b.json", {"a": 1})
    finally:
        os.umask(old)
    assert (_mode(p), _mode(q)) == (expected, expected)


def test_atomic_write_fsyncs_file_then_folder_after_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        return real_fsync(fd)

    def replace(a, b):
        events.append("replace")
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_bytes_atomic(tmp_path / "a.bin", b"payload")
    assert events == ["fsync-file", "replace", "fsync-dir"]
    assert (tmp_path / "a.bin").read_bytes() == b"payload"


def test_atomic_write_failure_leaves_old_file_and_no_tmp(tmp_path):
    p = write_bytes_atomic(tmp_path / "a.bin", b"old")

    def boom(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        _io.write_with_atomic(p, boom)
    assert p.read_bytes() == b"old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.bin"]


# --------------------------------------------------------------------------- atomic folder


def _write_set(stage: Path, tag: str) -> None:
    """A tiny 'export': two payload files plus a manifest holding their hashes."""
    names = {"model.onnx": f"onnx-{tag}".encode(), "model.pte": f"pte-{tag}".encode() * 1000}
    for name, data in names.items():
        write_bytes_atomic(stage / name, data)
    write_json_atomic(stage / "manifest.json", {"tag": tag, "artifacts": {n: sha256_file(stage / n) for n in names}})


def _which_set(folder: Path) -> str:
    """'old' / 'new' if ``folder`` holds one complete, self-consistent set; raises otherwise."""
    man = json.loads((folder / "manifest.json").read_text())
    for name, digest in man["artifacts"].items():
        assert sha256_file(folder / name) == digest, f"{name} does not match the manifest of set {man['tag']}"
    assert (folder / "model.onnx").read_bytes() == f"onnx-{man['tag']}".encode()
    return man["tag"]


def test_atomic_folder_creates_replaces_and_carries_over(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".out.staging-")
        _write_set(stage, "old")
        write_bytes_atomic(stage / "model_int8.onnx", b"int8")
    assert _which_set(out) == "old"
    (out / "replay_report.json").write_text("{}")
    (out / "sub").mkdir()
    (out / "sub" / "x.txt").write_text("x")
    (out / ".model.onnx.1234.tmp").write_bytes(b"debris")  # left by an interrupted writer
    (out / ".imutune-export-abc").mkdir()  # in-folder staging of the pre-atomic_folder exporter
    os.chmod(out, 0o750)
    with atomic_folder(out, drop=("model.onnx", "model.pte", "manifest.json", "model_int8.onnx")) as stage:
        _write_set(stage, "new")
    assert _which_set(out) == "new"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "model.pte",
                                                     "replay_report.json", "sub"]
    assert (out / "sub" / "x.txt").read_text() == "x"
    assert _mode(out) == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no lock, staging or backup left


def test_atomic_folder_failure_leaves_folder_untouched(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as stage:
        _write_set(stage, "old")
    with pytest.raises(RuntimeError, match="parity"):
        with atomic_folder(out) as stage:
            _write_set(stage, "new")
            raise RuntimeError("parity failed")
    assert _which_set(out) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(RuntimeError, match="parity"):
        with atomic_folder(tmp_path / "fresh") as stage:
            raise RuntimeError("parity failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # a new folder is not created on failure


def test_atomic_folder_two_rename_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(_io, "_exchange", lambda a, b: False)  # a filesystem without RENAME_EXCHANGE
    out = tmp_path / "out"
    for tag in ("old", "new"):
        with atomic_folder(out) as stage:
            _write_set(stage, tag)
    assert _which_set(out) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_folder_rejects_file_and_cwd(tmp_path, monkeypatch):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match=r"file\.txt.*not a folder"):
        with atomic_folder(f):
            pass
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path / "out")
    with pytest.raises(ValueError, match="contains the current working directory"):
        with atomic_folder(tmp_path / "out"):
            pass


_KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {src!r})
    from pathlib import Path
    from imutune import _io
    sys.path.insert(0, {tests!r})
    from test_io import _write_set
    folder, point, fallback = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    def step(name):
        if name == point:
            os.kill(os.getpid(), signal.SIGKILL)
    _io._step = step
    if fallback:
        _io._exchange = lambda a, b: False
    with _io.atomic_folder(folder, drop=("model.onnx", "model.pte", "manifest.json")) as stage:
        _write_set(stage, "new")
        if point == "writing":
            os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(3)  # not killed: the named point was never reached
""")


@pytest.mark.parametrize("point, fallback, expected", [
    ("writing", False, "old"),     # staging half written
    ("staged", False, "old"),      # staging complete, not committed
    ("recorded", False, "old"),    # commit record written, staging not yet renamed to .ready
    ("committed", False, "new"),   # .ready in place, switch not started
    ("exchanged", False, "new"),   # renameat2 exchange done, previous content still at .ready
    ("switched", False, "new"),    # switched, previous content not yet removed
    ("moved-old", True, "new"),    # two-rename fallback: old moved away, new not yet in
])
def test_sigkill_during_switch_leaves_old_or_new_set(tmp_path, point, fallback, expected):
    out = tmp_path / "out"
    with atomic_folder(out) as stage:
        _write_set(stage, "old")
    script = tmp_path / "killer.py"
    script.write_text(_KILLER.format(src=_SRC, tests=str(Path(__file__).parent)))
    proc = subprocess.Popen([sys.executable, str(script), str(out), point, "1" if fallback else "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    if not fallback:  # with RENAME_EXCHANGE the folder is consistent even before any recovery
        assert _which_set(out) in ("old", "new")
    # the next writer (here: a recovery under the lock) finishes or undoes the switch and tidies up
    with pytest.warns(StaleLockWarning, match=rf"pid {proc.pid}\) is no longer running"):
        with folder_lock(out):
            done = recover_folder(out)
    assert done  # something was left to tidy at every kill point
    assert _which_set(out) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killer.py", "out"]
    # and a full rerun works on top
    with atomic_folder(out) as stage:
        _write_set(stage, "rerun")
    assert _which_set(out) == "rerun"


def test_recover_removes_stale_staging_of_killed_writer(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as stage:
        _write_set(stage, "old")
    stale = tmp_path / ".out.staging-dead"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"partial")
    with atomic_folder(out) as stage:
        assert not stale.exists()
        _write_set(stage, "new")
    assert _which_set(out) == "new"


# --------------------------------------------------------------------------- folder lock


_HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {src!r})
    from imutune._io import folder_lock
    with folder_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()   # hold until the parent closes our stdin
""")


def test_second_writer_is_refused_while_first_holds_lock(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER.format(src=_SRC), str(out)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError,
                           match=rf"being written by another process \(pid {holder.pid}\b.*lock file "
                                 rf"'.*\.out\.lock'"):
            with atomic_folder(out) as stage:
                _write_set(stage, "second")
        assert isinstance(FolderLockedError("x"), ValueError)  # the CLI reports it as a clean error
        assert not out.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    with atomic_folder(out) as stage:  # free again once the first writer is done
        _write_set(stage, "second")
    assert _which_set(out) == "second"
    assert not (tmp_path / ".out.lock").exists()


def test_lock_is_exclusive_within_a_process_and_released(tmp_path):
    out = tmp_path / "out"
    with folder_lock(out) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(FolderLockedError, match=rf"pid {os.getpid()}.*\.out\.lock"):
            with folder_lock(out):
                pass
    assert not lock.exists()
    with folder_lock(out):
        pass


def test_stale_lock_of_dead_pid_is_taken_over_with_a_message(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    (tmp_path / ".out.lock").write_text(json.dumps({"pid": pid, "host": "h", "started": "t"}))
    with pytest.warns(StaleLockWarning, match=rf"stale lock .*\.out\.lock.*pid {pid}\) is no longer running"):
        with atomic_folder(out) as stage:
            _write_set(stage, "new")
    assert _which_set(out) == "new"
