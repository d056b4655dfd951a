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
