"""A write that the file system refused, said the same way by every command: what could not be written, why (the
disk or the quota is full, the file system is read-only, permission is denied), how much space is free there and
how much was needed where that is known, what was kept, and what to do.

Writers do not catch these one by one. `reasoncd.io` wraps each of its writes in `translated` (a single file, a
staged output folder, a scene's resumable folder), train.py's checkpoint save does the same, and a command's entry
turns the resulting `WriteFault` into its message and exit status (`reasoncd.exits`).

Libraries report a full disk in their own words: Python and Pillow raise OSError(ENOSPC); safetensors says "No
space left on device (os error 28)", SQLite (GDAL's GeoPackage) "database or disk is full"; NumPy's array writer
only "8192 requested and 8160 written", torch.save's stream writer "unexpected pos", GDAL's TIFF writer "Write
error" (after printing libtiff's ENOSPC). Errors of the first two kinds are recognised by their errno or text; a write
error of the last kinds counts as a full disk when under NEARLY_FULL bytes are free, and is passed on in the
library's words otherwise.
"""
from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Callable, Iterator

NEARLY_FULL = 1 << 20  # bytes free under which a library's bare write error is taken for a full disk
SPACE_TEXT = {"no space left on device": errno.ENOSPC, "os error 28": errno.ENOSPC,
              "database or disk is full": errno.ENOSPC,  # SQLite's (a GeoPackage), as GDAL passes it on
              "disk quota exceeded": errno.EDQUOT, "os error 122": errno.EDQUOT}
WRITE_TEXT = ("write error", "write failed", "unexpected pos", "error while serializing", "requested and")
REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission to write there is denied",
    errno.EPERM: "permission to write there is denied",
    errno.EFBIG: "the file is larger than the file system allows",
}
SPACE_CODES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WriteFault(OSError):
    """A write the file system refused; `str()` is the whole message (path, reason, space, what was kept)."""

    def __init__(self, code: int, message: str, *, path, reason: str):
        super().__init__(code, message)
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return self.strerror

    def adding(self, advice: str) -> "WriteFault":
        """The same fault with a command's own advice after the message."""
        return WriteFault(self.errno, f"{self.strerror} {advice}.", path=self.path, reason=self.reason)


def human_bytes(count: int) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disks are sold and `--max_shard_size` is written)."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


def free_bytes(path) -> int | None:
    """Bytes free to this user on the file system of `path` (or of its nearest existing folder)."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def folder_bytes(path) -> int:
    """Bytes of the files under `path` (0 when it is gone)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for item in path.rglob("*") if path.is_dir() else ():
        with contextlib.suppress(OSError):
            total += item.stat().st_size if item.is_file() else 0
    return total


def _outside(error: OSError, within) -> bool:
    """Whether `error` names a file outside the places being written (an input that could not be read)."""
    if not error.filename or not within:
        return False
    try:
        named = Path(error.filename).resolve()
    except (TypeError, OSError, ValueError):
        return False
    places = [Path(place).resolve() for place in within]
    return not any(named == place or place in named.parents for place in places)


def _cause(error: BaseException, where, within=()) -> tuple[int, str] | None:
    """(errno, reason) when `error` (or an error it came from) is a refused write, else None. An OSError naming a
    file outside `within` (when given) is some input's, not a write's."""
    if isinstance(error, WriteFault):
        return error.errno, error.reason
    chain, seen = [], error
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for item in chain:
        if isinstance(item, OSError) and item.errno in REASONS:
            return None if _outside(item, within) else (item.errno, REASONS[item.errno])
    text = " ".join(str(item).lower() for item in chain)
    for words, code in SPACE_TEXT.items():
        if words in text:
            return code, REASONS[code]
    if any(words in text for words in WRITE_TEXT):
        free = free_bytes(where)
        if free is not None and free < NEARLY_FULL:
            return errno.ENOSPC, REASONS[errno.ENOSPC]
        return errno.EIO, f"the write failed ({chain[0]})"
    return None


def fault(error: BaseException, target, *, kept: str, needed: int | None = None, written: int | None = None,
          within=()) -> WriteFault | None:
    """
    `error` as a WriteFault about `target` (what the user asked to be written), or None when it is not a refused
    write. kept: the sentence saying what is intact ("runs/eval was left as it was"). needed: the bytes the write
    needs, when known beforehand; written: the bytes written before it failed (then at least that much is needed).
    within: the places being written; an OSError naming a file elsewhere is left alone.
    """
    cause = _cause(error, target, within)
    if cause is None:
        return None
    code, reason = cause
    figures = []
    free = free_bytes(target)
    if free is not None:
        figures.append(f"{human_bytes(free)} free there")
    if needed:
        figures.append(f"about {human_bytes(needed)} needed")
    elif written and code in SPACE_CODES:
        figures.append(f"at least {human_bytes(written)} needed: that much was written before it stopped")
    if code in SPACE_CODES:
        advice = "Free some space (or raise the quota) and run the command again"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "Choose a place you can write to"
    else:
        advice = "Check the disk and run the command again"
    shown = f" ({', '.join(figures)})" if figures else ""
    return WriteFault(code, f"{target}: could not be written: {reason}{shown}. {kept}. {advice}.", path=target,
                      reason=reason)


@contextlib.contextmanager
def translated(target, *, kept: str, needed: int | None = None, measure: Callable[[], int] | None = None,
               within=()) -> Iterator[None]:
    """Runs the block; a refused write in it is raised again as a WriteFault about `target` (see `fault`).
    `measure()` gives the bytes written so far, asked only when a write failed."""
    try:
        yield
    except Exception as error:
        translated_error = fault(error, target, kept=kept, needed=needed, within=within,
                                 written=measure() if measure is not None else None)
        if translated_error is None:
            raise
        raise translated_error from error
