"""Atomic writes: complete files only, with the permissions of an ordinary write."""
import os

import pytest

from polycam_explorer.files import atomic_write


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_the_file_has_the_permissions_of_a_plain_open(tmp_path):
    with atomic_write(tmp_path / "sub" / "atomic.bin") as f:
        f.write(b"data")
    with open(tmp_path / "plain.bin", "wb") as f:
        f.write(b"data")
    mode = lambda name: os.stat(name).st_mode & 0o777
    assert (tmp_path / "sub" / "atomic.bin").read_bytes() == b"data"
    assert mode(tmp_path / "sub" / "atomic.bin") == mode(tmp_path / "plain.bin")


def test_a_failure_on_reaching_the_disk_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno

    from polycam_explorer import files

    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)  # the data is only known to be on disk after fsync
    with pytest.raises(OSError, match="No space"):
        with atomic_write(target) as f:
            f.write(b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
