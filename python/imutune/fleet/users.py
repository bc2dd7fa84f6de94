"""Who the users of a fleet run are, and which recording files belong to each.

Two layouts (:func:`discover_users`):

* **a folder of per-user folders**: every non-hidden sub-folder ``<root>/<user_id>/`` is one user. Its
  recordings are the ``.npz``/``.csv`` files directly in it (split in time by the calibrate-then-use
  protocol), or, when it has both ``calibration/`` and ``test/`` sub-folders, the files in those (an
  explicit split: a calibration session and a later, separately labelled use session);
* **a manifest**: a ``.json`` file, ``{"users": [{"id": "u1", "recordings": ["a.npz", ...]}, ...]}`` (or the
  bare list), where an entry may instead give ``"calibration": [...]`` and ``"test": [...]``; or a ``.csv``
  file with the header ``user_id,path[,split]`` (``split`` empty, ``calibration`` or ``test``). Relative paths
  are relative to the manifest's folder.

User ids name output folders, so they must match ``[A-Za-z0-9][A-Za-z0-9._-]*`` (at most 128 characters) and
be unique. Files are not opened here: a missing or broken file is that user's failure at run time, not the
fleet's.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["UserSpec", "discover_users", "read_user_files", "RECORDING_SUFFIXES", "USER_ID_PATTERN"]

RECORDING_SUFFIXES = (".npz", ".csv")
USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class UserSpec:
    """One user of the fleet.

    ``recordings`` are split by the calibrate-then-use protocol; ``calibration`` and ``test`` (both
    non-empty, ``recordings`` empty) are an explicit split. Paths are absolute strings.
    """

    user_id: str
    recordings: tuple[str, ...] = ()
    calibration: tuple[str, ...] = ()
    test: tuple[str, ...] = ()

    @property
    def explicit_split(self) -> bool:
        return bool(self.calibration or self.test)

    def files(self) -> list[tuple[str, str]]:
        """``(role, path)`` pairs in a fixed order; role is ``recording``, ``calibration`` or ``test``."""
        return ([("recording", p) for p in self.recordings] + [("calibration", p) for p in self.calibration]
                + [("test", p) for p in self.test])


def _check_id(uid: Any, where: str) -> str:
    uid = str(uid).strip() if uid is not None else ""
    if not USER_ID_PATTERN.match(uid):
        raise ValueError(f"user id {uid!r} in {where} is not usable as a folder name; expected letters, digits, "
                         "'.', '_' or '-' (first a letter or digit, at most 128 characters)")
    return uid


def _data_files(folder: Path) -> tuple[str, ...]:
    return tuple(str(f.resolve()) for f in sorted(folder.iterdir())
                 if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in RECORDING_SUFFIXES)


def discover_users(path: str | os.PathLike) -> list[UserSpec]:
    """The users of a folder of per-user folders or of a JSON/CSV manifest (module notes), sorted by id.

    Parameters
    ----------
    path : str or path-like
        A folder whose sub-folders are users, or a ``.json`` / ``.csv`` manifest.

    Returns
    -------
    list of UserSpec
        Sorted by ``user_id``. A user folder without recording files is still listed (it fails at run
        time with reason ``bad_input``).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the folder has no user sub-folders, the manifest is malformed, a user id is unusable or
        repeated, or a manifest entry lists no files.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--users {str(p)!r} does not exist; expected a folder of per-user folders or a "
                                ".json/.csv manifest")
    if p.is_dir():
        users = _from_folder(p)
    elif p.suffix.lower() == ".json":
        users = _from_json(p)
    elif p.suffix.lower() == ".csv":
        users = _from_csv(p)
    else:
        raise ValueError(f"--users {str(p)!r} has suffix {p.suffix!r}; expected a folder, a .json or a .csv manifest")
    seen: set[str] = set()
    for u in users:
        if u.user_id in seen:
            raise ValueError(f"user id {u.user_id!r} appears twice in {str(p)!r}; expected unique ids")
        seen.add(u.user_id)
    return sorted(users, key=lambda u: u.user_id)


def _from_folder(root: Path) -> list[UserSpec]:
    subs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if not subs:
        raise ValueError(f"user folder {str(root)!r} has no sub-folders; expected one folder of recordings per user")
    out = []
    for d in subs:
        uid = _check_id(d.name, f"folder {str(root)!r}")
        cal, test = d / "calibration", d / "test"
        if cal.is_dir() and test.is_dir():
            out.append(UserSpec(uid, calibration=_data_files(cal), test=_data_files(test)))
        else:
            out.append(UserSpec(uid, recordings=_data_files(d)))
    return out


