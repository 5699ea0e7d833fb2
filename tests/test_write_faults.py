"""reasoncd.write_faults: a refused write, in whatever words the library raised it, becomes one message naming the
path, the reason, the free and needed space and what was kept; anything else passes through untouched."""
import errno

import pytest

from reasoncd import write_faults
from reasoncd.write_faults import WriteFault, fault, human_bytes, translated

KEPT = "runs/eval was left as it was"


def refused(error, **kwargs) -> WriteFault:
    result = fault(error, "runs/eval", kept=KEPT, **kwargs)
    assert isinstance(result, WriteFault), error
    return result


@pytest.fixture
def free(monkeypatch):
    """The free space the file system reports (100 GB unless a test sets it)."""
    space = {"bytes": 100 * 10**9}
    monkeypatch.setattr(write_faults, "free_bytes", lambda path: space["bytes"])
    return space


@pytest.mark.parametrize("error, code, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC, "the disk is full"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT, "the disk quota is exceeded"),
    (OSError(errno.EROFS, "Read-only file system"), errno.EROFS, "the file system is read-only"),
    (PermissionError(errno.EACCES, "Permission denied"), errno.EACCES, "permission to write there is denied"),
    # safetensors' Rust writer: no errno, only its text
    (Exception("Error while serializing: I/O error: No space left on device (os error 28)"), errno.ENOSPC,
     "the disk is full"),
    (Exception("Error while serializing: I/O error: Disk quota exceeded (os error 122)"), errno.EDQUOT,
     "the disk quota is exceeded"),
])
def test_each_way_a_library_says_it_is_named_plainly(free, error, code, reason):
    result = refused(error)
    assert result.errno == code and result.reason == reason
    assert str(result).startswith(f"runs/eval: could not be written: {reason} (100.0 GB free there)")
    assert KEPT in str(result)


def test_the_space_needed_is_given_when_known(free):
    free["bytes"] = 3_000
    full = OSError(errno.ENOSPC, "No space left on device")
    assert "(3.0 kB free there, about 13.5 GB needed)" in str(refused(full, needed=13_500_000_000))
    assert ("(3.0 kB free there, at least 1.2 MB needed: that much was written before it stopped)"
            in str(refused(full, written=1_234_567)))
    assert str(refused(full)).endswith("Free some space (or raise the quota) and run the command again.")
    read_only = refused(OSError(errno.EROFS, "Read-only file system"), written=1_234_567)
    assert "needed" not in str(read_only) and str(read_only).endswith("Choose a place you can write to.")


def test_a_bare_write_error_is_a_full_disk_only_when_the_disk_is_nearly_full(free):
    # torch.save's stream writer and GDAL's TIFF writer say only that the write went wrong.
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    gdal_error = Exception("TIFFAppendToStrip:Write error at scanline 256")
    numpy_error = OSError("8192 requested and 8160 written")  # a short write, no errno
    free["bytes"] = 4096
    for error in (torch_error, gdal_error, numpy_error):
        assert refused(error).reason == "the disk is full"
    free["bytes"] = 10**9
    other = refused(gdal_error)
    assert other.errno == errno.EIO and other.reason == "the write failed (TIFFAppendToStrip:Write error at scanline 256)"
    assert str(other).endswith("Check the disk and run the command again.")


def test_the_cause_is_found_behind_a_wrapping_error(free):
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("could not save the checkpoint") from inner
    except RuntimeError as outer:
        assert refused(outer).reason == "the disk is full"


def test_other_errors_and_unreadable_inputs_are_not_write_faults(tmp_path, free):
    assert fault(ValueError("not a PNG"), "runs/eval", kept=KEPT) is None
    assert fault(KeyError("f1"), "runs/eval", kept=KEPT) is None
    # Permission denied on an input being read (outside the places written) is the input's problem.
    unreadable = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "data" / "t1.png"))
    assert fault(unreadable, "runs/eval", kept=KEPT, within=(tmp_path / "runs",)) is None
    writing = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "runs" / ".eval.partial-1" / "a"))
    assert fault(writing, "runs/eval", kept=KEPT, within=(tmp_path / "runs",)) is not None


def test_translated_raises_a_fault_from_the_error_and_passes_others_on(free):
    with pytest.raises(WriteFault, match="runs/eval: could not be written: the disk is full") as caught:
        with translated("runs/eval", kept=KEPT, measure=lambda: 2_000_000):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert "at least 2.0 MB needed" in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)
    with pytest.raises(ValueError, match="unrelated"):
        with translated("runs/eval", kept=KEPT):
            raise ValueError("unrelated")
    # A fault raised deeper keeps its reason when an outer writer names its own target.
    with pytest.raises(WriteFault) as outer:
        with translated("runs/export", kept="runs/export was left as it was"):
            raise refused(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert str(outer.value).startswith("runs/export: could not be written: the disk quota is exceeded")
    assert "runs/export was left as it was" in str(outer.value)


def test_adding_advice_keeps_the_fault(free):
    base = refused(OSError(errno.ENOSPC, "No space left on device"))
    more = base.adding("Run again with --resume_from_checkpoint")
    assert isinstance(more, WriteFault) and more.errno == errno.ENOSPC
    assert str(more) == f"{base} Run again with --resume_from_checkpoint."


def test_sizes_read_as_people_write_them():
    assert [human_bytes(n) for n in (0, 999, 1_000, 1_234_567, 13_500_000_000)] == [
        "0 bytes", "999 bytes", "1.0 kB", "1.2 MB", "13.5 GB"]


def test_free_space_of_a_path_not_yet_made_is_its_disks(tmp_path):
    assert write_faults.free_bytes(tmp_path / "not" / "yet") == write_faults.free_bytes(tmp_path) > 0
    assert write_faults.folder_bytes(tmp_path / "missing") == 0
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"12345")
    (tmp_path / "a" / "y").write_bytes(b"123")
    assert write_faults.folder_bytes(tmp_path / "a") == 8
