"""Atomic file output: write to a temporary name in the same folder, then rename.

An interrupted run therefore never leaves a truncated file under the final name. The file ends
with the permissions a plain ``open(path, "w")`` would give it (``0o666`` minus the umask, or the
mode of the file it replaces), not the owner-only ``0o600`` of :func:`tempfile.mkstemp`.

Temporaries are named ``.<name>.<pid>-<random>.tmp<suffix>`` next to the final file (a folder
for bags: ``.<name>.<pid>-<random>.tmp``), where ``<pid>`` is the writing process. A run that is
killed (SIGKILL, power loss) cannot remove its temporaries, so every writer calls
:func:`remove_stale_temporaries` on its output folders when it starts: it deletes the entries of
exactly this pattern whose process is no longer running (and those of the older pattern without
a process id), never anything else, and never a temporary a running process is writing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[a-z0-9_]{8}\.tmp(?:\.[^.]+)?$")
"""Names of this module's temporaries: ``.<name>.<pid>-<8 random characters>.tmp[.<suffix>]``
(``tempfile``'s random part is 8 characters of ``[a-z0-9_]``); ``<pid>-`` is absent in files
written before process ids were recorded."""


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only a read)
    os.umask(mask)
    return mask


def _file_mode(final: Path) -> int:
    """Permission bits for ``final``: those of the file it replaces, else ``0o666 & ~umask``."""
    try:
        return final.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` is running (POSIX; elsewhere every process counts as running)."""
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True  # no safe check (os.kill would terminate it on Windows): never remove another's file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def temporary_name(final: str | os.PathLike[str]) -> tuple[str, str]:
    """``(prefix, suffix)`` for :func:`tempfile.mkstemp` / :func:`tempfile.mkdtemp` of a temporary
    next to ``final``: ``.<stem>.<pid>-`` and ``.tmp<suffix>`` (folders: ``.<name>.<pid>-`` and ``.tmp``)."""
    p = Path(final)
    return f".{p.stem}.{os.getpid()}-", f".tmp{p.suffix}"


def make_temporary(final: str | os.PathLike[str], *, folder: bool = False) -> Path:
    """Create an empty temporary file (or, with ``folder``, a folder) next to ``final`` with the
    naming pattern :func:`remove_stale_temporaries` recognises; the parent folder is created."""
    p = Path(final)
    p.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        return Path(tempfile.mkdtemp(prefix=f".{p.name}.{os.getpid()}-", suffix=".tmp", dir=p.parent))
    prefix, suffix = temporary_name(p)
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=p.parent)
    os.close(fd)
    return Path(name)


def is_stale_temporary(path: str | os.PathLike[str]) -> bool:
    """True for a temporary of this module's naming pattern whose writing process has ended."""
    m = _TEMP_NAME.match(Path(path).name)
    if m is None:
        return False
    pid = m.group("pid")
    return pid is None or not _pid_alive(int(pid))


def remove_stale_temporaries(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Delete the stale temporaries (:func:`is_stale_temporary`) directly in ``folder`` (and, with
    ``recursive``, in its sub-folders; temporary folders are removed whole, not entered).

    Writers call this on their output folders when they start, so the leftovers of an
    interrupted run (``.000123.4711-k3j2h1g0.tmp.png``, ``.last.4711-....tmp.ckpt``, a bag's
    ``.train.4711-....tmp/`` folder, ``.run.4711-....tmp.rrd``) do not pile up. Nothing else
    is touched: other hidden files, and temporaries of processes still running, stay. A missing
    folder is not an error. Returns what was removed.
    """
    root = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        path = Path(entry.path)
        if is_stale_temporary(path):
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # e.g. a read-only folder: leave it, say so
                log.warning("%s: cannot remove a stale temporary (%s)", path, exc.strerror or exc)
        elif recursive and entry.is_dir(follow_symlinks=False):
            removed += remove_stale_temporaries(path, recursive=True)
    if removed:
        log.info("%s: removed %d stale temporar%s of an interrupted run", root, len(removed),
                 "y" if len(removed) == 1 else "ies")
    return removed


_swept: set[tuple[str, bool]] = set()


def remove_stale_temporaries_once(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """:func:`remove_stale_temporaries` the first time a folder is given in this process (for
    writers that are functions called once per file, such as
    :func:`terraseg.inference.scans.write_scan_prediction`); later calls do nothing."""
    key = (os.path.abspath(folder), recursive)
    if key in _swept:
        return []
    _swept.add(key)
    return remove_stale_temporaries(folder, recursive=recursive)


def finalize_mode(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Give a finished temporary the mode ``final`` should have (:func:`atomic_path`'s rule) before
    it is renamed into place (for writers that manage their own temporary, such as the ``.rrd``)."""
    os.chmod(tmp, _file_mode(Path(final)))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``.

    The temporary file keeps the final suffix (so libraries that pick a format from the suffix,
    such as Pillow or matplotlib, still work). On any exception the temporary file is removed
    and ``path`` is left untouched.
    """
    final = Path(path)
    tmp = make_temporary(final)
    try:
        yield tmp
        os.chmod(tmp, _file_mode(final))  # after writing: a read-only original must not block it
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the final path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically and return the final path."""
    return atomic_write_bytes(path, text.encode(encoding))
