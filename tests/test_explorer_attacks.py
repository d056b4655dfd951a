"""The explorer under a hostile user: exports of images with very long names, into a folder that
is a file, or while the image changes; uploads under a name already taken, or one after another.
Each must work or say what is wrong, no earlier work may be lost, and what is written or shown is
of one view."""
from __future__ import annotations

import io
import re
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import polycam_explorer as pe

SIZE = 64
LONG = "文" * 120  # 360 bytes of UTF-8 (a file name may hold 255): a name the picker takes


def errors(explorer) -> str:
    return explorer.status.value if "color:#b00020" in explorer.status.value else ""


def _png(seed: int, shape=(16, 16, 3)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name", [LONG, "x" * 250, "photo " * 40])
def test_exports_of_an_image_with_a_very_long_name_are_written(ms, tmp_path, name):
    explorer = pe.Explorer({name: ms}, size=SIZE, export_dir=tmp_path / "exports")
    try:
        written = [explorer.export_png(), explorer.export_maps(), explorer.export.figure("svg"),
                   explorer.export.figure("png", 150)]
        assert not errors(explorer), errors(explorer)
        assert all(path is not None and path.is_file() for path in written)
        assert all(len(path.name.encode()) <= 160 for path in written)  # room for a temporary file's extras
        assert len({path.name for path in written}) == 4
        again = explorer.export_png()  # never overwrites: a new number
        assert again is not None and again != written[0] and written[0].is_file()
    finally:
        explorer.close()


def test_an_export_folder_that_is_a_file_is_named_as_such(ms, tmp_path):
    not_a_folder = tmp_path / "exports"
    not_a_folder.write_text("a file where the export folder should be")
    explorer = pe.Explorer(ms, size=SIZE, export_dir=not_a_folder)
    try:
        for export in (explorer.export_png, explorer.export_maps):
            assert export() is None
            message = errors(explorer)
            assert str(not_a_folder) in message and "is a file, not a folder" in message, message
        explorer.export._guarded(lambda: explorer.export.figure("pdf"))
        assert "is a file, not a folder" in errors(explorer)
        assert not_a_folder.read_text() == "a file where the export folder should be"
        inside = tmp_path / "a file" / "exports"  # a file on the way to it
        (tmp_path / "a file").write_text("")
        other = pe.Explorer(ms, size=SIZE, export_dir=inside)
        try:
            assert other.export_png() is None
            assert str(tmp_path / "a file") in errors(other) and "is a file, not a folder" in errors(other)
        finally:
            other.close()
    finally:
        explorer.close()


def _upload(explorer, name: str, content: bytes) -> None:
    explorer._on_upload({"new": [{"name": name, "content": memoryview(content)}]})


def test_a_second_upload_under_a_taken_name_keeps_the_first(tiny_model, tmp_path):
    ex = pe.explore({"photo": np.zeros((16, 16, 3), np.uint8)}, model=tiny_model, cache_dir=tmp_path / "cache",
                    wait=True, panel_size=SIZE)
    try:
        first = ex.mapsets["photo"]
        _upload(ex, "photo.png", _png(1))  # another picture under the name of one shown
        _upload(ex, "IMG_0001.jpg", _png(2))
        _upload(ex, "IMG_0001.png", _png(3))  # uploaded while the first IMG_0001 may still be swept
        ex.runner.wait(60)
        assert not errors(ex), errors(ex)
        assert sorted(ex.store.names()) == ["IMG_0001", "IMG_0001 (2)", "photo", "photo (2)"]  # swept in parallel
        assert ex.mapsets["photo"] is first  # not replaced
        for name, seed in (("photo (2)", 1), ("IMG_0001", 2), ("IMG_0001 (2)", 3)):
            expected = pe.load_image(Image.open(io.BytesIO(_png(seed))), tiny_model)
            assert torch.equal(ex.mapsets[name].image, expected), name
    finally:
        ex.close()


def test_the_last_upload_stays_on_screen_when_an_earlier_one_finishes_later(tiny_model, tmp_path, monkeypatch):
    from polycam_explorer.explorer import explore as explore_module

    ex = pe.explore({"photo": np.zeros((16, 16, 3), np.uint8)}, model=tiny_model, cache_dir=tmp_path / "cache",
                    wait=True, panel_size=SIZE)
    release, real = threading.Event(), explore_module.load_image

    def slow_first(image, *args, **kwargs):  # the first upload (20 x 20) is a large photo, say
        if getattr(image, "size", None) == (20, 20):
            release.wait(30)
        return real(image, *args, **kwargs)

    monkeypatch.setattr(explore_module, "load_image", slow_first)
    try:
        _upload(ex, "big.png", _png(1, (20, 20, 3)))
        _upload(ex, "small.png", _png(2))  # asked for after it: this is what the user wants to see
        deadline = time.monotonic() + 30
        while ex.state.image != "small" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ex.state.image == "small"
        release.set()
        ex.runner.wait(60)
        assert not errors(ex), errors(ex)
        assert "big" in ex.store.names() and ex.mapsets["big"].complete  # explained, in the picker
        assert ex.state.image == "small"  # not moved away from what the user asked for last
    finally:
        release.set()
        ex.close()


@pytest.mark.parametrize("fmt", ["screen-png", "svg"])
def test_an_export_is_of_one_view_when_the_image_changes_meanwhile(ms, tiny_model, tmp_path, monkeypatch, fmt):
    """A sweep's thread can switch the image on screen (an upload's first map) while an export is
    being drawn: the file's name, captions and pixels must all be of the view the export began with."""
    from polycam_explorer.explorer import frames
    from polycam_explorer.explorer.views import export as export_module

    other = pe.compute_mapset(tiny_model, torch.full((1, 3, 16, 16), 0.7), progress=False)
    assert other.topk(1)[0][0] != ms.topk(1)[0][0] or other.topk(1)[0][2] != ms.topk(1)[0][2]
    ex = pe.Explorer({"first": ms, "second": other}, size=SIZE, export_dir=tmp_path / "exports")
    write = (lambda: ex.export.png()) if fmt == "screen-png" else (lambda: ex.export.figure("svg"))
    try:
        before = write()  # the view of "first", undisturbed
        real = frames.panel_pixels

        def switching(*args, **kwargs):  # the image changes while the export draws its panels
            ex.state.image = "second"
            return real(*args, **kwargs)

        monkeypatch.setattr(export_module.frames, "panel_pixels", switching)
        during = write()
        monkeypatch.setattr(export_module.frames, "panel_pixels", real)
        assert ex.state.image == "second"
        assert during.name.startswith("first_") and during.name != before.name
        if fmt == "screen-png":
            assert np.array_equal(np.asarray(Image.open(during)), np.asarray(Image.open(before)))
        else:  # the same figure: its captions and map (the files differ in matplotlib's ids and date)
            def same(text: str) -> str:
                return re.sub(r'id="[^"]*"|#[a-z]?[0-9a-f]{10}|<dc:date>[^<]*</dc:date>', "", text)
            assert same(during.read_text()) == same(before.read_text())
    finally:
        ex.close()


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_two_explorers_exporting_the_same_name_at_once_keep_both_files(ms, tmp_path, monkeypatch, fmt):
    """Two explorers (two users of one server) export the same image into one folder at the same
    instant: each picks the next free number before the other has written. Both files must stay."""
    from polycam_explorer.explorer.views import export as export_module

    folder = tmp_path / "exports"
    explorers = [pe.Explorer({"cat": ms}, size=SIZE, export_dir=folder) for _ in range(2)]
    both_drawn = threading.Barrier(2, timeout=20)
    saver = (export_module.render, "save_png") if fmt == "png" else (export_module.figure, "save")
    real = getattr(*saver)

    def after_both(*args, **kwargs):  # each has chosen its name and drawn its file
        both_drawn.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(*saver, after_both)
    paths, failures = [], []

    def export(ex):
        try:
            paths.append(ex.export.png() if fmt == "png" else ex.export.figure("svg"))
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
    try:
        threads = [threading.Thread(target=export, args=(ex,)) for ex in explorers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not failures, failures
        assert len(set(paths)) == 2 and all(p.is_file() and p.stat().st_size > 0 for p in paths)
        assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)  # no temporary left
    finally:
        for ex in explorers:
            ex.close()
