"""Hide ExecuTorch's native start-up chatter on stderr; keep everything else.

ExecuTorch 1.5.1's C++ runtime (``portable_lib``) writes diagnostic lines
straight to file descriptor 2 when its CPU threadpool is created or resized,
e.g.::

    [cpuinfo_utils.cpp:87] Failed to open midr file /sys/devices/soc0/image_version
    [cpuinfo_utils.cpp:125] CPU info and manual query on # of cpus dont match.
    [threadpool.cpp:66] Resetting threadpool to 1 threads.

They are informational (the CPU-model probe of an x86 host finds no ARM
``midr`` file) but read like errors on every ``.pte`` export, load and
replay. The 1.5.1 Python bindings offer no log-level setting
(``executorch.extension.pybindings.portable_lib`` exposes none); they route
the runtime's log through Python's ``sys.stderr``, while other native code
may write to file descriptor 2 directly. :func:`quiet_executorch` therefore
captures both around the call (``sys.stderr`` swapped for a buffer, fd 2
redirected into a temporary file), drops the lines matching :data:`NOISE`,
and writes every other line back to stderr; if the call raises, those other
lines are also attached to the exception as a note, so real runtime errors
are never lost.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import threading
from typing import Iterator, Sequence

__all__ = ["quiet_executorch", "NOISE"]

#: Native log lines known to be harmless chatter (searched anywhere in the line).
NOISE: tuple[re.Pattern, ...] = (
    re.compile(r"cpuinfo_utils\.cpp:\d+\] (Reading file|Failed to open midr file|CPU info and manual query)"),
    re.compile(r"threadpool\.cpp:\d+\] Resetting threadpool to \d+ threads?\.?"),
)

_LOCK = threading.RLock()


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # pragma: no cover - no libc
        pass


@contextlib.contextmanager
def quiet_executorch(noise: Sequence[re.Pattern] = NOISE) -> Iterator[None]:
    """Capture stderr (``sys.stderr`` and fd 2) for the block; re-emit all lines but the known ``noise``.

    Process-wide while active (fd 2 is shared by all threads); a lock keeps
    two such blocks in different threads from interleaving. Nested use is fine.
    """
    with _LOCK:
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (e.g. a daemon): nothing to hide
            yield
            return
        cap = tempfile.TemporaryFile()
        os.dup2(cap.fileno(), 2)
        py_err, py_buf = sys.stderr, io.StringIO()
        sys.stderr = py_buf
        failed: BaseException | None = None
        try:
            yield
        except BaseException as e:
            failed = e
            raise
        finally:
            sys.stderr = py_err
            _flush_c_stdio()
            os.dup2(saved, 2)
            os.close(saved)
            cap.seek(0)
            text = py_buf.getvalue() + "\n" + cap.read().decode("utf-8", errors="replace")
            cap.close()
            kept = [ln for ln in text.splitlines() if ln.strip() and not any(p.search(ln) for p in noise)]
            if kept:
                msg = "\n".join(kept) + "\n"
                try:
                    sys.stderr.write(msg)
                    sys.stderr.flush()
                except (AttributeError, ValueError, OSError):  # pragma: no cover
                    os.write(2, msg.encode("utf-8", errors="replace"))
                if failed is not None and hasattr(failed, "add_note"):
                    failed.add_note("native stderr during the call:\n" + msg.rstrip("\n"))
