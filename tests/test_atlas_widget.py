"""The atlas widget: what the grid shows after each control (sort against a plain sorted() over
Index.rows(), filter counts, pages), a click opening the right map set in an Explorer, and two
models compared image by image; on map sets of tiny models."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from conftest import TinyNet

import polycam_explorer as pe
from polycam_explorer.atlas import build_index
from polycam_explorer.atlas.grid import MARK, decode, overlay_tile
from polycam_explorer.atlas.widget import Atlas

N = 8  # images in folder A


def _model(seed: int) -> pe.Classifier:
    return pe.Classifier(TinyNet(seed=seed).eval(), name=f"tiny{seed}", mean=(0.5,) * 3, std=(0.5,) * 3,
                         input_size=(16, 16), class_names=[f"c{i}" for i in range(5)])


def _x(i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(i)
    return torch.randn(1, 3, 16, 16, generator=g) * (1 + i % 4 * 3) + (i % 3 - 1) * 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A: 8 images by three tiny models (so several predicted classes), labelled (right, wrong, or
    not), some with Ins-Del; B: another model's map sets of images 0-5 and of one image not in A."""
    root = tmp_path_factory.mktemp("atlas")
    a, b = root / "A", root / "B"
    a.mkdir(), b.mkdir()
    makers = [_model(0)] * 3 + [_model(2)] * 2 + [_model(3)] * 3
    for i, model in enumerate(makers):
        pe.compute_mapset(model, _x(i), progress=False).save(a / f"img{i}.mapset.npz")
    other = _model(1)
    for i in list(range(6)) + [11]:
        pe.compute_mapset(other, _x(i), progress=False).save(b / f"img{i}.mapset.npz")
    index = build_index(a, progress=False)
    rows = index.rows(sort="file")
    labels = {}
    for k, row in enumerate(rows):
        if k % 3 == 0:
            labels[row.image] = row.pred_name  # right
        elif k % 3 == 1:
            labels[row.image] = "c4" if row.pred_name != "c4" else "c0"  # wrong
    index.close()
    index = build_index(a, labels=labels, progress=False)
    for k, row in enumerate(index.rows(sort="file")[:5]):
        index.set_insdel(row, {"+-": 0.1 * k, "+": 0.5 - 0.05 * k})
    index.close()
    build_index(b, progress=False).close()
    return a, b


@pytest.fixture
def atlas(folders, tmp_path):
    widget = Atlas(folders[0], page_size=3, columns=2, export_dir=tmp_path)
    yield widget
    widget.close()


def _all_items(atlas: Atlas) -> list:
    seen = []
    for number in range(1, atlas.page.max + 1):
        atlas.page.value = number
        seen += atlas.items
    return seen


def _plain_sort(rows, key: str, descending: bool, variant: str = "+-") -> list[str]:
    """Index.query's order, computed by hand: missing values last, ties by file."""
    value = (lambda r: r.insdel(variant)) if key == "insdel" else (lambda r: getattr(r, key))
    present = sorted((r for r in rows if value(r) is not None), key=lambda r: r.file)
    present.sort(key=value, reverse=descending)
    return [r.file for r in present] + sorted(r.file for r in rows if value(r) is None)


def _tile(atlas: Atlas, i: int) -> np.ndarray:
    x, y = atlas.layout_grid.origin(i)
    return atlas.canvas.pixels[y: y + atlas.layout_grid.tile_w, x: x + atlas.layout_grid.tile_w]


def _expected_tile(index, row, variant: str) -> np.ndarray:
    v = ("+", "-", "+-").index(variant)
    return overlay_tile(decode(index.pictures([row])[row.file]), index.small_maps([row])[row.file][v])


def test_the_grid_opens_on_the_first_page_with_a_count(atlas):
    assert atlas.count.value == f"<b>{N}</b> of {N} images"
    assert atlas.page.max == 3 and atlas.pages_label.value == "of 3" and atlas.page.value == 1
    assert [r.file for r in atlas.items] == _plain_sort(atlas.index.rows(), "confidence", True)[:3]
    assert atlas.canvas.pixels.shape[:2] == atlas.layout_grid.size(3)
    for i, row in enumerate(atlas.items):  # each tile: its picture with its PCAM± small map
        assert np.array_equal(_tile(atlas, i), _expected_tile(atlas.index, row, "+-"))


