"""Stopping a command cleanly on SIGTERM (a scheduler's time limit, `kill`) or Ctrl-C.

Python's default for SIGTERM ends the process on the spot: no `finally` runs, so half-built outputs stay behind as
hidden folders and the exit status says nothing. Under `stoppable()`, the signal raises `Stopped` where the
command happens to be: a SystemExit with status 128 + the signal's number (143 for SIGTERM, 130 for Ctrl-C), so
every clean-up on the way out runs. A staged output folder is removed and the target stays as it was; a scene's
finished tiles stay for the next run (reasoncd/io.py). Steps that must not be cut in half (putting outputs in
place) run under `deferred()`: a signal that arrives there is acted on once they are done. Further signals while
the command is already stopping are ignored, so that its clean-up is not cut short either.

A library may catch the `Stopped` raised inside its own code and raise an error of its own instead (pybind11 turns
any exception during an extension module's import into "ImportError: initialization failed"), which the command may
then refuse as bad input. `raised()` keeps the stop that was raised, so the command still ends as stopped.

`note()` says, for the stop message, where the outputs stand; reasoncd/io.py keeps it up to date.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)
NOTHING_WRITTEN = "nothing was written"

_state = {"deferring": 0, "pending": None, "stopping": False, "raised": None, "installed": 0, "note": NOTHING_WRITTEN}


class Stopped(SystemExit):
    """Raised by the signal handler; `code` is the exit status (128 + the signal's number)."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


def _handle(signum, frame) -> None:
    if _state["stopping"]:
        return  # already on the way out: let the clean-up finish
    if _state["deferring"]:
        _state["pending"] = signum
        return
    _state.update(stopping=True, raised=Stopped(signum))
    raise _state["raised"]


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """SIGTERM and SIGINT raise `Stopped` inside the block (main thread only: elsewhere signals cannot be
    handled); the previous handlers come back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handle) for sig in SIGNALS}
    _state.update(installed=_state["installed"] + 1, stopping=False, pending=None, raised=None, note=NOTHING_WRITTEN)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _state.update(installed=_state["installed"] - 1, stopping=False, pending=None, raised=None)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal arriving inside the block takes effect when the block ends (on its way out if it failed)."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
        signum = _state["pending"]
        if not _state["deferring"] and signum is not None and _state["installed"]:
            _state.update(pending=None, stopping=True, raised=Stopped(signum))
            raise _state["raised"]


def raised() -> Stopped | None:
    """The stop raised inside the current `stoppable()` block, whatever became of it on its way out."""
    return _state["raised"]


def set_note(text: str) -> None:
    """What the stop message says about the outputs, from now on."""
    _state["note"] = text


def note() -> str:
    return _state["note"]
