"""Atomic artifact writes, atomic folder switches, folder locks and content hashes.

Files: every artifact imutune writes goes through :func:`write_with_atomic`
(or its byte/text/JSON wrappers): the bytes land in a temporary file in the
destination folder (created with mode ``0o666`` minus the umask, like any
``open(path, "w")``), are flushed to disk, renamed over the destination, and
the folder itself is fsynced, so a crash never leaves a half-written file and
a completed write survives a power cut.

Folders: :func:`atomic_folder` switches a whole output folder (an export: model
files plus the manifest that hashes them) from its old to its new content in
one step. The writer fills a sibling staging folder; on success the staging
folder replaces the destination by one rename (Linux ``renameat2`` with
``RENAME_EXCHANGE``; elsewhere rename old -> backup, staging -> destination),
so a reader, or a process killed at any instant, only ever sees the complete
old or the complete new set. A half-done switch is finished and stale staging
removed by the next writer (:func:`recover_folder`). :func:`folder_lock`
refuses a second concurrent writer of the same folder::

    with atomic_folder("runs/export", drop=("model.onnx", "manifest.json")) as stage:
        write_bytes_atomic(stage / "model.onnx", data)
        ...                     # verify the staged files here; raising leaves the old folder untouched
    # runs/export now holds the new files (and, hard-linked, every other entry it held before)

Sibling names used next to a folder ``F`` (all hidden, all gone after a
completed switch): ``.F.lock`` (the lock, holding the writer's pid),
``.F.staging-*`` (being written), ``.F.ready`` (complete, waiting to be
switched in), ``.F.commit`` (the inode number of the committed new content, so
that after a kill the new content is told from the old), ``.F.old`` (the
previous content, being removed).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

__all__ = ["write_bytes_atomic", "write_text_atomic", "write_json_atomic",
           "write_with_atomic", "save_torch_atomic", "sha256_file", "sha256_bytes",
           "atomic_folder", "folder_lock", "recover_folder", "FolderLockedError", "StaleLockWarning"]

_FILE_MODE = 0o666  # minus the umask, as open() creates files
_DIR_MODE = 0o777


class FolderLockedError(ValueError):
    """Another live process holds the folder's lock (a ValueError, so the CLI reports it as a clean error)."""


class StaleLockWarning(UserWarning):
    """A lock left by a writer that is gone (killed) was taken over."""


# --------------------------------------------------------------------------- files


def _fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename / create / unlink in it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _create_tmp(parent: Path, name: str) -> str:
    """Create an empty, new hidden temporary file next to ``parent / name`` (mode 0o666 minus the umask)."""
    for _ in range(100):
        tmp = str(parent / f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), _FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {str(parent / name)!r}")