@pytest.mark.parametrize("key", ["confidence", "pred_name", "label", "correct", "insdel", "context", "image"])
@pytest.mark.parametrize("descending", [False, True])
def test_sort_reorders_the_thumbnails_as_a_plain_sort_does(atlas, key, descending):
    atlas.descending.value = descending
    atlas.sort.value = key
    expected = _plain_sort(atlas.index.rows(), key, descending)
    assert [r.file for r in _all_items(atlas)] == expected
    atlas.page.value = 1
    first = atlas.index.row(expected[0])
    assert np.array_equal(_tile(atlas, 0), _expected_tile(atlas.index, first, "+-"))


def test_a_sort_moves_the_pixels(atlas):
    before = atlas.canvas.pixels.copy()
    atlas.descending.value = False  # lowest confidence first: other images on the first page
    assert [r.file for r in atlas.items] == _plain_sort(atlas.index.rows(), "confidence", False)[:3]
    assert not np.array_equal(before, atlas.canvas.pixels)


def test_the_variant_redraws_each_tile_with_its_map(atlas):
    atlas.page.value = 2
    atlas.variant.value = "-"
    assert atlas.page.value == 2  # the same page, other maps
    for i, row in enumerate(atlas.items):
        assert np.array_equal(_tile(atlas, i), _expected_tile(atlas.index, row, "-"))


def test_filters_count_what_they_keep(atlas):
    rows = atlas.index.rows()
    atlas.page.value = 2
    (c, _, n), *_ = atlas.index.classes()
    atlas.klass.value = c
    assert atlas.count.value == f"<b>{n}</b> of {N} images" and n == sum(r.pred_class == c for r in rows)
    assert atlas.page.value == 1 and {r.pred_class for r in _all_items(atlas)} == {c}
    atlas.klass.value = -1
    for choice, keep in (("correct", lambda r: r.correct is True), ("incorrect", lambda r: r.correct is False),
                         ("unlabelled", lambda r: r.label is None)):
        atlas.correct.value = choice
        expected = sorted(r.file for r in rows if keep(r))
        assert expected and sorted(r.file for r in _all_items(atlas)) == expected
        assert atlas.count.value.startswith(f"<b>{len(expected)}</b> of {N}")
    atlas.correct.value = "any"
    label = next(value for _, value in atlas.label.options if value)
    atlas.label.value = label
    assert sorted(r.file for r in _all_items(atlas)) == sorted(r.file for r in rows if r.label == label[0])
    atlas.label.value = ()
    confidences = sorted(r.confidence for r in rows)
    low = math.ceil(confidences[2] * 100) / 100  # a bound on the slider's 0.01 steps
    atlas.confidence.value = (low, 1.0)
    kept = [r.file for r in rows if r.confidence >= low]
    assert 0 < len(kept) < N and sorted(r.file for r in _all_items(atlas)) == sorted(kept)


def test_paging_with_the_buttons(atlas):
    rows = _plain_sort(atlas.index.rows(), "confidence", True)
    assert atlas.previous.disabled and not atlas.next.disabled
    atlas.next.click()
    assert atlas.page.value == 2 and [r.file for r in atlas.items] == rows[3:6]
    atlas.next.click()
    assert [r.file for r in atlas.items] == rows[6:] and atlas.next.disabled and not atlas.previous.disabled
    assert atlas.canvas.pixels.shape[:2] == atlas.layout_grid.size(2)  # one row on the last page
    atlas.next.click()
    assert atlas.page.value == 3
    atlas.previous.click()
    assert atlas.page.value == 2


