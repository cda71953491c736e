"""Atomic file and directory writes: readers never see a half-written output.

A write goes to a temporary `.<name>.<8 random characters>.tmp` beside the target and is renamed into
place on success; on any failure the temporary is removed and the previous target is left as it was.
A process killed outright (SIGKILL, power loss) cannot clean up: the next write to the same target
removes such leftovers of its own naming pattern when they are older than the current process.
A full disk becomes a one-line InputError naming the target.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cocoracle.config import InputError

_STARTED = time.time()  # temporaries older than this were left by an earlier, killed process
_RANDOM = "[a-z0-9_]{8}"  # what tempfile puts between prefix and suffix
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _temporary_name(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}\.{_RANDOM}\.tmp")


def is_temporary(path: str | Path) -> bool:
    """Whether `path` is the temporary of an atomic write (finished or not, never an output)."""
    return re.fullmatch(rf"\..+\.{_RANDOM}\.tmp", Path(path).name) is not None


def remove_stale(target: Path) -> None:
    """Remove temporaries of `target` (only its own naming pattern) left by processes before this one."""
    pattern = _temporary_name(target.name)
    for path in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        try:
            stale = pattern.fullmatch(path.name) is not None and path.lstat().st_mtime < _STARTED
        except FileNotFoundError:  # removed meanwhile
            continue
        if stale:
            _remove(path)


def _remove(path: Path) -> None:
    """Remove a file or directory tree; a failure is ignored, so that it never hides the error being raised."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, as an OSError or as a Rust I/O error inside e.g. safetensors' SafetensorError."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            return True
        if any(f"(os error {code})" in str(exc) for code in _DISK_FULL):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def _temporary(target: Path, make: Callable[..., str]) -> Iterator[Path]:
    """Create a temporary beside `target` with `make`; remove it whatever happens; a full disk is an InputError."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        tmp = Path(make(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        _raise_if_disk_full(exc, target)
        raise
    try:
        yield tmp
    except Exception as exc:
        _raise_if_disk_full(exc, target)
        raise
    finally:
        _remove(tmp)


def _raise_if_disk_full(exc: BaseException, target: Path) -> None:
    if _disk_full(exc):
        raise InputError(f"{target}: no space left on device (nothing written; any previous version is kept)"
                         ) from None


def _make_file(**kwargs: str) -> str:
    fd, tmp = tempfile.mkstemp(**kwargs)
    os.close(fd)
    return tmp


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `target`; rename it into place on success."""
    target = Path(target)
    with _temporary(target, _make_file) as tmp:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; it replaces `target` on success."""
    target = Path(target)
    with _temporary(target, tempfile.mkdtemp) as tmp:
        yield tmp
        os.chmod(tmp, 0o755)
        _swap_in(tmp, target)


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`; an existing target directory is renamed aside first, then removed,
    so that no reader ever sees it half deleted."""
    if target.is_dir() and not target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        os.replace(target, old)
        os.replace(tmp, target)
        _remove(old)
    else:
        if target.exists() or target.is_symlink():
            target.unlink()
        os.replace(tmp, target)


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
