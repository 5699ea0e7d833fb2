"""reasoncd.exits: every command ends a refused write with status 3 and a stop signal with 128 + its number, each
with one line that says what happened and where the outputs stand."""
import errno
import os
import signal
import sys

import pytest

from reasoncd import stopping
from reasoncd.exits import REFUSED, WRITE_REFUSED, run_command
from reasoncd.write_faults import fault


def test_the_work_s_own_status_is_the_command_s(capsys):
    assert run_command("demo.py", lambda: 0) == 0
    assert run_command("demo.py", lambda: REFUSED) == 2
    assert capsys.readouterr().err == ""


def test_a_refused_write_ends_with_status_3_and_its_message(capsys):
    def work():
        raise fault(OSError(errno.ENOSPC, "No space left on device"), "runs/eval", kept="runs/eval was left as it was")

    assert run_command("eval.py", work) == WRITE_REFUSED == 3
    err = capsys.readouterr().err
    assert err.startswith("eval.py: error: runs/eval: could not be written: the disk is full (")
    assert "runs/eval was left as it was" in err


def test_sigterm_ends_with_status_143_and_says_where_the_outputs_stand(capsys):
    def work():
        stopping.set_note("runs/eval was left as it was (outputs appear only when complete)")
        os.kill(os.getpid(), signal.SIGTERM)
        return 0

    before = signal.getsignal(signal.SIGTERM)
    assert run_command("eval.py", work) == 143
    assert capsys.readouterr().err == ("eval.py: stopped by SIGTERM: runs/eval was left as it was (outputs appear "
                                       "only when complete)\n")
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored for whatever runs next


def test_a_stop_before_any_output_says_so(capsys):
    def work():
        os.kill(os.getpid(), signal.SIGINT)
        return 0

    assert run_command("export.py", work) == 130
    assert capsys.readouterr().err == "export.py: stopped by SIGINT: nothing was written\n"


def _import_that_turns_the_stop_into_its_own_error():
    """As a pybind11 extension module does when the signal's exception is raised during its import."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
    except stopping.Stopped as stop:
        raise ImportError("initialization failed") from stop


def test_a_stop_that_a_library_turned_into_an_error_the_command_refuses_still_ends_as_stopped(capsys):
    def work():
        stopping.set_note("runs/eval was left as it was")
        try:
            _import_that_turns_the_stop_into_its_own_error()
        except ImportError as error:
            print(f"eval.py: error: {error}", file=sys.stderr)
            return REFUSED

    assert run_command("eval.py", work) == 143
    assert capsys.readouterr().err.endswith("eval.py: stopped by SIGTERM: runs/eval was left as it was\n")
    assert run_command("eval.py", lambda: REFUSED) == 2  # the next command starts with no stop on record


def test_a_stop_that_a_library_turned_into_an_uncaught_error_ends_as_stopped(capsys):
    assert run_command("export.py", _import_that_turns_the_stop_into_its_own_error) == 143
    assert capsys.readouterr().err == "export.py: stopped by SIGTERM: nothing was written\n"


def test_errors_without_a_stop_are_not_swallowed():
    def work():
        raise ImportError("no module named bitsandbytes")

    with pytest.raises(ImportError, match="bitsandbytes"):
        run_command("eval.py", work)


def test_a_stop_inside_a_logging_handlers_constructor_ends_without_a_traceback_at_exit(tmp_path):
    # Logging registers a handler before its constructor gives it a stream; a signal landing in between leaves one
    # that the interpreter's last flush cannot flush.
    import subprocess

    script = tmp_path / "command.py"
    script.write_text(
        "import logging, os, signal, sys\n"
        "from reasoncd.exits import run_command\n"
        "def work():\n"
        "    handler = logging.StreamHandler.__new__(logging.StreamHandler)\n"
        "    logging.Handler.__init__(handler)  # registered, no stream yet\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    handler.stream = sys.stderr\n"
        "    return 0\n"
        "sys.exit(run_command('export.py', work))\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=repo)
    assert done.returncode == 143
    assert done.stderr == "export.py: stopped by SIGTERM: nothing was written\n"