def test_a_click_opens_the_right_mapset_in_an_explorer_and_replaces_the_last(atlas, folders):
    atlas.variant.value = "-"
    x, y = atlas.layout_grid.origin(1)
    atlas.click(x + 10, y + 10)
    row = atlas.items[1]
    first = atlas.explorer
    assert first is not None and atlas.explorer_box.children == (first,)
    assert first.store.names() == [row.image] and first.state.variant == "-"
    saved = pe.MapSet.load(folders[0] / row.file)
    assert torch.equal(first.ms.probs, saved.probs) and first.ms.layers == saved.layers
    assert first.canvases[0].frames_sent > 0
    x1, y1 = atlas.layout_grid.origin(1)  # its tile is framed
    assert tuple(atlas.canvas.pixels[y1 - 2, x1 + 10]) == MARK
    atlas.click(x + atlas.layout_grid.tile_w + 2, y + 10)  # a gap: nothing happens
    assert atlas.explorer is first
    x, y = atlas.layout_grid.origin(2)
    atlas.click(x + 5, y + 5)
    assert atlas.explorer is not first and atlas.explorer.store.names() == [atlas.items[2].image]
    assert first.comm is None and first.store.names() == []  # the old one is closed, its map sets dropped
    assert atlas.explorer_box.children == (atlas.explorer,)


