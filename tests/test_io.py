"""reasoncd.io: the one rule of every command's output folder, checked on its own."""
import json
import os
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fault_helpers import DiskFills, hold_lock_in_another_process, leftovers, no_space, read_only_folder
from reasoncd import io as io_module
from reasoncd.io import MARKER, OutputDir, OutputDirError, read_marker, record_outputs, written_only_by
from reasoncd.stopping import Stopped, stoppable
from reasoncd.write_faults import WriteFault


def write(output: OutputDir, files: dict[str, str]) -> None:
    with output.staged() as staging:
        for name, text in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text)


def snapshot(folder) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), the marker aside."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


def no_leftovers(parent) -> bool:
    return not leftovers(parent)


def test_a_new_folder_is_written_whole_with_a_marker(tmp_path):
    out = tmp_path / "deep" / "out"
    write(OutputDir(out, "demo.py"), {"a.txt": "1", "sub/b.txt": "2"})
    assert snapshot(out) == {"a.txt": b"1", "sub/b.txt": b"2"}
    assert read_marker(out) == {"demo.py": ["a.txt", "sub"]}
    assert no_leftovers(out.parent)


def test_an_empty_folder_is_written(tmp_path):
    (tmp_path / "out").mkdir()
    write(OutputDir(tmp_path / "out", "demo.py"), {"a.txt": "1"})
    assert snapshot(tmp_path / "out") == {"a.txt": b"1"}


def test_own_earlier_output_is_replaced_and_other_files_kept(tmp_path):
    out = tmp_path / "out"
    write(OutputDir(out, "demo.py"), {"a.txt": "old", "stale.txt": "old"})
    (out / "notes.txt").write_text("mine")  # added by the user afterwards
    write(OutputDir(out, "demo.py"), {"a.txt": "new"})
    # stale.txt was demo.py's own and is not written any more: gone; the user's notes stay.
    assert snapshot(out) == {"a.txt": b"new", "notes.txt": b"mine"}
    assert read_marker(out) == {"demo.py": ["a.txt"]}
    assert no_leftovers(tmp_path)


def test_a_folder_with_other_files_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=f"{out} already holds files that demo.py did not write: notes.txt"):
        OutputDir(out, "demo.py")
    assert snapshot(out) == {"notes.txt": b"mine"} and not (out / MARKER).exists()


def test_overwrite_writes_beside_other_files_and_never_over_another_commands(tmp_path):
    out = tmp_path / "out"
    write(OutputDir(out, "train.py"), {"metrics.json": "trained", "model.bin": "weights"})
    (out / "notes.txt").write_text("mine")
    (out / "report.md").write_text("an old report the user made by hand")
    with pytest.raises(OutputDirError, match="train.py output"):
        OutputDir(out, "eval.py")
    # eval.py's metrics.json would replace train.py's: refused even with --overwrite.
    with pytest.raises(OutputDirError, match=r"metrics.json \(train.py's output\)"):
        OutputDir(out, "eval.py", overwrite=True, entries={"metrics.json"})
    with pytest.raises(OutputDirError, match=r"metrics.json \(train.py's output\)"):
        write(OutputDir(out, "eval.py", overwrite=True), {"metrics.json": "evaluated"})
    assert snapshot(out)["metrics.json"] == b"trained"
    # With --overwrite a user's file of an output's name gives way, kept beside it; everything else stays.
    write(OutputDir(out, "eval.py", overwrite=True), {"report.md": "evaluated", "per_sample.json": "[]"})
    assert snapshot(out) == {"metrics.json": b"trained", "model.bin": b"weights", "notes.txt": b"mine",
                             "report.md": b"evaluated", "per_sample.json": b"[]",
                             "report.md.before-overwrite": b"an old report the user made by hand"}
    assert read_marker(out) == {"train.py": ["metrics.json", "model.bin"], "eval.py": ["per_sample.json", "report.md"]}
    # Without --overwrite a name the user wrote is never replaced, even in a folder the command wrote before.
    (out / "panels").mkdir()
    with pytest.raises(OutputDirError, match="panels already exist and eval.py did not write them"):
        write(OutputDir(out, "eval.py"), {"report.md": "again", "panels": ""})
    assert snapshot(out)["report.md"] == b"evaluated" and no_leftovers(tmp_path)