def write_with_atomic(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` and rename ``tmp_path`` onto ``path``.

    The temporary file sits next to ``path`` (same filesystem, so the rename is
    atomic) and is created, empty, with mode ``0o666`` minus the process umask
    (the mode ``open(path, "w")`` would give). After ``writer`` returns the
    file is fsynced, renamed over ``path``, and the folder fsynced. On any
    exception the temporary file is removed and the exception re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_tmp(path.parent, path.name)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return write_with_atomic(path, _w)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def save_torch_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes_atomic(path, buf.getvalue())


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"object of type {type(o).__name__} is not JSON serialisable")


def json_default_or_str(o: Any) -> Any:
    """``json.dumps(default=...)`` for free-form metadata (patch info, fleet metrics): numpy scalars and arrays
    as numbers and lists, anything else as its ``str``."""
    try:
        return _json_default(o)
    except TypeError:
        return str(o)


# --------------------------------------------------------------------------- folder lock


def _sibling(folder: Path, suffix: str) -> Path:
    return folder.parent / f".{folder.name}.{suffix}"


def _lock_path(folder: Path) -> Path:
    return _sibling(folder, "lock")


def _resolve_folder(folder: str | os.PathLike, what: str) -> Path:
    """Absolute folder path with symlinks resolved (the real folder is what gets locked and switched)."""
    raw = Path(folder)
    if str(folder) == "" or raw.name in ("", ".", ".."):
        p = raw.resolve()
    else:
        p = raw.parent.resolve() / raw.name
        if p.is_symlink():
            p = p.resolve()
    if p.parent == p:
        raise ValueError(f"{what} {str(folder)!r} is a filesystem root; expected a folder that can be replaced")
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} {str(folder)!r} exists and is not a folder; expected a folder (or a new path)")
    return p


def _read_lock_info(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive writer lock of ``folder`` for the ``with`` block.

    The lock is ``fcntl.flock`` on the sibling file ``.<name>.lock`` (next to
    the folder, so it survives the folder being switched), which records the
    holder's pid, host and start time. The kernel releases the lock when the
    holder exits, even by SIGKILL; the next writer then takes over the file
    left behind and says so with a :class:`StaleLockWarning`. The lock file
    is removed when the block ends.

    Parameters
    ----------
    folder : str or os.PathLike
        The folder to lock (it need not exist; its parent is created).

    Yields
    ------
    pathlib.Path
        The lock file.

    Raises
    ------
    FolderLockedError
        (a ValueError) If another process, or another ``folder_lock`` in this
        one, holds the lock; the message names the lock file and the holder's
        pid.
    ValueError
        If the lock file cannot be created (the message names it and the OS error).
    """
    import fcntl

    folder = _resolve_folder(folder, "folder")
    lock = _lock_path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the parent folder of {str(folder)!r}: {e}") from e
    fd = -1
    for _ in range(50):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), _FILE_MODE)
        except OSError as e:
            raise ValueError(f"cannot create the lock file {str(lock)!r} of {str(folder)!r}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_lock_info(fd)
            os.close(fd)
            pid = info.get("pid", "unknown")
            since = f" since {info['started']}" if "started" in info else ""
            host = f" on {info['host']}" if info.get("host") not in (None, socket.gethostname()) else ""
            raise FolderLockedError(
                f"{str(folder)!r} is being written by another process (pid {pid}{host}{since}; lock file "
                f"{str(lock)!r}); wait for it to finish or write to another folder") from None
        # The previous holder may have removed the file between our open and flock: lock the live file.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
        fd = -1
    if fd < 0:  # pragma: no cover - 50 lost races in a row
        raise FolderLockedError(f"could not acquire the lock file {str(lock)!r} of {str(folder)!r}; retry")
    try:
        prev = _read_lock_info(fd)
        if prev.get("pid") not in (None, os.getpid()):
            state = "is no longer running" if not _pid_alive(prev["pid"]) else "no longer holds it"
            warnings.warn(f"taking over the stale lock {str(lock)!r} of {str(folder)!r}: its writer (pid "
                          f"{prev['pid']}) {state}", StaleLockWarning, stacklevel=3)
        mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, mine, 0)
        os.fsync(fd)
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # still holding the lock: a waiter that opened the old file re-checks the inode
        os.close(fd)


# --------------------------------------------------------------------------- atomic folder


def _step(name: str) -> None:
    """Named point of the folder switch; tests replace this to kill the process there."""


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # this filesystem / kernel cannot exchange: use the two-rename fallback
    raise OSError(err, f"renameat2(RENAME_EXCHANGE) {a} <-> {b}: {os.strerror(err)}")


def _rmtree(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.exists():
        shutil.rmtree(p)


def _commit_ino(commit: Path) -> int | None:
    """Inode number of the committed new content recorded in ``.<name>.commit`` (None if absent/unreadable)."""
    try:
        ino = json.loads(commit.read_text(encoding="utf-8")).get("ino")
    except (OSError, ValueError, AttributeError):
        return None
    return ino if isinstance(ino, int) else None


def _switch_in(folder: Path, ready: Path, old: Path, commit: Path) -> None:
    """``ready`` (the committed new content) becomes ``folder``; the previous content is removed."""
    parent = folder.parent
    if folder.exists() and os.path.lexists(old):
        _rmtree(old)  # the folder is there, so a leftover previous content is garbage
    if folder.exists():
        if _exchange(ready, folder):
            _fsync_dir(parent)
            _step("exchanged")
            os.replace(ready, old)  # ready now holds the previous content
        else:
            os.replace(folder, old)
            _fsync_dir(parent)
            _step("moved-old")
            os.replace(ready, folder)
    else:
        os.replace(ready, folder)
    _fsync_dir(parent)
    _step("switched")
    _rmtree(old)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(commit)
    _fsync_dir(parent)


def recover_folder(folder: str | os.PathLike) -> list[str]:
    """Finish or undo an interrupted :func:`atomic_folder` switch of ``folder``; remove stale staging.

    Call with the folder's lock held (:func:`atomic_folder` does). Committed
    new content (``.<name>.ready``, whose inode number ``.<name>.commit``
    records) is switched in; the previous content left by an interrupted
    switch (``.<name>.old``, or ``.<name>.ready`` once the exchange swapped
    it there) is removed, or restored if the folder itself is missing;
    unfinished staging folders (``.<name>.staging-*``) are removed.

    Returns
    -------
    list of str
        What was done, one sentence each (empty if the folder was consistent).
    """
    folder = _resolve_folder(folder, "folder")
    ready, old, commit = _sibling(folder, "ready"), _sibling(folder, "old"), _sibling(folder, "commit")
    parent = folder.parent
    done: list[str] = []
    if not parent.is_dir():
        return done
    for p in sorted(parent.glob(f".{folder.name}.staging-*")):
        _rmtree(p)
        done.append(f"removed unfinished staging folder {p.name}")
    ino = _commit_ino(commit)
    if ready.is_dir():
        if ino is not None and folder.is_dir() and folder.stat().st_ino == ino:
            _rmtree(ready)  # the exchange already happened: ready holds the previous content
            done.append(f"removed the previous content of {folder.name} left by an interrupted switch")
        elif ino is not None and ready.stat().st_ino == ino:
            _switch_in(folder, ready, old, commit)  # committed before the kill: finish the switch
            done.append(f"completed the interrupted switch of {folder.name} to its new content")
        elif folder.exists():
            _rmtree(ready)  # no commit record: not known to be complete
            done.append(f"removed uncommitted content {ready.name}")
        else:
            os.replace(ready, folder)
            done.append(f"restored {folder.name} from {ready.name}")
    if os.path.lexists(old):
        if folder.exists():
            _rmtree(old)
            done.append(f"removed the previous content of {folder.name} left by an interrupted switch")
        else:
            os.replace(old, folder)
            done.append(f"restored {folder.name} from its previous content")
    if commit.exists():
        os.unlink(commit)
        done.append(f"removed the commit record {commit.name}")
    if done:
        _fsync_dir(parent)
    return done


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _is_debris(name: str) -> bool:
    """Leftovers of an interrupted writer inside a folder: temp files and old in-folder staging."""
    return ((name.startswith(".") and name.endswith(".tmp"))
            or name.startswith(".imutune-export-"))


def _carry_over(folder: Path, stage: Path, drop: set[str]) -> None:
    """Hard-link (or copy) the entries of ``folder`` that the writer did not write or drop into ``stage``."""
    if not folder.is_dir():
        return
    for entry in os.scandir(folder):
        name = entry.name
        if name in drop or _is_debris(name) or os.path.lexists(stage / name):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.copytree(entry.path, stage / name, symlinks=True, copy_function=_link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry.path), stage / name)
        else:
            _link_or_copy(entry.path, str(stage / name))


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _make_stage(folder: Path) -> Path:
    for _ in range(100):
        stage = _sibling(folder, f"staging-{secrets.token_hex(4)}")
        try:
            os.mkdir(stage, _DIR_MODE)  # umask applies
        except FileExistsError:
            continue
        if folder.is_dir():
            os.chmod(stage, folder.stat().st_mode & 0o7777)  # keep the folder's own mode
        return stage
    raise FileExistsError(f"could not create a staging folder next to {str(folder)!r}")  # pragma: no cover


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike, *, drop: Iterable[str] = (), carry_over: bool = True,
                  lock: bool = True) -> Iterator[Path]:
    """Write a folder's new content into a staging folder, then switch it in as a unit.

    On entry the folder's lock is taken (:func:`folder_lock`), an interrupted
    earlier switch is finished and stale staging removed
    (:func:`recover_folder`), and an empty staging folder next to ``folder``
    is created and yielded. Write every new file into it (with the atomic
    writers of this module) and verify them there. On normal exit the entries
    of the current ``folder`` that the writer neither wrote nor listed in
    ``drop`` are hard-linked in (``carry_over``; temp-file debris excluded),
    everything is fsynced, and the staging folder replaces ``folder`` in one
    rename. If the block raises, the staging folder is removed and ``folder``
    is left exactly as it was (or absent, if it was).

    A process killed at any point leaves ``folder`` holding either its
    complete old or its complete new content; the next :func:`atomic_folder`
    (or :func:`recover_folder`) tidies up. On Linux the switch is a single
    ``renameat2(RENAME_EXCHANGE)``, so the folder never disappears even for
    an instant; elsewhere it is two renames (old away, new in) and a kill
    between them leaves the old content at ``.<name>.old``, restored or
    replaced by the next writer.

    Parameters
    ----------
    folder : str or os.PathLike
        Destination folder (need not exist; its parent is created). A symlink
        is followed: the real folder is switched.
    drop : iterable of str, optional
        Top-level names the writer owns: if present in the old folder but not
        written this time, they are not carried over (e.g. an artifact of a
        variant no longer exported).
    carry_over : bool, default True
        Keep the old folder's other entries; False: the folder holds exactly
        what was written.
    lock : bool, default True
        Take :func:`folder_lock` (set False only if the caller holds it).

    Yields
    ------
    pathlib.Path
        The staging folder (a sibling of ``folder``).

    Raises
    ------
    FolderLockedError
        (a ValueError) If another writer holds the folder's lock.
    ValueError
        If ``folder`` is a file or a filesystem root, or contains the current
        working directory (switching it would move the process's cwd).
    """
    folder = _resolve_folder(folder, "folder")
    drop = {str(d) for d in drop}
    cwd = Path.cwd().resolve()
    if cwd == folder or folder in cwd.parents:
        raise ValueError(f"folder {str(folder)!r} contains the current working directory {str(cwd)!r}; "
                         "its content is switched by renaming the folder, so write to a folder outside the "
                         "working directory (e.g. a subfolder)")
    with (folder_lock(folder) if lock else contextlib.nullcontext()):
        recover_folder(folder)
        stage = _make_stage(folder)
        commit, ready = _sibling(folder, "commit"), _sibling(folder, "ready")
        try:
            yield stage
            _step("staged")
            if carry_over:
                _carry_over(folder, stage, drop)
            _fsync_tree(stage)
            write_json_atomic(commit, {"ino": os.stat(stage).st_ino})  # tells new content from old after a kill
            _step("recorded")
            os.replace(stage, ready)  # commit point: from here on the new content wins
            _fsync_dir(folder.parent)
        except BaseException:
            _rmtree(stage)
            if not os.path.lexists(ready):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(commit)
            raise
        _step("committed")
        _switch_in(folder, ready, _sibling(folder, "old"), commit)
