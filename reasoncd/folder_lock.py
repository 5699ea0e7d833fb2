"""One command at a time per output folder.

Two jobs on one folder (a resubmitted cluster job, two evaluations of one run) would each build outputs and put
them in place over the other's. So every command that writes a folder first takes its lock: a file beside the
folder, `.NAME.lock` (where the command also builds its outputs), holding the command, process id, host and start
time, and held with `flock`. The kernel lets go of an flock when its process ends, however it ends, so a lock left
by a dead process is free: the next command takes it over and says so. A live holder makes the next command refuse
at once, naming the holder's process id, host and start time. The lock file is removed when its holder lets go.

Within one process locks are shared: a folder inside one that the process holds is covered by it (train.py's
`model/` inside its run folder), and the same folder taken twice is counted, not refused.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from reasoncd.write_faults import fault

LOCK_SUFFIX = ".lock"


class FolderLockError(ValueError):
    """The folder's lock cannot be taken: another live process is writing the folder, or nothing can be created
    beside it (a read-only file system); the message says which."""


def lock_file(folder) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


@dataclass
class _Lock:
    folder: Path
    path: Path
    descriptor: int
    count: int = 1


_HELD: dict[Path, _Lock] = {}
_GUARD = threading.Lock()


def _record(command: str) -> bytes:
    return (json.dumps({"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}) + "\n").encode()


def _read(descriptor: int) -> dict:
    try:
        data = json.loads(os.pread(descriptor, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict) -> str:
    if not holder.get("pid"):
        return "a process that has not yet said which"
    return (f"{holder.get('command', 'a ReasonCD command')} (process {holder['pid']} on {holder.get('host', '?')}, "
            f"started {holder.get('started', 'at an unknown time')})")


def _alive(holder: dict) -> bool:
    """Whether the holder a lock file names is a live process (only decidable on this host)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except (KeyError, TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _try_flock(descriptor: int) -> bool | None:
    """True: taken; False: another process holds it; None: this file system has no flock."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise
    return True


def _acquire(folder: Path, command: str, shown) -> _Lock:
    path = lock_file(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
        try:
            taken = _try_flock(descriptor)
            holder = _read(descriptor)
            if taken is None:  # no flock here: the lock file's process id decides
                taken = not holder or holder.get("pid") == os.getpid() or not _alive(holder)
            if not taken:
                raise FolderLockError(f"{shown} is being written by another ReasonCD command: {describe_holder(holder)}; "
                                 f"its lock is {path}. Wait until it ends (or stop it), or choose another output "
                                 "folder")
            # The holder may have removed the file between our open and flock: then take the new one.
            try:
                same = os.stat(path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(descriptor)
            raise
        if not same:
            os.close(descriptor)
            continue
        if holder and holder.get("pid") != os.getpid():
            print(f"note: {shown}: taking over the lock left by {describe_holder(holder)}, which is no longer "
                  "running", file=sys.stderr)
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, _record(command), 0)
        except OSError:
            pass  # a full disk: the flock holds all the same, only the holder's description is missing
        return _Lock(folder, path, descriptor)


class Holding:
    """A taken lock (or a share of one this process holds); `release()` lets go, once."""

    def __init__(self, lock: _Lock):
        self._lock = lock

    def release(self) -> None:
        with _GUARD:
            lock, self._lock = self._lock, None
            if lock is None:
                return
            lock.count -= 1
            if lock.count:
                return
            del _HELD[lock.folder]
            try:
                if os.stat(lock.path).st_ino == os.fstat(lock.descriptor).st_ino:
                    os.unlink(lock.path)  # while still held, so no one takes over a file about to vanish
            except OSError:
                pass
            os.close(lock.descriptor)


def hold(folder, command: str, shown=None) -> Holding:
    """Takes the lock of `folder` for `command`; raises FolderLockError when a live process holds it or nothing can
    be created beside the folder. `shown`: the folder as the user gave it, for messages."""
    folder = Path(folder).resolve()
    with _GUARD:
        for held, lock in _HELD.items():
            if held == folder or held in folder.parents:
                lock.count += 1
                return Holding(lock)
        try:
            lock = _acquire(folder, command, shown or folder)
        except OSError as error:
            refused = fault(error, shown or folder, kept="Nothing was written",
                            within=(folder.parent, lock_file(folder)))
            if refused is None:
                raise
            raise FolderLockError(f"{refused} (outputs are built beside the folder, so {folder.parent} must be "
                                  "writable)") from None
        _HELD[folder] = lock
        return Holding(lock)