def test_an_existing_file_is_refused_even_with_overwrite(tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputDirError, match=f"{path} is a file, not a folder"):
            OutputDir(path, "demo.py", overwrite=overwrite)
    assert path.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_the_current_directory_is_refused(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for path in (".", "..", str(tmp_path / "work")):
        with pytest.raises(OutputDirError, match="is the current directory"):
            OutputDir(path, "demo.py")
    # With --overwrite the outputs go in beside everything else, and an entry holding the current directory is
    # never replaced.
    write(OutputDir(".", "demo.py", overwrite=True), {"a.txt": "1"})
    assert (tmp_path / "work" / "a.txt").read_text() == "1"
    with pytest.raises(OutputDirError, match="which this command reads or runs in"):
        write(OutputDir("..", "demo.py", overwrite=True), {"work": "a file where the folder was"})
    assert (tmp_path / "work").is_dir() and os.getcwd() == str(tmp_path / "work")


def test_a_folder_holding_the_inputs_is_refused(tmp_path):
    out = tmp_path / "run"
    data = out / "data"
    data.mkdir(parents=True)
    (data / "x.json").write_text("{}")
    for target in (out, data):
        with pytest.raises(OutputDirError, match=f"holds this command's input {data}"):
            OutputDir(target, "demo.py", inputs=[data])
    # --overwrite writes beside the input, but never replaces it (or anything inside the input folder).
    with pytest.raises(OutputDirError, match=f"{data} would be replaced"):
        write(OutputDir(out, "demo.py", inputs=[data], overwrite=True), {"data": "x"})
    with pytest.raises(OutputDirError, match="would be replaced, but it is part of"):
        write(OutputDir(data, "demo.py", inputs=[data], overwrite=True), {"x.json": "[]"})
    write(OutputDir(out, "demo.py", inputs=[data], overwrite=True), {"metrics.json": "{}"})
    assert snapshot(out) == {"data/x.json": b"{}", "metrics.json": b"{}"}
    # An output folder inside an input folder is fine: nothing of the input is touched.
    write(OutputDir(data / "eval", "demo.py", inputs=[data]), {"a.txt": "1"})
    write(OutputDir(data / "eval", "demo.py", inputs=[data]), {"a.txt": "2"})
    assert (data / "eval" / "a.txt").read_text() == "2" and (data / "x.json").read_text() == "{}"


def test_a_failed_block_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    write(OutputDir(out, "demo.py"), {"a.txt": "old"})
    before = snapshot(out)
    with pytest.raises(RuntimeError):
        with OutputDir(out, "demo.py").staged() as staging:
            (staging / "a.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert snapshot(out) == before and no_leftovers(tmp_path)
    with pytest.raises(RuntimeError):
        with OutputDir(tmp_path / "new", "demo.py").staged():
            raise RuntimeError("interrupted")
    assert not (tmp_path / "new").exists() and no_leftovers(tmp_path)


def test_a_damaged_marker_makes_nothing_the_commands_own(tmp_path):
    out = tmp_path / "out"
    write(OutputDir(out, "demo.py"), {"a.txt": "1"})
    (out / MARKER).write_text("{not json")
    with pytest.raises(OutputDirError, match="did not write"):
        OutputDir(out, "demo.py")
    assert (out / "a.txt").read_text() == "1"


def test_claim_records_a_folder_written_as_the_command_goes(tmp_path):
    out = tmp_path / "run"
    entries = ("checkpoints", "model", "metrics.json")
    OutputDir(out, "train.py", entries=entries).claim(start_over=True)
    assert read_marker(out) == {"train.py": sorted(entries)}
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "checkpoint-2").mkdir()
    (out / "notes.txt").write_text("mine")
    OutputDir(out, "train.py", entries=entries).claim(start_over=False)  # resuming keeps the checkpoints
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    OutputDir(out, "train.py", entries=entries).claim(start_over=True)  # starting over removes them, only them
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "notes.txt"]
    assert json.loads((out / MARKER).read_text())["outputs"] == {"train.py": sorted(entries)}
    assert no_leftovers(tmp_path)


def test_only_a_folder_whose_marker_accounts_for_everything_counts_as_written_by_a_command(tmp_path):
    cache = tmp_path / "second-3-seed0"
    for name in ("im1", "im2"):
        (cache / name).mkdir(parents=True)
    assert not written_only_by(cache, ["generator"])  # no marker: could be anyone's
    record_outputs(cache, "generator", ["im1", "im2"])
    assert written_only_by(cache, ["generator"]) and not written_only_by(cache, ["converter"])
    (cache / "notes.txt").write_text("mine")
    assert not written_only_by(cache, ["generator"])  # a file nobody recorded


