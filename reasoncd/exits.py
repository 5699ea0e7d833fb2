"""How a command ends when the machine, not the input, stops it, and the exit statuses every command shares.

    0    done
    2    refused: a bad argument or input, an output folder it may not write, or one another live command is
         writing; said before any work, nothing written
    3    a write was refused (full disk, quota, read-only file system, permission): what was there before is
         intact and the message says what was kept (reasoncd/write_faults.py)
    128+N  stopped by signal N, cleanly (143 SIGTERM, 130 Ctrl-C; reasoncd/stopping.py)

    def main(argv=None) -> int:
        args = parse_args(argv)
        return run_command("eval.py", lambda: work(args))
"""
from __future__ import annotations

import atexit
import logging
import sys
from typing import Callable

from reasoncd.stopping import note, raised, stoppable
from reasoncd.write_faults import WriteFault

REFUSED = 2
WRITE_REFUSED = 3


def run_command(command: str, work: Callable[[], int]) -> int:
    """`work()`'s status; a refused write or a stop signal in it ends the command with its message and status. A
    stop counts even where a library turned it into an error of its own (reasoncd/stopping.py)."""
    with stoppable():
        try:
            status = work()
        except WriteFault as error:
            if raised() is None:
                print(f"{command}: error: {error}", file=sys.stderr)
                return WRITE_REFUSED
        except BaseException:  # a stop, as such or as whatever a library made of it
            if raised() is None:
                raise
        stop = raised()
        if stop is None:
            return status
        # The signal may have landed inside a logging handler's constructor, which registers the handler before
        # giving it a stream: the interpreter's last flush of it (logging's own exit hook, registered earlier, so
        # run after this one) would end a clean stop with a traceback.
        atexit.register(setattr, logging, "raiseExceptions", False)
        print(f"{command}: stopped by {stop.name}: {note()}", file=sys.stderr)
        return stop.code
