"""Writing files and folders so that no reader sees half of them, and no command loses anyone's files.

Single files: `atomic_path` (a temporary name beside the target, renamed into place), used by `write_json_atomic`,
`write_png_atomic` and every other writer of one file (figures, feature cache, synthetic images, the marker).

Output folders: the one rule every command follows (`OutputDir`).

A command may write into
  * a new or empty folder;
  * a folder it wrote itself before, recognised by the marker file it leaves there (`.reasoncd-output.json`, which
    lists the entries each command wrote): its own earlier entries are replaced, anything else stays.
Everything else is refused before any work starts, with a message naming the path: an existing file, the current
directory (or a folder above it), a folder that holds the command's own inputs, a folder holding files the command
did not write. `--overwrite` lifts the last three refusals, and even then only entries with the names the command
writes are replaced; other files, entries another ReasonCD command recorded, and the command's inputs are never
touched.

Outputs are built in a hidden folder beside the target (`.NAME.partial-*`) and put in place at the end: a new
folder by one rename, an existing one entry by entry, so a failed run leaves the folder as it was.

    output = OutputDir(args.output_dir, "eval.py", inputs=[args.model, args.data], overwrite=args.overwrite)
    ...                                   # the expensive work; `output` has already refused a bad folder
    with output.staged() as staging:
        (staging / "metrics.json").write_text(...)

Commands that write as they go (train.py) call `claim()` instead of `staged()`. Long commands that can continue an
interrupted run (predict_scene.py) call `resumable(signature)`: its work folder (`.NAME.resume`) outlives a failure,
and the next run with the same signature continues in it.

Faults around a correct command: an OutputDir takes the folder's lock as soon as it is checked (one command per
folder, reasoncd/folder_lock.py; `staged` and `resumable` let go of it when they end, `with OutputDir(...) as
output:` or `release()` otherwise), which also finds a destination that cannot be written before any work; a refused write (full disk, quota, read-only) is raised as a
WriteFault saying what was kept (reasoncd/write_faults.py); putting outputs in place is never cut in half by SIGTERM
(reasoncd/stopping.py).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Iterator

from reasoncd import folder_lock, stopping
from reasoncd.write_faults import fault, folder_bytes, free_bytes, translated

MARKER = ".reasoncd-output.json"
RESUME_RECORD = "run.json"  # in a resumable work folder: the command and signature of the run it belongs to
MAX_SHOWN = 6  # entry names listed in a message before "..."


class OutputDirError(ValueError):
    """An output folder a command must not write to; the message names the path and the way out."""


# ------------------------------------------------------------------------------------------------- single files


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary path beside `path` (hidden, same suffix) to write to; renamed onto `path` when the block ends
    without an error, removed otherwise. Parent folders are created. A reader sees the old file or the new one,
    never half of one. The file gets the permissions of any newly created file (0666 less the umask), not the
    owner-only mode of a temporary file, which a rename would keep."""
    path = Path(path)
    kept = f"{path} was left as it was" if path.exists() else "No part of it was kept"
    temporary = None
    try:
        with translated(path, kept=kept, within=(path.parent,),
                        measure=lambda: folder_bytes(temporary) if temporary else 0):
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.partial-",
                                                 suffix=path.suffix)
            os.close(handle)
            os.chmod(temporary, 0o666 & ~_umask())
            yield Path(temporary)
            os.replace(temporary, path)
    except BaseException:
        if temporary:
            Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask: from /proc where there is one (reading it with os.umask means setting it, which another
    thread could see for an instant)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomic(path, data) -> None:
    """JSON (indented, numpy numbers as floats) written all at once."""
    write_text_atomic(path, json.dumps(data, indent=2, default=float) + "\n")


def write_png_atomic(path, array, compress_level: int = 6) -> None:
    """Write an array as PNG all at once.

    bool masks are written as 0/255 grayscale; uint8 (H, W), (H, W, 3) and (H, W, 4) as L, RGB and RGBA; uint16
    (H, W) as 16-bit grayscale. Parent folders are created.
    """
    import numpy as np
    from PIL import Image

    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    supported = (array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)))) or (
        array.dtype == np.uint16 and array.ndim == 2
    )
    if not supported:
        raise ValueError(f"{path}: cannot write a {array.dtype} array of shape {array.shape} as PNG")
    with atomic_path(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG", compress_level=compress_level)


def check_file_destination(path, flag: str) -> None:
    """Refuse (OutputDirError), before any work, a file destination whose folder cannot be written: a file is
    created there and removed again, which a read-only file system or a missing permission refuses."""
    path = Path(path)
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.stem}.probe-"):
            pass
    except OSError as error:
        refused = fault(error, path, kept="Nothing was written", within=(folder,))
        if refused is None:
            raise
        raise OutputDirError(f"{flag} {refused}") from None