def _resolve(base: Path, items: Any, where: str) -> tuple[str, ...]:
    if isinstance(items, str) or not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise ValueError(f"{where} must be a list of file paths, got {items!r}")
    return tuple(str((base / s).resolve()) if not os.path.isabs(s) else str(Path(s).resolve()) for s in items)


def _from_json(path: Path) -> list[UserSpec]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"manifest {str(path)!r} is not valid JSON ({type(e).__name__}: {e})") from e
    entries = obj.get("users") if isinstance(obj, dict) else obj
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"manifest {str(path)!r} must hold a non-empty list of users (or {{\"users\": [...]}}), "
                         f"got {type(entries).__name__}")
    base, out = path.parent, []
    for i, e in enumerate(entries):
        where = f"manifest {str(path)!r} entry {i}"
        if not isinstance(e, dict):
            raise ValueError(f"{where} must be an object with 'id' and 'recordings' (or 'calibration' and 'test'), "
                             f"got {e!r}")
        uid = _check_id(e.get("id", e.get("user_id")), where)
        if "recordings" in e:
            recs = _resolve(base, e["recordings"], f"{where} 'recordings'")
            if not recs:
                raise ValueError(f"{where} ('{uid}') lists no recordings")
            out.append(UserSpec(uid, recordings=recs))
        elif "calibration" in e and "test" in e:
            cal = _resolve(base, e["calibration"], f"{where} 'calibration'")
            test = _resolve(base, e["test"], f"{where} 'test'")
            if not cal or not test:
                raise ValueError(f"{where} ('{uid}') needs non-empty 'calibration' and 'test' lists")
            out.append(UserSpec(uid, calibration=cal, test=test))
        else:
            raise ValueError(f"{where} ('{uid}') has neither 'recordings' nor both 'calibration' and 'test'; "
                             f"keys seen {sorted(e)}")
    return out


def _from_csv(path: Path) -> list[UserSpec]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"manifest {str(path)!r} could not be read as CSV ({type(e).__name__}: {e})") from e
    if not rows or not {"user_id", "path"} <= set(rows[0]):
        raise ValueError(f"manifest {str(path)!r} needs a header with columns user_id,path[,split] and at least "
                         f"one row; got columns {sorted(rows[0]) if rows else []}")
    groups: dict[str, dict[str, list[str]]] = {}
    for i, r in enumerate(rows, start=2):
        where = f"manifest {str(path)!r} line {i}"
        uid = _check_id(r.get("user_id"), where)
        split = (r.get("split") or "").strip().lower() or "recordings"
        if split not in ("recordings", "calibration", "test"):
            raise ValueError(f"{where}: split {r.get('split')!r}; expected empty, 'calibration' or 'test'")
        f = (r.get("path") or "").strip()
        if not f:
            raise ValueError(f"{where}: empty path")
        groups.setdefault(uid, {}).setdefault(split, []).append(f)
    out = []
    for uid, g in groups.items():
        where = f"manifest {str(path)!r} user {uid!r}"
        if "recordings" in g and ("calibration" in g or "test" in g):
            raise ValueError(f"{where} mixes rows without a split and rows with one; use one or the other")
        if "recordings" in g:
            out.append(UserSpec(uid, recordings=_resolve(path.parent, g["recordings"], where)))
        elif "calibration" in g and "test" in g:
            out.append(UserSpec(uid, calibration=_resolve(path.parent, g["calibration"], where),
                                test=_resolve(path.parent, g["test"], where)))
        else:
            raise ValueError(f"{where} has only {sorted(g)} rows; an explicit split needs both calibration and test")
    return out


def read_user_files(user: UserSpec) -> tuple[list[tuple[str, str, bytes]], str]:
    """Read a user's files: ``([(role, file name, bytes), ...], input_sha256)``.

    ``input_sha256`` hashes every file's role, name and contents in order, so a changed upload
    invalidates the user's earlier results. An unreadable file raises ``FileNotFoundError`` /
    ``ValueError`` naming it (the caller records it as the user's failure).
    """
    h = hashlib.sha256()
    out = []
    for role, path in user.files():
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"recording file {path!r} of user {user.user_id!r} does not exist")
        try:
            data = p.read_bytes()
        except OSError as e:
            raise ValueError(f"recording file {path!r} of user {user.user_id!r} could not be read ({e})") from e
        h.update(f"{role}\0{p.name}\0{len(data)}\0".encode())
        h.update(hashlib.sha256(data).digest())
        out.append((role, p.name, data))
    return out, h.hexdigest()
