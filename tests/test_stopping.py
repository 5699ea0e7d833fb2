"""reasoncd.stopping: SIGTERM and Ctrl-C become a clean exit (clean-ups run, status 128 + the signal), steps that
must not be cut in half finish first, and a second signal does not cut the clean-up short."""
import os
import signal

import pytest

from reasoncd import stopping
from reasoncd.stopping import Stopped, deferred, stoppable


def test_sigterm_raises_stopped_where_the_command_is_and_clean_ups_run():
    cleaned = []
    with pytest.raises(Stopped) as stopped:
        with stoppable():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                cleaned.append("not reached")
            finally:
                cleaned.append("clean-up")
    assert cleaned == ["clean-up"]
    assert stopped.value.code == 143 and stopped.value.name == "SIGTERM"
    assert isinstance(stopped.value, SystemExit)  # uncaught, it ends the process with that status


def test_ctrl_c_is_a_stop_with_status_130():
    with pytest.raises(Stopped) as stopped:
        with stoppable():
            os.kill(os.getpid(), signal.SIGINT)
    assert stopped.value.code == 130 and stopped.value.name == "SIGINT"


def test_the_previous_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with stoppable():
        assert signal.getsignal(signal.SIGTERM) is not before[0]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_deferred_step_finishes_before_the_stop():
    steps = []
    with pytest.raises(Stopped):
        with stoppable():
            with deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("first half")
                steps.append("second half")
            steps.append("after the step")
    assert steps == ["first half", "second half"]


def test_nested_deferred_steps_stop_after_the_outermost():
    steps = []
    with pytest.raises(Stopped):
        with stoppable():
            with deferred():
                with deferred():
                    os.kill(os.getpid(), signal.SIGTERM)
                steps.append("rest of the outer step")
    assert steps == ["rest of the outer step"]


def test_further_signals_do_not_cut_the_clean_up_short():
    cleaned = []
    with pytest.raises(Stopped) as stopped:
        with stoppable():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # the scheduler (or the user) insists
                cleaned.append("clean-up finished")
    assert cleaned == ["clean-up finished"] and stopped.value.name == "SIGTERM"


def test_deferred_outside_a_stoppable_command_changes_nothing():
    with deferred():
        pass  # no handler installed: nothing pending, nothing raised


def test_the_note_says_where_the_outputs_stand():
    with stoppable():
        assert stopping.note() == stopping.NOTHING_WRITTEN
        stopping.set_note("runs/eval was left as it was")
        assert stopping.note() == "runs/eval was left as it was"
    with stoppable():
        assert stopping.note() == stopping.NOTHING_WRITTEN  # each command starts afresh