# ------------------------------------------------------------------------------------------------ output folders


def _shown(names) -> str:
    names = sorted(names)
    return ", ".join(names[:MAX_SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > MAX_SHOWN else "")


def read_marker(folder: Path) -> dict[str, list[str]]:
    """{command: entries it wrote} from the folder's marker; empty when there is none or it cannot be read (then
    nothing in the folder counts as any command's own)."""
    try:
        outputs = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8")).get("outputs", {})
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(outputs, dict):
        return {}
    return {str(k): [str(e) for e in v] for k, v in outputs.items() if isinstance(v, list)}


def _free_name(path: Path) -> Path:
    """`path`, or `path.1`, `path.2`, ...: the first that does not exist."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.{number}")
    return candidate


def record_outputs(folder: Path, command: str, entries) -> None:
    """Adds `entries` of `folder` to what its marker says `command` wrote (for writers that fill a folder in place)."""
    recorded = read_marker(folder)
    recorded[command] = sorted(set(recorded.get(command, ())) | set(entries))
    _write_marker(Path(folder), recorded)


def written_only_by(folder: Path, commands) -> bool:
    """Whether the marker of `folder` accounts for every entry in it, all written by one of `commands` (then the
    whole folder is theirs to delete)."""
    folder = Path(folder)
    recorded = read_marker(folder)
    own = {name for command in commands for name in recorded.get(command, ())}
    present = {p.name for p in folder.iterdir()} - {MARKER} if folder.is_dir() else set()
    return bool(own) and set(recorded) <= set(commands) and present <= own


def _remove(folder: Path) -> None:
    """Delete a folder of this command's: renamed away first, so a kill never leaves it half-deleted under its name."""
    trash = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f"{folder.name}.removing-"))
    os.replace(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)