def test_a_resumable_run_keeps_its_work_when_interrupted_and_continues_with_the_same_signature(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with OutputDir(out, "demo.py").resumable({"input": "a"}) as (work, outputs):
            (work / "step-1").write_text("done")
            (outputs / "result.txt").write_text("half")
            (outputs / ".half-written").write_text("")
            raise RuntimeError("interrupted")
    assert not out.exists() and (tmp_path / ".out.resume" / "work" / "step-1").is_file()

    with OutputDir(out, "demo.py").resumable({"input": "a"}) as (work, outputs):
        assert (work / "step-1").read_text() == "done"  # the same signature gets the earlier work back
        assert not list(outputs.iterdir())  # but not the outputs it had begun
        (outputs / "result.txt").write_text("whole")
    assert snapshot(out) == {"result.txt": b"whole"} and read_marker(out) == {"demo.py": ["result.txt"]}
    assert not (tmp_path / ".out.resume").exists()

    with pytest.raises(RuntimeError):
        with OutputDir(out, "demo.py").resumable({"input": "a"}) as (work, _):
            (work / "step-1").write_text("done")
            raise RuntimeError("interrupted")
    with OutputDir(out, "demo.py").resumable({"input": "b"}) as (work, outputs):
        assert not (work / "step-1").exists()  # other inputs: the earlier work is not reused
        (outputs / "result.txt").write_text("from b")
    assert snapshot(out) == {"result.txt": b"from b"}


def test_a_resume_folder_the_command_did_not_leave_is_never_touched(tmp_path):
    foreign = tmp_path / ".out.resume"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not left by an interrupted demo.py run"):
        with OutputDir(tmp_path / "out", "demo.py").resumable({"input": "a"}):
            pass
    (foreign / "run.json").write_text(json.dumps({"command": "other.py", "signature": {}}))
    with pytest.raises(OutputDirError, match="left by other.py"):
        with OutputDir(tmp_path / "out", "demo.py").resumable({"input": "a"}):
            pass
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_and_folders_get_the_users_umask_not_a_temporary_files_mode(tmp_path, umask):
    from reasoncd.io import write_json_atomic, write_png_atomic

    previous = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "summary.json", {"a": 1})
        write_png_atomic(tmp_path / "mask.png", np.zeros((4, 4), bool))
        output = OutputDir(tmp_path / "out", "eval.py")
        with output.staged() as staging:
            (staging / "metrics.json").write_text("{}")
    finally:
        os.umask(previous)
    for path in (tmp_path / "summary.json", tmp_path / "mask.png", tmp_path / "out" / "metrics.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask


# ----------------------------------------------------------------------------------- faults around a correct command


def test_a_full_disk_while_writing_leaves_the_earlier_outputs_and_says_so(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write(OutputDir(out, "demo.py"), {"a.txt": "old"})
    before = snapshot(out)
    with pytest.raises(WriteFault) as refused:
        with OutputDir(out, "demo.py").staged() as staging:
            (staging / "a.txt").write_text("x" * 5000)
            raise no_space()  # the next write finds the disk full
    message = str(refused.value)
    assert message.startswith(f"{out}: could not be written: the disk is full (")
    assert "at least 5.0 kB needed" in message and f"{out} was left as it was, and the partial outputs were " \
                                                     "removed" in message
    assert snapshot(out) == before and not leftovers(tmp_path)
    write(OutputDir(out, "demo.py"), {"a.txt": "new"})  # once there is space, the same command starts cleanly
    assert snapshot(out) == {"a.txt": b"new"}


def test_a_full_disk_while_putting_outputs_in_place_undoes_the_swap(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write(OutputDir(out, "demo.py"), {"a.txt": "old", "b.txt": "old"})
    before = snapshot(out)
    # The second entry's rename into the folder fails (a directory that cannot grow, say).
    DiskFills(monkeypatch, io_module.os, "replace", no_space(), at=2,
              when=lambda source, target: Path(target).parent == out)
    with pytest.raises(WriteFault, match="the disk is full"):
        write(OutputDir(out, "demo.py"), {"a.txt": "new", "b.txt": "new"})
    assert snapshot(out) == before and read_marker(out) == {"demo.py": ["a.txt", "b.txt"]}
    assert not leftovers(tmp_path)


def test_outputs_larger_than_the_free_space_are_refused_before_anything_is_written(tmp_path):
    output = OutputDir(tmp_path / "export", "export.py")
    with pytest.raises(WriteFault) as refused:
        with output.staged(needed=10**18):
            raise AssertionError("not reached: nothing may be written")
    assert "about 1000000000.0 GB needed" in str(refused.value)
    assert not (tmp_path / "export").exists() and not leftovers(tmp_path)


def test_a_full_disk_while_writing_one_file_keeps_the_previous_file(tmp_path, monkeypatch):
    from reasoncd.io import write_png_atomic

    path = tmp_path / "mask.png"
    write_png_atomic(path, np.zeros((4, 4), bool))
    before = path.read_bytes()
    DiskFills(monkeypatch, Image.Image, "save", no_space())
    with pytest.raises(WriteFault) as refused:
        write_png_atomic(path, np.ones((4, 4), bool))
    assert str(refused.value).startswith(f"{path}: could not be written: the disk is full (512 bytes free there)")
    assert f"{path} was left as it was" in str(refused.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["mask.png"]


def test_a_full_disk_keeps_a_resumable_run_s_work_for_the_next_run(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(WriteFault) as refused:
        with OutputDir(out, "demo.py").resumable({"input": "a"}) as (work, outputs):
            (work / "step-1").write_text("done")
            (outputs / "result.tif").write_text("half")
            raise no_space()
    assert "the finished tiles are kept in" in str(refused.value) and "continues from them" in str(refused.value)
    resume = tmp_path / ".out.resume"
    assert (resume / "work" / "step-1").is_file() and not (resume / "outputs").exists()  # outputs freed
    with OutputDir(out, "demo.py").resumable({"input": "a"}) as (work, outputs):
        assert (work / "step-1").read_text() == "done"
        (outputs / "result.tif").write_text("whole")
    assert snapshot(out) == {"result.tif": b"whole"} and not leftovers(tmp_path)


def test_a_resume_folder_is_never_left_without_its_record(tmp_path, monkeypatch):
    # The record cannot be written: no resume folder at all is left, so the next run is not refused.
    DiskFills(monkeypatch, io_module, "write_text_atomic", no_space())
    with pytest.raises(WriteFault):
        with OutputDir(tmp_path / "out", "demo.py").resumable({"input": "a"}):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.undo()
    with OutputDir(tmp_path / "out", "demo.py").resumable({"input": "a"}) as (_, outputs):
        (outputs / "result.txt").write_text("whole")
    assert snapshot(tmp_path / "out") == {"result.txt": b"whole"}


def test_a_stop_signal_while_outputs_are_put_in_place_waits_until_they_are(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write(OutputDir(out, "demo.py"), {"a.txt": "old", "b.txt": "old"})
    real_replace = os.replace

    def replace(source, target):
        if Path(target).parent == out and Path(target).name == "a.txt":
            os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's time limit, in the middle of the swap
        return real_replace(source, target)

    monkeypatch.setattr(io_module.os, "replace", replace)
    with pytest.raises(Stopped):
        with stoppable():
            write(OutputDir(out, "demo.py"), {"a.txt": "new", "b.txt": "new"})
    assert snapshot(out) == {"a.txt": b"new", "b.txt": b"new"} and not leftovers(tmp_path)


def test_a_folder_another_live_command_writes_is_refused_at_once(tmp_path):
    other = hold_lock_in_another_process(tmp_path / "out", "eval.py")
    try:
        with pytest.raises(OutputDirError, match=f"another ReasonCD command: eval.py \\(process {other.pid} on "):
            OutputDir(tmp_path / "out", "eval.py")
    finally:
        other.stdin.close()
        other.wait(timeout=30)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_the_lock_is_held_from_the_check_until_the_outputs_are_in_place(tmp_path):
    output = OutputDir(tmp_path / "out", "demo.py")
    assert (tmp_path / ".out.lock").is_file()
    with output.staged() as staging:
        (staging / "a.txt").write_text("1")
    assert not (tmp_path / ".out.lock").exists()
    with OutputDir(tmp_path / "out", "demo.py"):  # a command that ends before staging lets go too
        assert (tmp_path / ".out.lock").is_file()
    assert not leftovers(tmp_path)


def test_a_destination_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    with read_only_folder(tmp_path / "disk") as disk:
        for target in (disk / "out", disk):  # a new folder on it, or the read-only folder itself
            with pytest.raises(OutputDirError, match="cannot be written|could not be written"):
                OutputDir(target, "eval.py")
        assert sorted(p.name for p in disk.iterdir()) == []


def test_a_file_destination_in_a_read_only_folder_is_refused(tmp_path):
    from reasoncd.io import check_file_destination

    check_file_destination(tmp_path / "new" / "mask.png", "--out")  # a folder to be made is fine
    assert not list(tmp_path.iterdir())
    with read_only_folder(tmp_path / "disk") as disk:
        with pytest.raises(OutputDirError, match=f"--out {disk / 'mask.png'}: could not be written: "):
            check_file_destination(disk / "mask.png", "--out")
