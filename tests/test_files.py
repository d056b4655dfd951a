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


def test_an_interrupt_at_any_line_of_the_write_leaves_no_temporary_file(tmp_path):
    """Ctrl-C (a signal: a KeyboardInterrupt at whatever line runs) during an atomic write, here
    raised at each line the write runs in turn (its own, and tempfile.mkstemp's had it used that):
    the old file or the new one stays, whole, and no temporary file beside it (a SIGINT that landed
    between the temporary file's creation and the write's cleanup left one)."""
    import sys

    from polycam_explorer import files

    def watched(code) -> bool:  # not the standard library's locks: interrupted there, it deadlocks
        return code.co_filename == files.__file__ or code.co_name in ("mkstemp", "_mkstemp_inner")

    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    line = 0
    while True:
        line += 1
        seen = 0

        def interrupt(frame, event, arg):
            nonlocal seen
            if event == "line" and watched(frame.f_code):
                seen += 1
                if seen == line:
                    raise KeyboardInterrupt
            return interrupt

        sys.settrace(interrupt)
        try:
            with atomic_write(target) as f:
                f.write(b"new")
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        finally:
            sys.settrace(None)
        assert [p.name for p in tmp_path.iterdir()] == ["out.bin"], line
        assert target.read_bytes() in (b"old", b"new"), line
        if not interrupted:
            break
        target.write_bytes(b"old")
    assert line > 5 and target.read_bytes() == b"new"


def _racing_writers(tmp_path, n: int = 3) -> list:
    """``n`` threads write_new one name each, all saving before any claims a name."""
    import threading

    from polycam_explorer.explorer.views.export import unique_path
    from polycam_explorer.files import write_new

    all_saved = threading.Barrier(n, timeout=20)
    results = []

    def writer(i: int) -> None:
        def save(tmp):
            with atomic_write(tmp) as f:
                f.write(f"writer {i}".encode())
            all_saved.wait()
        results.append((i, write_new(save, lambda: unique_path(tmp_path, "fig", ".txt"))))
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.mark.parametrize("hard_links", [True, False])
def test_write_new_gives_racing_writers_one_name_each(tmp_path, monkeypatch, hard_links):
    """Three writers that all chose fig_1.txt: each file is kept, whole, under its own number, also
    where the file system has no hard links (the name is then reserved by an exclusive create)."""
    if not hard_links:
        def no_links(src, dst):
            raise PermissionError(1, "Operation not permitted", str(dst))
        monkeypatch.setattr(os, "link", no_links)
    results = _racing_writers(tmp_path)
    assert len(results) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig_1.txt", "fig_2.txt", "fig_3.txt"]
    assert {path.read_text() for _, path in results} == {"writer 0", "writer 1", "writer 2"}
    assert all(path.read_text() == f"writer {i}" for i, path in results)


def test_write_new_leaves_nothing_when_the_save_fails_or_no_name_is_free(tmp_path):
    from polycam_explorer.files import write_new

    def failing(tmp):
        with atomic_write(tmp) as f:
            f.write(b"half")
        raise RuntimeError("the drawing failed")
    with pytest.raises(RuntimeError, match="drawing failed"):
        write_new(failing, lambda: tmp_path / "a.txt")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken.txt").write_text("earlier work")

    def save(tmp):
        tmp.write_text("new")
    with pytest.raises(FileExistsError, match="no free name"):
        write_new(save, lambda: tmp_path / "taken.txt")  # a name source that never moves on
    assert [p.name for p in tmp_path.iterdir()] == ["taken.txt"]
    assert (tmp_path / "taken.txt").read_text() == "earlier work"
