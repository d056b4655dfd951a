"""The atlas index: build, incremental refresh, skipped files, labels, queries, thumbnails,
interrupted builds and the ``index`` command, on map sets of the tiny model."""
from __future__ import annotations

import io
import json
import os
import sqlite3
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import polycam_explorer as pe
from polycam_explorer import atlas
from polycam_explorer.atlas import AtlasSkipWarning, build_index
from polycam_explorer.atlas.store import FILE_NAME
from polycam_explorer.cli import main

from conftest import TinyNet


def _model(seed: int = 0) -> pe.Classifier:
    return pe.Classifier(TinyNet(seed=seed).eval(), name=f"tiny{seed}", mean=(0.5,) * 3, std=(0.5,) * 3,
                         input_size=(16, 16), class_names=[f"c{i}" for i in range(5)])


def _mapset(seed: int, model=None) -> pe.MapSet:
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return pe.compute_mapset(model or _model(), x, progress=False)


@pytest.fixture(scope="module")
def mapsets() -> list[pe.MapSet]:
    return [_mapset(seed) for seed in range(6)]


def _write(folder, mapsets, names=None):
    paths = []
    for i, ms in enumerate(mapsets):
        path = folder / (names[i] if names else f"img{i}.mapset.npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        ms.save(path)
        paths.append(path)
    return paths


@pytest.fixture
def count_loads(monkeypatch):
    loaded = []
    real = pe.MapSet.load.__func__

    def load(cls, path, *args, **kwargs):
        loaded.append(os.path.basename(path))
        return real(cls, path, *args, **kwargs)
    monkeypatch.setattr(pe.MapSet, "load", classmethod(load))
    return loaded


def test_build_one_row_per_mapset_with_model_top5_and_size(tmp_path, mapsets, count_loads):
    _write(tmp_path, mapsets[:3])
    calls = []
    index = build_index(tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert (tmp_path / FILE_NAME).is_file()
    assert calls[-1] == (3, 3) and len(count_loads) == 3
    assert index.last_build.added == 3 and len(index) == 3
    rows = {r.file: r for r in index.rows()}
    for i, ms in enumerate(mapsets[:3]):
        row = rows[f"img{i}.mapset.npz"]
        assert row.image == f"img{i}" and row.model_id == ms.model_id and row.model_name == "tiny0"
        assert (row.height, row.width, row.n_layers, row.n_classes) == (16, 16, 3, 5)
        top = ms.topk(5)
        assert [c for c, _, _ in row.top5] == [c for c, _, _ in top]
        assert np.allclose([p for _, _, p in row.top5], [p for _, _, p in top])
        assert row.pred_class == top[0][0] and row.confidence == pytest.approx(top[0][2])
        assert row.label is None and row.correct is None and row.insdel() is None
        plus, minus = ms.saliency(top[0][0], "+"), ms.saliency(top[0][0], "-")
        assert row.context == pytest.approx(float((minus - plus).clamp(min=0).mean()), abs=1e-6)
    # reading rows (again, in a new Index) never loads a map set; open_mapset does, lazily
    count_loads.clear()
    reopened = atlas.open_index(tmp_path)
    assert len(reopened.rows(sort="-confidence")) == 3 and count_loads == []
    ms = reopened.open_mapset(rows["img1.mapset.npz"])
    assert count_loads == ["img1.mapset.npz"] and ms.model_id == mapsets[1].model_id


def test_incremental_add_change_remove_reads_only_what_changed(tmp_path, mapsets, count_loads):
    paths = _write(tmp_path, mapsets[:3])
    build_index(tmp_path, progress=False)
    count_loads.clear()
    again = build_index(tmp_path, progress=False).last_build
    assert count_loads == [] and (again.unchanged, again.added, again.refreshed) == (3, 0, 0)

    _write(tmp_path, [mapsets[3]], ["new.mapset.npz"])
    mapsets[4].save(paths[0])  # changed contents
    paths[2].unlink()
    os.utime(paths[1], ns=(1, 10**18))  # touched: new mtime, same bytes: not read again
    report = build_index(tmp_path, progress=False).last_build
    assert sorted(count_loads) == ["img0.mapset.npz", "new.mapset.npz"]
    assert (report.added, report.refreshed, report.dropped, report.rows) == (1, 1, 1, 3)
    index = atlas.open_index(tmp_path)
    rows = {r.file: r for r in index.rows()}
    assert set(rows) == {"img0.mapset.npz", "img1.mapset.npz", "new.mapset.npz"}
    assert rows["img0.mapset.npz"].pred_class == mapsets[4].topk(1)[0][0]
    assert rows["img0.mapset.npz"].confidence == pytest.approx(mapsets[4].topk(1)[0][2])
    assert rows["img1.mapset.npz"].mtime_ns == 10**18
    count_loads.clear()
    build_index(tmp_path, progress=False)
    assert count_loads == []


def test_corrupt_and_foreign_files_are_skipped_with_a_warning_and_not_retried(tmp_path, mapsets, count_loads):
    _write(tmp_path, mapsets[:2])
    (tmp_path / "broken.mapset.npz").write_bytes((tmp_path / "img0.mapset.npz").read_bytes()[:300])
    np.savez(tmp_path / "foreign.mapset.npz", weights=np.zeros(3))
    with pytest.warns(AtlasSkipWarning) as caught:
        index = build_index(tmp_path, progress=False)
    text = " ".join(str(w.message) for w in caught)
    assert "broken.mapset.npz" in text and "foreign.mapset.npz" in text
    assert len(index) == 2 and index.last_build.skipped == 2
    assert set(index.skipped()) == {"broken.mapset.npz", "foreign.mapset.npz"}
    count_loads.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known bad files: no new warning, not read again
        report = build_index(tmp_path, progress=False).last_build
    assert count_loads == [] and report.skipped_before == 2
    mapsets[2].save(tmp_path / "broken.mapset.npz")  # repaired: indexed now
    report = build_index(tmp_path, progress=False).last_build
    assert report.added == 1 and "broken.mapset.npz" not in atlas.open_index(tmp_path).skipped()


def test_labels_from_csv_and_from_subfolders(tmp_path, mapsets):
    folder = tmp_path / "a"
    _write(folder, mapsets[:4])
    pred = {f"img{i}": ms.topk(1)[0] for i, ms in enumerate(mapsets[:4])}
    wrong = {"img0": "c9", "img1": pred["img1"][1], "img2": str(pred["img2"][0])}  # name / index / neither
    (tmp_path / "labels.csv").write_text("image,label\n" + "".join(f"{k}.jpg,{v}\n" for k, v in wrong.items()))
    index = build_index(folder, labels=tmp_path / "labels.csv", progress=False)
    rows = {r.image: r for r in index.rows()}
    assert rows["img0"].label == "c9" and rows["img0"].correct is False
    assert rows["img1"].correct is True and rows["img2"].correct is True
    assert rows["img3"].label is None and rows["img3"].correct is None
    # the labels source is remembered: a file added later gets its label too
    (tmp_path / "labels.csv").write_text("image,label\nimg5,c0\n")
    _write(folder, [mapsets[5]], ["img5.mapset.npz"])
    rows = {r.image: r for r in build_index(folder, progress=False).rows()}
    assert rows["img5"].label == "c0" and rows["img0"].label is None

    sub = tmp_path / "b"
    _write(sub, mapsets[:3], ["c1/x.mapset.npz", "c2/y.mapset.npz", "z.mapset.npz"])
    index = build_index(sub, labels="folders", progress=False)
    labels = {r.file: (r.label, r.correct) for r in index.rows()}
    assert labels["c1/x.mapset.npz"] == ("c1", mapsets[0].topk(1)[0][1] == "c1")
    assert labels["c2/y.mapset.npz"] == ("c2", mapsets[1].topk(1)[0][1] == "c2")
    assert labels["z.mapset.npz"] == (None, None)


def test_generate_index_json_names_the_images(tmp_path, mapsets):
    _write(tmp_path / "mapsets", mapsets[:2], ["cat_jpg-abc.mapset.npz", "dog-def.mapset.npz"])
    (tmp_path / "mapsets" / "index.json").write_text(json.dumps({"cat.jpg": "cat_jpg-abc.mapset.npz",
                                                                 "pets/dog.png": "dog-def.mapset.npz"}))
    index = build_index(tmp_path, labels={"cat": "c1", "pets/dog.png": "c2"}, progress=False)
    rows = {r.image: r for r in index.rows()}
    assert set(rows) == {"cat.jpg", "pets/dog.png"}
    assert rows["cat.jpg"].file == "mapsets/cat_jpg-abc.mapset.npz"
    assert (rows["cat.jpg"].label, rows["pets/dog.png"].label) == ("c1", "c2")


def test_sort_and_filter_match_a_plain_computation(tmp_path, mapsets):
    other = _model(seed=3)
    sets = mapsets + [_mapset(10 + i, other) for i in range(3)]
    names = [f"m{i:02d}.mapset.npz" for i in range(len(sets))]
    _write(tmp_path, sets, names)
    labels = {f"m{i:02d}": f"c{i % 5}" for i in range(len(sets))}
    index = build_index(tmp_path, labels=labels, progress=False)
    for i, name in enumerate(names[:5]):
        index.set_insdel(name, {"+-": 0.1 * i, "+": -0.1 * i})
    plain = []
    for name, ms in zip(names, sets):
        c, cname, p = ms.topk(1)[0]
        label = labels[name[:-len(".mapset.npz")]]
        plain.append(dict(file=name, pred=c, conf=p, label=label, correct=label == cname, model=ms.model_id))
    insdel = {name: 0.1 * i for i, name in enumerate(names[:5])}

    def files(rows):
        return [r.file for r in rows]
    assert files(index.rows(sort="-confidence")) == [d["file"] for d in sorted(plain, key=lambda d: (-d["conf"], d["file"]))]
    assert files(index.rows(sort=["pred_class", "-confidence"])) == [
        d["file"] for d in sorted(plain, key=lambda d: (d["pred"], -d["conf"], d["file"]))]
    c = plain[0]["pred"]
    assert files(index.query(pred_class=c)) == [d["file"] for d in plain if d["pred"] == c]
    assert files(index.query(correct=False, min_confidence=0.3)) == [
        d["file"] for d in plain if not d["correct"] and d["conf"] >= 0.3]
    assert files(index.rows(where={"label": ["c1", "c2"], "correct": True})) == [
        d["file"] for d in plain if d["label"] in ("c1", "c2") and d["correct"]]
    assert files(index.query(model_id=other_id(sets))) == names[6:]
    assert [m for m, _, n in index.models()] and sum(n for _, _, n in index.models()) == len(sets)
    by_insdel = files(index.query(sort="-insdel"))
    assert by_insdel[:5] == sorted(insdel, key=lambda f: -insdel[f]) and set(by_insdel[5:]) == set(names[5:])
    assert files(index.query(evaluated=True, min_insdel=0.15)) == [f for f in names[:5] if insdel[f] >= 0.15]
    assert index.row(names[2]).insdel("+") == pytest.approx(-0.2)
    assert files(index.query(sort="file", limit=3, offset=2)) == names[2:5]
    with pytest.raises(ValueError, match="cannot sort by"):
        index.rows(sort="thumbnail; DROP TABLE mapsets")


def other_id(sets):
    return sets[-1].model_id


def test_thumbnails_decode_as_images_of_the_input_size(tmp_path, mapsets):
    _write(tmp_path, mapsets[:2])
    index = build_index(tmp_path, progress=False)
    rows = index.rows()
    data = index.thumbnails(rows)
    assert set(data) == {r.file for r in rows}
    for r in rows:
        picture = Image.open(io.BytesIO(data[r.file]))
        assert picture.format == "JPEG" and picture.size == (16, 16)
        assert index.thumbnail(r).shape == (16, 16, 3)
    maps = index.small_maps(rows)
    assert maps[rows[0].file].shape == (3, 32, 32) and 0 <= maps[rows[0].file].min() <= maps[rows[0].file].max() <= 1


def test_large_images_get_thumbnails_of_bounded_size(tmp_path, mapsets):
    model = pe.Classifier(TinyNet().eval(), name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(40, 64),
                          class_names=[f"c{i}" for i in range(5)])
    pe.compute_mapset(model, torch.rand(1, 3, 40, 64), progress=False).save(tmp_path / "wide.mapset.npz")
    index = build_index(tmp_path, progress=False, thumb_size=32)
    assert index.thumbnail("wide.mapset.npz").shape == (20, 32, 3)


def test_an_interrupted_build_leaves_a_consistent_index(tmp_path, mapsets, monkeypatch):
    from polycam_explorer.atlas import build as atlas_build

    _write(tmp_path, mapsets[:3])
    before = {r.file: r for r in build_index(tmp_path, progress=False).rows()}
    _write(tmp_path, mapsets[3:6])  # all three change
    _write(tmp_path, mapsets[:2], ["n0.mapset.npz", "n1.mapset.npz"])
    monkeypatch.setattr(atlas_build, "COMMIT_EVERY", 2)
    real, calls = pe.MapSet.load.__func__, []

    def failing(cls, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(cls, path, *args, **kwargs)
    monkeypatch.setattr(pe.MapSet, "load", classmethod(failing))
    with pytest.raises(KeyboardInterrupt):
        build_index(tmp_path, progress=False)
    monkeypatch.setattr(pe.MapSet, "load", classmethod(real))

    con = sqlite3.connect(tmp_path / FILE_NAME)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    index = atlas.open_index(tmp_path)
    rows = {r.file: r for r in index.rows()}
    new = {f"img{i}.mapset.npz": mapsets[3 + i] for i in range(3)}
    new.update({"n0.mapset.npz": mapsets[0], "n1.mapset.npz": mapsets[1]})
    assert set(before) <= set(rows)  # nothing lost; each row is the old file's or the new file's, whole
    refreshed = 0
    for f, row in rows.items():
        st = (tmp_path / f).stat()
        if f in before and row == before[f]:
            continue
        refreshed += 1
        assert (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns)
        assert row.pred_class == new[f].topk(1)[0][0] and row.confidence == pytest.approx(new[f].topk(1)[0][2])
        assert index.thumbnail(row).shape == (16, 16, 3)
    assert refreshed == 2  # the first transaction of two files; the third was rolled back
    report = build_index(tmp_path, progress=False).last_build
    assert report.added + report.refreshed == 3 and report.rows == 5


def test_cli_index_prints_a_summary(tmp_path, mapsets, capsys):
    _write(tmp_path, mapsets[:2])
    (tmp_path / "bad.mapset.npz").write_bytes(b"nope")
    (tmp_path / "labels.csv").write_text("img0,c1\n")
    with pytest.warns(AtlasSkipWarning):
        assert main(["index", str(tmp_path), "--labels", str(tmp_path / "labels.csv"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 map sets indexed: 2 added, 0 refreshed, 0 dropped, 0 unchanged, 1 skipped" in out
    assert "bad.mapset.npz" in out and "tiny0" in out
    assert atlas.open_index(tmp_path).row("img0.mapset.npz").label == "c1"
    assert main(["index", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_rows_by_image_name_and_insdel_recorded_for_it(tmp_path, mapsets):
    _write(tmp_path, mapsets[:2])
    index = build_index(tmp_path, progress=False)
    (row,) = index.query(image="img1")
    index.set_insdel(row, {"±": 0.25, "-": None})
    assert index.row(row.file).insdel("+-") == 0.25 and index.row(row.file).insdel("-") is None
    with pytest.raises(KeyError):
        index.set_insdel("nope.mapset.npz", {"+": 0.1})
    with pytest.raises(ValueError, match="variant"):
        index.set_insdel(row, {"x": 0.1})


def test_a_damaged_index_file_or_no_index_is_a_clear_error(tmp_path, mapsets):
    with pytest.raises(ValueError, match="has no atlas index"):
        atlas.open_index(tmp_path)
    (tmp_path / FILE_NAME).write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match="not a readable atlas index"):
        build_index(tmp_path, progress=False)


def test_files_give_the_query_order_without_rows_and_unknown_filters_are_refused(tmp_path, mapsets):
    _write(tmp_path, mapsets)
    index = build_index(tmp_path, progress=False)
    for kwargs in ({"sort": "-confidence"}, {"sort": "pred_class", "min_confidence": 0.2, "limit": 3, "offset": 1}):
        assert index.files(**kwargs) == [r.file for r in index.query(**kwargs)]
    with pytest.raises(ValueError, match="unknown filter"):
        index.query(confidence=0.5)


def _plain_small(ms: pe.MapSet, c: int) -> np.ndarray:
    """The index's small maps of class ``c`` computed by hand: full-depth saliency per variant,
    area-resampled to 32 x 32, stored as float16."""
    maps = [torch.nn.functional.interpolate(ms.saliency(c, v, ms.depth_available)[None, None].float(),
                                            size=(32, 32), mode="area")[0, 0] for v in ("+", "-", "+-")]
    return torch.stack(maps).numpy().astype(np.float16).astype(np.float32)


def test_label_maps_are_the_labelled_class_maps_and_follow_a_label_change(tmp_path, mapsets, count_loads):
    _write(tmp_path, mapsets[:4])
    pred = [ms.topk(1)[0][0] for ms in mapsets[:4]]
    other = [(c + 1) % 5 for c in pred]
    labels = {"img0": f"C{other[0]}", "img1": f"c{pred[1]}", "img2": "dog"}  # another class / the predicted / none
    index = build_index(tmp_path, labels=labels, progress=False)
    found = index.label_maps(index.rows())
    assert np.array_equal(found["img0.mapset.npz"], _plain_small(mapsets[0], other[0]))
    assert not np.array_equal(found["img0.mapset.npz"], index.small_maps(["img0.mapset.npz"])["img0.mapset.npz"])
    assert np.array_equal(found["img1.mapset.npz"], _plain_small(mapsets[1], pred[1]))
    assert found["img2.mapset.npz"] is None and found["img3.mapset.npz"] is None  # names no class; no label
    index.set_insdel("img0.mapset.npz", {"+-": 0.25})
    count_loads.clear()
    index = build_index(tmp_path, labels={**labels, "img3": str(other[3])}, progress=False)  # by class index
    assert count_loads == ["img3.mapset.npz"]  # only the relabelled map set is read, for its label's maps
    assert np.array_equal(index.label_maps(["img3.mapset.npz"])["img3.mapset.npz"], _plain_small(mapsets[3], other[3]))
    assert index.row("img0.mapset.npz").insdel("+-") == 0.25  # a label change keeps Ins-Del
    index = build_index(tmp_path, labels={}, progress=False)
    assert set(index.label_maps(index.rows()).values()) == {None}


def test_an_old_schema_index_is_rebuilt(tmp_path, mapsets, count_loads):
    from polycam_explorer.atlas.selection import open_or_build
    from polycam_explorer.atlas.store import SCHEMA_VERSION

    _write(tmp_path, mapsets[:3])
    build_index(tmp_path, labels={"img0": "c1"}, progress=False).close()
    con = sqlite3.connect(tmp_path / FILE_NAME)
    with con:  # what schema 3 lacked: the label's class and maps
        con.execute("ALTER TABLE blobs DROP COLUMN label_maps")
        con.execute("ALTER TABLE blobs DROP COLUMN label_class")
        con.execute("UPDATE meta SET value='3' WHERE key='schema'")
    con.close()
    with pytest.raises(ValueError, match=f"schema 3, this polycam-explorer reads schema {SCHEMA_VERSION}"):
        atlas.open_index(tmp_path)
    count_loads.clear()
    index = open_or_build(tmp_path, progress=False)
    assert sorted(count_loads) == [f"img{i}.mapset.npz" for i in range(3)]  # every map set read again
    assert index.last_build.added == 3 and len(index) == 3
    assert index.row("img0.mapset.npz").label == "c1"  # the remembered labels source is kept
    index.close()
