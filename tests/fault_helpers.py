"""The machine failing around a correct command, for the fault tests: small and read-only file systems (tmpfs,
where this user may mount), a read-only folder, a disk that fills at a chosen write, a process holding a folder's
lock, and what commands may leave beside an output folder."""
import contextlib
import errno
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT, script_env
from reasoncd import write_faults


@functools.lru_cache(maxsize=1)
def _can_mount() -> str | None:
    """None when tmpfs can be mounted here, else why not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"reasoncd-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True)
        if done.returncode:
            return f"mount refused: {done.stderr.decode(errors='replace').strip()}"
        subprocess.run(["umount", str(probe)], check=True)
        return None
    finally:
        probe.rmdir()


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A tmpfs of `size` (e.g. "2m") mounted at `path` for the block; skips the test where that is impossible."""
    why = _can_mount()
    if why:
        pytest.skip(f"needs a small file system: {why}")
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0777" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, size: str) -> None:
    """A mounted tmpfs made `size` large (more space, as when a disk is cleaned up)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def fill_up(folder: Path, leave: int) -> Path:
    """A file that takes all but about `leave` bytes of the free space of `folder`'s file system."""
    filler = Path(folder) / "another job's file"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as handle:
        handle.truncate(0)
        handle.write(b"\0" * max(free - leave, 0))
    return filler


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder nothing can be written into: a read-only tmpfs as root (root ignores permissions), else a folder
    without write permission."""
    if os.geteuid() == 0:
        with tmpfs(path, "64k", read_only=True):
            yield path
        return
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


class DiskFills:
    """
    Makes the disk fill at the `at`-th call of `module.name` (a library's own writer): that call raises `error`
    (what the library raises on a full disk) and from then on the file system reports `free` bytes, as a full one
    does. `calls` counts every call; `filled` says whether it happened.
    """

    def __init__(self, monkeypatch, module, name: str, error: BaseException, at: int = 1, free: int = 512,
                 when=lambda *args, **kwargs: True):
        self.calls, self.filled, self.error, self.at = 0, False, error, at
        original = getattr(module, name)

        def writer(*args, **kwargs):
            if when(*args, **kwargs):
                self.calls += 1
                if self.calls == self.at:
                    self.filled = True
                    raise self.error
            return original(*args, **kwargs)

        real_free = write_faults.free_bytes
        monkeypatch.setattr(module, name, writer)
        monkeypatch.setattr(write_faults, "free_bytes", lambda path: free if self.filled else real_free(path))


def no_space() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def leftovers(parent: Path) -> list[str]:
    """What a command may leave beside its outputs while it runs (staging, trash, its lock): none after it ends."""
    return sorted(p.name for p in Path(parent).iterdir()
                  if p.name.startswith(".") and any(part in p.name for part in (".partial-", ".replaced-", ".lock",
                                                                                   ".removing-")))


def hold_lock_in_another_process(folder: Path, command: str = "eval.py") -> subprocess.Popen:
    """A second live process that takes `folder`'s lock as `command` and keeps it until its stdin closes."""
    code = ("import sys; from reasoncd.folder_lock import hold; held = hold(sys.argv[1], sys.argv[2]); "
            "print('held', flush=True); sys.stdin.read(); held.release()")
    process = subprocess.Popen([sys.executable, "-c", code, str(folder), command], cwd=REPO_ROOT, env=script_env(),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process
