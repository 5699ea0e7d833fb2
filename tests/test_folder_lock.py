"""reasoncd.folder_lock: one process at a time per folder. A live holder is named (process id, host, start time); a
lock its dead holder left is taken over; locks are shared within a process; the lock file goes with its holder."""
import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from fault_helpers import hold_lock_in_another_process, read_only_folder
from helpers import REPO_ROOT, script_env
from reasoncd.folder_lock import FolderLockError, hold, lock_file


def test_a_live_holder_refuses_the_folder_and_is_named(tmp_path):
    folder = tmp_path / "out"
    other = hold_lock_in_another_process(folder, "eval.py")
    try:
        record = json.loads(lock_file(folder).read_text())
        assert record["pid"] == other.pid and record["host"] == socket.gethostname()
        with pytest.raises(FolderLockError) as refused:
            hold(folder, "export.py", shown="runs/out")
        message = str(refused.value)
        assert message.startswith(f"runs/out is being written by another ReasonCD command: eval.py (process "
                                  f"{other.pid} on {socket.gethostname()}, started {record['started']})")
        assert str(lock_file(folder)) in message and "choose another output folder" in message
    finally:
        other.stdin.close()
        other.wait(timeout=30)
    # Once the holder has let go, the folder is free and its lock file gone.
    assert not lock_file(folder).exists()
    hold(folder, "export.py").release()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, capsys):
    folder = tmp_path / "out"
    other = hold_lock_in_another_process(folder, "eval.py")
    other.send_signal(signal.SIGKILL)
    other.wait(timeout=30)
    other.stdin.close()
    assert lock_file(folder).exists()  # a kill leaves the file, but not the kernel's lock
    held = hold(folder, "eval.py")
    assert (f"taking over the lock left by eval.py (process {other.pid} on {socket.gethostname()}"
            in capsys.readouterr().err)
    assert json.loads(lock_file(folder).read_text())["pid"] != other.pid
    held.release()
    assert not lock_file(folder).exists()


def test_a_stale_lock_file_naming_a_dead_process_is_taken_over(tmp_path, capsys):
    folder = tmp_path / "out"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    lock_file(folder).write_text(json.dumps({"command": "predict_scene.py", "pid": dead, "host": socket.gethostname(),
                                             "started": "2024-05-01T03:00:00+00:00"}))
    held = hold(folder, "predict_scene.py")
    assert (f"taking over the lock left by predict_scene.py (process {dead} on {socket.gethostname()}, started "
            "2024-05-01T03:00:00+00:00), which is no longer running" in capsys.readouterr().err)
    held.release()


def test_locks_are_shared_within_a_process_and_cover_the_folders_inside(tmp_path):
    run = tmp_path / "run"
    outer = hold(run, "train.py")
    inner = hold(run / "model", "train.py")  # train.py's model/ inside its own run folder
    again = hold(run, "train.py")
    assert not lock_file(run / "model").exists()
    outer.release()
    inner.release()
    assert lock_file(run).exists()  # one share is still held
    again.release()
    again.release()  # letting go twice does nothing
    assert not lock_file(run).exists()


def test_of_several_processes_starting_at_once_exactly_one_gets_the_folder(tmp_path):
    code = ("import sys, time; from reasoncd.folder_lock import FolderLockError, hold\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
            "try:\n    held = hold(sys.argv[1], 'eval.py')\nexcept FolderLockError:\n    print('refused')\n"
            "else:\n    print('held', flush=True); time.sleep(2); held.release()\n")
    start = time.time() + 1.5  # every process is started and waiting by then
    processes = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out"), str(start)], cwd=REPO_ROOT,
                                  env=script_env(), stdout=subprocess.PIPE, text=True) for _ in range(5)]
    outcomes = sorted(process.communicate(timeout=60)[0].strip() for process in processes)
    assert outcomes == ["held"] + ["refused"] * 4


def test_a_folder_beside_which_nothing_can_be_written_is_refused_plainly(tmp_path):
    with read_only_folder(tmp_path / "disk") as disk:
        with pytest.raises(FolderLockError) as refused:
            hold(disk / "out", "eval.py", shown="disk/out")
    message = str(refused.value)
    assert message.startswith("disk/out: could not be written: ")
    assert ("the file system is read-only" in message) or ("permission to write there is denied" in message)
    assert f"so {tmp_path / 'disk'} must be writable" in message