def _new_resume_folder(folder: Path, wanted: dict) -> None:
    """A resumable work folder with its record, made whole beside and renamed into place: it never exists without
    the record that says whose it is."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f"{folder.name}.partial-"))
    try:
        (building / "work").mkdir()
        write_text_atomic(building / RESUME_RECORD, json.dumps(wanted, indent=2, sort_keys=True) + "\n")
        os.replace(building, folder)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _write_marker(folder: Path, outputs: dict[str, list[str]]) -> None:
    text = json.dumps({"about": "Entries that ReasonCD commands wrote here and may replace on their next run; "
                                "they leave every other file alone.",
                       "outputs": {command: sorted(entries) for command, entries in sorted(outputs.items())}},
                      indent=2) + "\n"
    write_text_atomic(folder / MARKER, text)


class OutputDir:
    """An output folder checked against the rule (see the module docstring) as soon as it is created.

    path: the folder as the user gave it (messages quote it so).
    command: what the marker records, e.g. "eval.py" or "prepare_data.py folder".
    inputs: files and folders the command reads; none of them may be inside the folder (without --overwrite) or
        inside anything it replaces (ever).
    entries: the names the command will write, when known beforehand: clashes are then reported before the work.
    """

    def __init__(self, path, command: str, *, inputs=(), overwrite: bool = False, entries=(), lock: bool = True):
        self.given = Path(path)
        self.path = self.given.resolve()
        self.command = command
        self.overwrite = overwrite
        self.inputs = [Path(p).resolve() for p in inputs if p is not None]
        self.entries = set(entries)
        self.check()
        self._release = lambda: None
        if lock:  # lock=False: a process of a distributed launch other than the one that writes
            try:
                # A stop while the lock is being taken acts once its release is registered: no lock file is left.
                with stopping.deferred():
                    holding = self._lock()
                    self._release = weakref.finalize(self, holding.release)
            except BaseException:
                self.release()
                raise
        try:
            self.check()  # again, now that no other command can be changing the folder
        except BaseException:
            self.release()
            raise

    def _lock(self) -> folder_lock.Holding:
        """The folder's lock (reasoncd/folder_lock.py); creating it is also the first write beside the folder, so
        a destination that cannot be written is refused here, before any work."""
        try:
            return folder_lock.hold(self.path, self.command, self.given)
        except folder_lock.FolderLockError as error:
            raise OutputDirError(str(error)) from None

    def release(self) -> None:
        """Let go of the folder's lock (also done when the object is collected, and at exit)."""
        self._release()

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    # --- the rule -------------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse a target the command must not write (raises OutputDirError); nothing is created here."""
        given, path = self.given, self.path
        if self.given.is_symlink() and not self.given.exists():
            raise OutputDirError(f"{given} is a link to nothing: give a folder path for the outputs")
        if path.exists() and not path.is_dir():
            raise OutputDirError(f"{given} is a file, not a folder: give a new folder path for the outputs "
                                 "(the file was left as it is)")
        if path.is_dir() and not os.access(path, os.W_OK):  # read-only file system, or no permission
            raise OutputDirError(f"{given} cannot be written (a read-only file system, or no permission to write "
                                 "there): choose an output folder you can write to")
        if not self.overwrite:
            cwd = Path.cwd().resolve()
            if path == cwd or path in cwd.parents:
                raise OutputDirError(f"{given} is the current directory{'' if path == cwd else ' (or holds it)'}: "
                                     "write the outputs into a new folder, or pass --overwrite to add them here "
                                     "(only this command's outputs are replaced)")
            held = [p for p in self.inputs if p == path or path in p.parents]
            if held:
                raise OutputDirError(f"{given} holds this command's input {held[0]}: choose another output folder, "
                                     "or pass --overwrite to write beside it (inputs are never replaced)")
        if path.is_dir():
            others = self._existing()
            recorded = read_marker(path)
            if others and self.command not in recorded and not self.overwrite:
                writers = sorted(c for c in recorded if set(recorded[c]) & others)
                whose = f" ({' and '.join(writers)} output)" if writers else ""
                raise OutputDirError(
                    f"{given} already holds files that {self.command} did not write{whose}: {_shown(others)}. "
                    f"Choose a new or empty folder, or pass --overwrite to write {self.command}'s outputs there "
                    "(files of other names are kept)")
        if self.entries:
            self._plan(self.entries)

    def _existing(self) -> set[str]:
        return {p.name for p in self.path.iterdir()} - {MARKER} if self.path.is_dir() else set()

    def _plan(self, names: set[str]) -> tuple[list[str], list[str]]:
        """(entries that new ones of the same name replace, own earlier entries no longer written); raises when
        one of them is not the command's to replace."""
        existing = self._existing()
        recorded = read_marker(self.path)
        own = set(recorded.get(self.command, ()))
        foreign = {name: command for command, entries in recorded.items() if command != self.command
                   for name in entries}
        replaced = sorted(names & existing)
        dropped = sorted((own - names) & existing)
        blocked = [f"{name} ({foreign[name]}'s output)" if name in foreign else name
                   for name in replaced if name not in own and (name in foreign or not self.overwrite)]
        if blocked:
            hint = "" if self.overwrite else " (--overwrite replaces entries that no other command recorded)"
            raise OutputDirError(f"{self.given}: {_shown(blocked)} already exist and {self.command} did not write "
                                 f"them: choose another output folder{hint}")
        cwd = Path.cwd().resolve()
        for name in replaced + dropped:
            target = self.path / name
            # An input is hit when it is the entry, lies inside it, or is the output folder itself (then every
            # entry is part of the input); an input folder that merely holds the output folder is not.
            hit = [p for p in self.inputs if p == target or target in p.parents or p == self.path]
            hit += [cwd] if cwd == target or target in cwd.parents else []
            if hit:
                where = "it is" if hit[0] == target else "it is part of" if hit[0] == self.path else "it holds"
                raise OutputDirError(f"{target} would be replaced, but {where} {hit[0]}, which this command reads "
                                     "or runs in: choose another output folder")
        return replaced, dropped

    # --- writing --------------------------------------------------------------------------------------------------
    def _as_it_was(self) -> str:
        return f"{self.given} was left as it was" if self.path.exists() else f"Nothing was put at {self.given}"

    @contextlib.contextmanager
    def staged(self, needed: int | None = None):
        """A hidden folder beside the target to write the outputs into; put in place when the block succeeds,
        removed when it fails; the folder's lock is let go either way. A refused write in the block is a WriteFault
        about the target (`needed`: the bytes the outputs take, when known)."""
        kept = f"{self._as_it_was()}, and the partial outputs were removed"
        staging = None
        try:
            with translated(self.given, kept=kept, needed=needed, within=(self.path.parent, self.path),
                            measure=lambda: folder_bytes(staging) if staging else 0):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                free = free_bytes(self.path.parent)
                if needed and free is not None and free < needed:  # refused before anything is written
                    raise OSError(errno.ENOSPC, "not enough free space for the outputs")
                staging = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.partial-"))
                os.chmod(staging, 0o777 & ~_umask())  # it becomes the output folder: a new folder's mode
                stopping.set_note(f"{self._as_it_was()} (outputs appear only when complete)")
                yield staging
                self._commit(staging)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            self.release()  # the outputs are in place (or the folder as it was): the command is done with it

    @contextlib.contextmanager
    def resumable(self, signature: dict):
        """
        Like `staged`, for a long command that can continue where an interrupted run stopped. Yields `(work,
        outputs)`: scratch files and progress go to `work`, the entries to put in place to `outputs` (emptied at
        every start). Both live in `.NAME.resume` beside the target, which is kept when the block fails; the next
        run whose `signature` (the JSON-able inputs and settings that decide the outputs) is the same gets `work`
        back as it was left. A folder
        left by a run with another signature is emptied first; one without this command's own record is never
        touched (an error). Removed once the outputs are in place. The folder's lock is let go at the end.
        """
        folder = self.path.parent / f".{self.path.name}.resume"
        record = folder / RESUME_RECORD
        wanted = {"command": self.command, "signature": signature}
        if folder.exists():
            try:
                found = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise OutputDirError(f"{folder} exists but was not left by an interrupted {self.command} run (no "
                                     f"readable {RESUME_RECORD}): move it away, or remove it if it is not yours")
            if found != wanted:
                owner = found.get("command") if isinstance(found, dict) else None
                if owner != self.command:
                    raise OutputDirError(f"{folder} was left by {owner or 'another program'}, not {self.command}: "
                                         "move it away, or remove it if it is not needed")
                _remove(folder)  # an interrupted run of this command with other inputs or settings
        kept = (f"{self._as_it_was()}; the finished tiles are kept in {folder}, and running the same command again "
                "continues from them")
        try:
            with translated(self.given, kept=kept, within=(self.path.parent, self.path)):
                try:
                    if not folder.exists():
                        _new_resume_folder(folder, wanted)
                    shutil.rmtree(folder / "outputs", ignore_errors=True)  # half-written when the last run stopped
                    (folder / "outputs").mkdir()
                    stopping.set_note(kept)
                    yield folder / "work", folder / "outputs"
                    self._commit(folder / "outputs")
                except BaseException:
                    shutil.rmtree(folder / "outputs", ignore_errors=True)  # rebuilt by the next run; frees the space
                    raise
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            self.release()

    def _commit(self, staging: Path) -> None:
        names = {p.name for p in staging.iterdir()}
        with stopping.deferred():  # a stop signal waits until the outputs are in place (or the old ones back)
            if not self.path.exists():
                _write_marker(staging, {self.command: sorted(names)})
                os.replace(staging, self.path)
            else:
                self.check()  # the folder may have changed while the command worked
                replaced, dropped = self._plan(names)
                self._swap(staging, names, replaced + dropped)
            stopping.set_note(f"the outputs in {self.given} are complete")

    def _swap(self, staging: Path | None, names: set[str], retire: list[str]) -> None:
        """
        Move `retire` out of the folder, the staged `names` in, record them; undone if a move fails. Only the
        command's own earlier entries are deleted; an entry it did not record (one that `--overwrite` lets it
        replace) is kept beside, as `NAME.before-overwrite` (numbered if that exists).
        """
        own = set(read_marker(self.path).get(self.command, ()))
        trash = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.replaced-"))
        retired, placed, kept = [], [], []
        try:
            for name in retire:
                if name in own:
                    os.replace(self.path / name, trash / name)
                    retired.append(name)
                else:
                    aside = _free_name(self.path / f"{name}.before-overwrite")
                    os.replace(self.path / name, aside)
                    kept.append((name, aside))
            for name in sorted(names) if staging else []:
                os.replace(staging / name, self.path / name)
                placed.append(name)
            recorded = read_marker(self.path)
            recorded[self.command] = sorted(names)
            _write_marker(self.path, recorded)
        except BaseException:
            for name in placed:
                os.replace(self.path / name, staging / name)
            for name in retired:
                os.replace(trash / name, self.path / name)
            for name, aside in kept:
                os.replace(aside, self.path / name)
            raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)

    def claim(self, *, start_over: bool) -> None:
        """For a command that writes into the folder as it goes: create it and record `entries` as the command's.
        `start_over` first removes the command's earlier entries (those that `check` allowed it to replace)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.check()
        replaced, dropped = self._plan(self.entries)
        with stopping.deferred():
            self._swap(None, self.entries, replaced + dropped if start_over else [])