def test_a_mapset_gone_since_indexing_is_said_in_the_status(folders, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(folders[0], folder)
    atlas = Atlas(folder, page_size=4)
    try:
        (folder / atlas.items[0].file).unlink()
        assert atlas.explore(0) is None and "cannot open" in atlas.status.value and atlas.explorer is None
        assert atlas.explore(1) is not None
    finally:
        atlas.close()


def _disagreements(atlas: Atlas, maps: str) -> dict[str, float]:
    """Plain numpy: 1 - r of the PCAM± maps of each image in both indexes (``maps``: the Index
    method giving them, ``"small_maps"`` or ``"label_maps"``; NaN where a side has none)."""
    maps_a = getattr(atlas.index, maps)(atlas.index.rows())
    maps_b = getattr(atlas.other, maps)(atlas.other.rows())
    rows_b = {r.image: r for r in atlas.other.rows()}
    expected = {}
    for row in atlas.index.rows():
        if row.image in rows_b:
            ma, mb = maps_a[row.file], maps_b[rows_b[row.image].file]
            expected[row.image] = (math.nan if ma is None or mb is None else
                                   1 - np.corrcoef(ma[2].ravel(), mb[2].ravel())[0, 1])
    return expected


def test_compare_pairs_by_image_sorted_by_disagreement(folders):
    a, b = folders
    atlas = Atlas(a, compare=b, page_size=4)
    try:
        assert atlas.columns == 4 and atlas.sort.value == "disagreement"
        assert atlas.count.value == "<b>6</b> of 6 pairs of images"
        pairs = _all_items(atlas)
        expected = _disagreements(atlas, "small_maps")
        rows_b = {r.image: r for r in atlas.other.rows()}
        assert [p.image for p in pairs] == sorted(expected, key=lambda n: -expected[n])
        for p in pairs:
            assert p.a.image == p.b.image == p.image and p.b.file == rows_b[p.image].file
            assert p.disagreement == pytest.approx(expected[p.image], abs=1e-5)
        atlas.page.value = 1
        tile = atlas.layout_grid.tile_w
        assert tile > 2 * 112  # both maps side by side
        atlas.click(*atlas.layout_grid.origin(0))
        first = atlas.items[0]
        assert atlas.explorer.store.names() == [f"{first.image} (A: {first.a.model_name})",
                                                f"{first.image} (B: {first.b.model_name})"]
        atlas.variant.value = "+"  # another variant, another order
        assert [p.image for p in _all_items(atlas)] == [p.image for p in sorted(
            atlas.selection.pairs("+"), key=lambda p: -p.disagreement)]
        atlas.sort.value = "confidence"  # model A's column
        assert [p.a.file for p in _all_items(atlas)] == [f for f in _plain_sort(atlas.index.rows(), "confidence", True)
                                                          if atlas.index.row(f).image in expected]
    finally:
        atlas.close()


def test_the_report_button_writes_the_filtered_selection(atlas, tmp_path):
    atlas.correct.value = "correct"
    chosen = _all_items(atlas)
    atlas.report.button.click()
    atlas.report.wait(60)
    written = list(tmp_path.glob("atlas_report_*.html"))
    assert len(written) == 1 and str(written[0]) in atlas.report.link.value and atlas.report.path == written[0]
    text = written[0].read_text()
    assert all(r.image in text for r in chosen)
    others = [r for r in atlas.index.rows() if r not in chosen]
    assert others and not any(f">{r.image}<" in text for r in others)
    assert all(f">{r.image}<" in text for r in chosen)


def test_a_folder_without_an_index_gets_one_and_bad_arguments_are_named(folders, tmp_path, tiny_model):
    folder = tmp_path / "fresh"
    shutil.copytree(folders[1], folder, ignore=shutil.ignore_patterns(".polycam-atlas*"))
    atlas = Atlas(folder)
    try:
        assert len(atlas.index) == 7 and atlas.count.value.startswith("<b>7</b>")
    finally:
        atlas.close()
    with pytest.raises(ValueError, match="not a folder"):
        Atlas(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="page_size"):
        Atlas(folder, page_size=0)
    with pytest.raises(ValueError, match="model="):
        Atlas(folder, compare=folder, model=tiny_model)
    with pytest.raises(TypeError, match="folder of map sets"):
        Atlas(42)


def test_an_index_given_stays_open_and_atlas_is_exported(folders):
    index = pe.atlas.open_index(folders[0])
    atlas = pe.Atlas(index)
    atlas.close()
    assert len(index) == N  # not closed by the atlas
    index.close()
    assert pe.Atlas is pe.atlas.Atlas is Atlas and "Atlas" in pe.__all__ and "Atlas" in pe.atlas.__all__


# ----- whose map: the predicted, the labelled or a chosen class ---------------------------------
def _plain_small(folder, row, c: int) -> np.ndarray:
    """The small maps of class ``c`` by hand: the map set's full-depth saliency per variant,
    area-resampled to 32 x 32, through float16 as the index stores them."""
    ms = pe.MapSet.load(folder / row.file)
    maps = [torch.nn.functional.interpolate(ms.saliency(c, v, ms.depth_available)[None, None].float(),
                                            size=(32, 32), mode="area")[0, 0] for v in ("+", "-", "+-")]
    return torch.stack(maps).numpy().astype(np.float16).astype(np.float32)


def _plain_tile(index, row, maps: np.ndarray | None, variant: str = "+-") -> np.ndarray:
    shown = None if maps is None else maps[("+", "-", "+-").index(variant)]
    return overlay_tile(decode(index.pictures([row])[row.file]), shown)


@pytest.fixture
def relabelled(folders, tmp_path):
    """A copy of folder A labelled by class name (another class or the predicted), class index, a
    name of no class, or not at all; and each image's labelled class (None: none usable)."""
    folder = tmp_path / "L"
    shutil.copytree(folders[0], folder, ignore=shutil.ignore_patterns(".polycam-atlas*"))
    rows = build_index(folder, progress=False).rows(sort="file")
    labels, classes = {}, {}
    for k, row in enumerate(rows):
        other = (row.pred_class + 1 + k) % 5
        given = [f"C{other}", row.pred_name, str(other), "dog", None][k % 5]
        classes[row.file] = [other, row.pred_class, other, None, None][k % 5]
        if given is not None:
            labels[row.image] = given
    build_index(folder, labels=labels, progress=False).close()
    return folder, classes


def test_map_of_label_draws_the_labelled_class_map_or_the_bare_picture(relabelled, tmp_path):
    folder, classes = relabelled
    atlas = Atlas(folder, map_of="label", page_size=N, columns=4, export_dir=tmp_path)
    try:
        assert atlas.map_of.value == "label" and atlas.map_class.disabled
        atlas.sort.value = "image"
        drawn = 0
        for i, row in enumerate(atlas.items):
            c = classes[row.file]
            expected = _plain_tile(atlas.index, row, None if c is None else _plain_small(folder, row, c))
            assert np.array_equal(_tile(atlas, i), expected), row.file
            drawn += c is not None and c != row.pred_class
        assert drawn >= 2  # labels naming another class than the predicted: maps the index did not have before
        notes = atlas.tile_maps[atlas.index].maps(atlas.items, "label")
        assert sorted(v for v in notes.values() if isinstance(v, str)) == ["label not a class", "no label"]
        for row in atlas.items:  # a tile opens on the class it shows
            c = classes[row.file]
            assert atlas.explore(row).state.klass == (row.pred_class if c is None else c), row.file
        atlas.map_of.value = "predicted"  # back to the index's own maps
        for i, row in enumerate(atlas.items):
            assert np.array_equal(_tile(atlas, i), _expected_tile(atlas.index, row, "+-"))
        assert atlas.explore(atlas.items[0]).state.klass == atlas.items[0].pred_class
    finally:
        atlas.close()


def test_map_of_a_chosen_class_loads_the_page_only_and_says_so(relabelled, tmp_path, monkeypatch):
    folder, _ = relabelled
    loaded = []
    real = pe.MapSet.load.__func__
    monkeypatch.setattr(pe.MapSet, "load", classmethod(lambda cls, path, *a, **k: loaded.append(path.name)
                                                       or real(cls, path, *a, **k)))
    atlas = Atlas(folder, page_size=3, columns=3, export_dir=tmp_path, map_class=2)
    said = []
    atlas.status.observe(lambda change: said.append(change["new"]), names="value")
    try:
        assert loaded == [] and atlas.map_class.disabled
        atlas.map_of.value = "class"
        assert not atlas.map_class.disabled
        assert sorted(loaded) == sorted(r.file for r in atlas.items)  # the page's map sets only
        assert any("loading 3 map sets" in text for text in said)
        for variant in ("-", "+", "+-"):
            atlas.variant.value = variant
            for i, row in enumerate(atlas.items):
                assert np.array_equal(_tile(atlas, i), _plain_tile(atlas.index, row, _plain_small(folder, row, 2),
                                                                   variant))
        page1, before = atlas.canvas.pixels.copy(), len(loaded)  # (the plain computations load map sets too)
        atlas.page.value = 2
        assert len(loaded) == before + 3
        atlas.page.value = 1  # paging back: from the LRU, no map set read, the same pixels
        assert len(loaded) == before + 3 and np.array_equal(atlas.canvas.pixels, page1)
        atlas.map_class.value = atlas.map_class.options[-1][1]
        assert len(loaded) == before + 6
        assert atlas.explore(0).state.klass == atlas.map_class.value  # the explorer opens on the class shown
        with pytest.raises(ValueError, match="map_of must be one of"):
            Atlas(folder, map_of="mine")
        with pytest.raises(ValueError, match="map_class"):
            Atlas(folder, map_class=-1)
    finally:
        atlas.close()
    beyond = Atlas(folder, map_of="class", map_class=7, page_size=3, export_dir=tmp_path)  # the models have 5
    try:
        for i, row in enumerate(beyond.items):
            assert np.array_equal(_tile(beyond, i), _plain_tile(beyond.index, row, None))
    finally:
        beyond.close()


def test_chosen_class_maps_never_depend_on_the_cache(relabelled):
    from polycam_explorer.atlas.tilemaps import TileMaps

    folder, _ = relabelled
    index = pe.atlas.open_index(folder)
    rows = index.rows(sort="file")
    small = TileMaps(index, capacity=2)  # evicts almost everything
    for c in (3, 1, 3, 0):  # some history
        small.maps(rows[::-1], "class", c)
    fresh = TileMaps(index).maps(rows, "class", 1)
    for maps in (small.maps(rows, "class", 1), small.maps(rows[:2], "class", 1),
                 TileMaps(index).maps(rows, "class", 1)):
        for f, m in maps.items():
            assert np.array_equal(m, fresh[f])
    for r in rows:
        assert np.array_equal(fresh[r.file], _plain_small(folder, r, 1))
    # a map set replaced and indexed again: its new maps, not the cached ones
    shutil.copyfile(folder / rows[5].file, folder / rows[0].file)
    index.close()
    index = build_index(folder, progress=False)
    small.index = index
    assert np.array_equal(small.maps([index.row(rows[0].file)], "class", 1)[rows[0].file], fresh[rows[5].file])
    index.close()


# ----- polycam-explorer serve --atlas -----------------------------------------------------------
class _FakeVoila:
    """Stands in for Voila's process: keeps the notebook's code, exits at once."""

    code: list[str] = []

    def __init__(self, command, env):
        import nbformat

        _FakeVoila.code.append(nbformat.read(command[3], as_version=4).cells[0].source)

    def wait(self, timeout=None) -> int:
        return 0


def test_serve_atlas_indexes_first_and_serves_an_atlas_that_runs(folders, tmp_path, monkeypatch, capsys):
    import subprocess

    from polycam_explorer.atlas.store import FILE_NAME
    from polycam_explorer.cli import main

    folder = tmp_path / "fresh"
    shutil.copytree(folders[0], folder, ignore=shutil.ignore_patterns(".polycam-atlas*"))
    monkeypatch.setattr(subprocess, "Popen", _FakeVoila)
    monkeypatch.setenv("POLYCAM_EXPLORER_EXPORTS", str(tmp_path / "exports"))
    _FakeVoila.code = []
    assert main(["serve", "--atlas", str(folder), "--compare", str(folders[1]), "--no-browser"]) == 0
    out = capsys.readouterr().out
    assert (folder / FILE_NAME).is_file() and f"{N} added" in out and "serving the atlas at http://127.0.0.1:" in out
    assert "map sets in its index" in out  # B's index was there: opened as it is
    (code,) = _FakeVoila.code
    assert f"pe.Atlas({str(folder.resolve())!r}, compare={str(folders[1].resolve())!r}, model=None)" in code
    namespace: dict = {}
    exec(code, namespace)  # what the served page runs
    try:
        assert namespace["atlas"].count.value == "<b>6</b> of 6 pairs of images"
    finally:
        namespace["atlas"].close()


@pytest.mark.parametrize("argv, message", [
    (["serve", "--atlas", "{tmp}/nowhere"], "--atlas '{tmp}/nowhere' is not a folder of map sets"),
    (["serve", "--atlas", "{a}", "--compare", "{tmp}/nowhere"], "--compare '{tmp}/nowhere' is not a folder"),
    (["serve", "--compare", "{a}"], "--compare needs --atlas"),
    (["serve", "{a}/img0.mapset.npz", "--atlas", "{a}"], "not both"),
    (["serve", "--atlas", "{a}", "--compare", "{b}", "--model", "resnet18"], "--model is for one atlas folder"),
    (["serve", "--atlas", "{tmp}"], "holds no map set"),
])
def test_serve_atlas_refuses_with_a_clear_error(folders, tmp_path, monkeypatch, capsys, argv, message):
    import subprocess

    from polycam_explorer.cli import main

    monkeypatch.setattr(subprocess, "Popen", _FakeVoila)
    _FakeVoila.code = []
    names = {"tmp": str(tmp_path), "a": str(folders[0]), "b": str(folders[1])}
    assert main([arg.format(**names) for arg in argv] + ["--no-browser"]) == 2
    assert message.format(**names) in capsys.readouterr().err and _FakeVoila.code == []


def test_compare_on_the_labelled_class_sorts_by_the_label_maps(folders, tmp_path):
    """'Map of: labelled class' with two models: the tiles show both models' maps of the label,
    and the pairs are sorted by the disagreement of those maps (not of each model's own
    prediction); an image without a usable label has none (last); back to predicted, as before."""
    a, b = folders
    labelled_b = tmp_path / "B"
    labelled_b.mkdir()
    for file in b.glob("*.mapset.npz"):
        shutil.copy(file, labelled_b / file.name)
    with build_index(a, progress=False) as index_a:
        labels = {r.image: r.label for r in index_a.rows() if r.label is not None}
    build_index(labelled_b, labels=labels, progress=False).close()
    atlas = Atlas(a, compare=labelled_b, page_size=4)
    try:
        predicted = [p.image for p in _all_items(atlas)]
        atlas.map_of.value = "label"
        pairs = _all_items(atlas)
        expected = _disagreements(atlas, "label_maps")
        assert any(math.isnan(v) for v in expected.values()) and any(not math.isnan(v) for v in expected.values())
        finite = sorted((n for n, v in expected.items() if not math.isnan(v)), key=lambda n: -expected[n])
        assert [p.image for p in pairs][:len(finite)] == finite
        assert all(math.isnan(p.disagreement) for p in pairs[len(finite):])
        for p in pairs[:len(finite)]:
            assert p.disagreement == pytest.approx(expected[p.image], abs=1e-5) and p.same_class
        atlas.map_of.value = "predicted"
        assert [p.image for p in _all_items(atlas)] == predicted
    finally:
        atlas.close()
