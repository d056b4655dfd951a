"""The atlas under a hostile user: names that are HTML, map sets deleted or replaced after
indexing. What the status line says must be the text of the names, and a map set that is no
longer the one indexed must be said, not only warned in the kernel's log."""
from __future__ import annotations

import shutil

import pytest
import torch
from conftest import TinyNet

import polycam_explorer as pe
from polycam_explorer.atlas.widget import Atlas

HOSTILE = "<img src=x onerror=alert(1)>"


def _model(seed: int) -> pe.Classifier:
    return pe.Classifier(TinyNet(seed=seed).eval(), name=f"tiny{seed}", mean=(0.5,) * 3, std=(0.5,) * 3,
                         input_size=(16, 16), class_names=[f"c{i}" for i in range(5)])


def _x(i: int) -> torch.Tensor:
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(i)) * (1 + i * 2)


@pytest.fixture
def folder(tmp_path):
    """Three map sets, one named like an HTML tag, made by two tiny models."""
    root = tmp_path / "maps"
    root.mkdir()
    for i, name in enumerate([HOSTILE, "plain", "other"]):
        pe.compute_mapset(_model(i % 2), _x(i), progress=False).save(root / f"{name}.mapset.npz")
    return root


def _item(atlas: Atlas, image: str):
    return next(item for item in atlas.selection.items(atlas.query()) if item.image == image)


def test_image_names_in_the_status_line_are_text_not_html(folder, tmp_path):
    atlas = Atlas(folder, page_size=4, export_dir=tmp_path / "exports")
    try:
        assert atlas.explore(_item(atlas, HOSTILE)) is not None
        assert "<img" not in atlas.status.value and "&lt;img src=x onerror=alert(1)&gt;" in atlas.status.value
        gone = _item(atlas, HOSTILE)
        (folder / gone.file).unlink()
        assert atlas.explore(gone) is None
        assert "cannot open" in atlas.status.value
        assert "<img" not in atlas.status.value and "&lt;img src=x onerror=alert(1)&gt;" in atlas.status.value
    finally:
        atlas.close()


def test_a_mapset_replaced_since_indexing_is_said_in_the_status(folder, tmp_path):
    atlas = Atlas(folder, page_size=4, export_dir=tmp_path / "exports")
    try:
        item = _item(atlas, "plain")
        shutil.copy(folder / _item(atlas, "other").file, folder / item.file)  # another image's map set
        with pytest.warns(RuntimeWarning, match="changed since it was indexed"):
            explorer = atlas.explore(item)
        assert explorer is not None  # it opens (the file is a valid map set) ...
        # ... and the page says that its tile (drawn from the index) may not be what is opened
        assert "changed since it was indexed" in atlas.status.value
        assert "build_index" in atlas.status.value or "polycam-explorer index" in atlas.status.value
        atlas.explore(_item(atlas, "other"))  # an unchanged one: no warning left on the line
        assert "changed" not in atlas.status.value
    finally:
        atlas.close()


def test_a_report_folder_that_is_a_file_is_named_as_such(folder, tmp_path):
    not_a_folder = tmp_path / "exports"
    not_a_folder.write_text("")
    atlas = Atlas(folder, page_size=4, export_dir=not_a_folder)
    try:
        assert atlas.export_report(block=True) is None
        assert "report not written" in atlas.status.value and "is a file, not a folder" in atlas.status.value
    finally:
        atlas.close()
