"""The atlas's static HTML report: one self-contained file (no outside reference), a picture per
selected row with decodable PNG data, the rows' numbers, the aggregates, atomic writing, and the
``index --report`` command; on map sets of the tiny model."""
from __future__ import annotations

import base64
import io
import os
import re
import threading
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from conftest import TinyNet
from PIL import Image

import polycam_explorer as pe
from polycam_explorer.atlas import build_index
from polycam_explorer.atlas.aggregates import insdel_table
from polycam_explorer.atlas.report import ReportCancelled, write_report
from polycam_explorer.cli import main

N = 5
LABELS = {"img0": "c1", "img1": "c2", "img2": "c3"}


class Page(HTMLParser):
    """The report's images (attributes), the rows table's rows (cells: data-v or text) by file."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images, self.rows, self.tags = [], {}, []
        self._row = self._cell = None
        self._table = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self._table = attrs.get("id")
        elif tag == "tr" and self._table == "rows" and "data-file" in attrs:
            self._row = self.rows.setdefault(attrs["data-file"], [])
        elif tag == "td" and self._row is not None:
            self._cell = [attrs.get("data-v"), ""]
            self._row.append(self._cell)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        elif tag == "td":
            self._cell = None


def _model() -> pe.Classifier:
    return pe.Classifier(TinyNet().eval(), name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16),
                         class_names=[f"c{i}" for i in range(5)])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("atlas")
    model = _model()
    for seed in range(N):
        x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        pe.compute_mapset(model, x, progress=False).save(folder / f"img{seed}.mapset.npz")
    index = build_index(folder, labels=LABELS, progress=False)
    index.set_insdel("img0.mapset.npz", {"+": 0.25, "-": 0.125, "+-": 0.5})
    index.set_insdel("img3.mapset.npz", {"+-": -0.0625})
    index.close()
    return folder


@pytest.fixture
def index(folder):
    with pe.atlas.open_index(folder) as index:
        yield index


def _png(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,"), src[:40]
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_one_self_contained_file_with_a_decodable_picture_per_selected_row(index, tmp_path):
    chosen = index.query(sort="-confidence", limit=3)
    path = write_report(index, chosen, tmp_path / "report.html")
    assert path == tmp_path / "report.html" and os.listdir(tmp_path) == ["report.html"]  # one file, no leftovers
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text, re.IGNORECASE), "the report refers to an outside address"
    page = Page(text)
    # nothing is fetched: every src is a data URI, no stylesheet, font or script file is linked
    assert all(a["src"].startswith("data:") for t, a in page.tags if "src" in a)
    assert not [t for t, a in page.tags if t in ("link", "iframe", "object", "embed")]
    assert not [a for t, a in page.tags if "href" in a]
    overlays = {a["data-row"]: a for a in page.images if "data-row" in a}
    assert list(overlays) == [r.file for r in chosen] == list(page.rows)  # the selection, in its order
    for row in chosen:
        pixels = _png(overlays[row.file]["src"])
        assert pixels.shape == (16, 16, 3) and pixels.std() > 0  # a real picture, drawn at the input size
        assert (int(overlays[row.file]["width"]), int(overlays[row.file]["height"])) == (16, 16)
    photos = [a for a in page.images if "data-row" not in a and a["alt"] in {r.image for r in chosen}]
    assert len(photos) == 3 and all(_png(a["src"]).shape == (16, 16, 3) for a in photos)
    for row in index.rows():
        if row not in chosen:
            assert f'data-file="{row.file}"' not in text


def test_the_rows_numbers_are_the_index_numbers(index, tmp_path):
    text = write_report(index, index.rows(), tmp_path / "r.html").read_text()
    page = Page(text)
    rows = {r.file: r for r in index.rows()}
    assert set(page.rows) == set(rows)
    for file, cells in page.rows.items():
        row = rows[file]
        # number, image, photo, map, class, probability, label, correct, Ins-Del +, -, ±, context
        assert cells[1][1] == row.image and cells[4][1] == f"{row.pred_name} ({row.pred_class})"
        assert float(cells[5][0]) == pytest.approx(row.confidence) and cells[5][1] == f"{row.confidence:.3f}"
        assert cells[6][1] == (row.label or "—")
        assert cells[7][1] == {None: "—", True: "yes", False: "no"}[row.correct]
        for cell, variant in zip(cells[8:11], ("+", "-", "+-")):
            value = row.insdel(variant)
            assert (cell[0], cell[1]) == (("", "—") if value is None else (repr(value), f"{value:.3f}"))
        assert float(cells[11][0]) == pytest.approx(row.context)
    assert page.rows["img0.mapset.npz"][8][1] == "0.250" and page.rows["img3.mapset.npz"][10][1] == "-0.062"
    assert f"<b>{N} images</b>" in text and "tiny" in text and rows["img0.mapset.npz"].model_id in text
    assert "Englebert" in text and "ICPR 2022" in text


def test_the_aggregates_are_there(index, tmp_path):
    rows = index.rows()
    text = write_report(index, rows, tmp_path / "r.html", variant="+").read_text()
    page = Page(text)
    means = [a for a in page.images if re.fullmatch(r"(correct|wrong|no label) \(\d+\)", a["alt"])]
    assert means and all(_png(a["src"]).shape == (96, 96, 3) for a in means)
    n_by_kind = {}
    for a in means:
        kind, n = re.fullmatch(r"(.+) \((\d+)\)", a["alt"]).groups()
        n_by_kind[kind] = n_by_kind.get(kind, 0) + int(n)
    labelled = [r for r in rows if r.correct is not None]
    assert n_by_kind.get("correct", 0) + n_by_kind.get("wrong", 0) == len(labelled)
    assert n_by_kind["no label"] == N - len(labelled)
    overall = insdel_table(rows)[-1]
    assert overall.means["+-"] == pytest.approx((0.5 - 0.0625) / 2)
    assert f'data-v="{overall.means["+-"]!r}"' in text
    assert "Map (PCAM+)" in text


def test_written_atomically(index, tmp_path, monkeypatch):
    rows = index.rows()
    target = tmp_path / "r.html"
    target.write_text("the earlier report")

    def full_disk(fd):
        raise OSError(28, "No space left on device")
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full_disk)
        with pytest.raises(OSError, match="No space"):
            write_report(index, rows, target)
    assert target.read_text() == "the earlier report" and os.listdir(tmp_path) == ["r.html"]
    blocked = tmp_path / "a-folder.html"  # an unwritable target: a folder is in the way
    blocked.mkdir()
    with pytest.raises(OSError):
        write_report(index, rows, blocked)
    assert blocked.is_dir() and not list(blocked.iterdir())
    not_a_folder = tmp_path / "r.html" / "x.html"  # a file where the folder should be
    with pytest.raises(OSError):
        write_report(index, rows, not_a_folder)
    assert sorted(os.listdir(tmp_path)) == ["a-folder.html", "r.html"]


def test_bad_arguments_name_what_is_accepted(index, tmp_path):
    with pytest.raises(ValueError, match="variant"):
        write_report(index, index.rows(), tmp_path / "r.html", variant="++")
    with pytest.raises(ValueError, match="thumb_size"):
        write_report(index, index.rows(), tmp_path / "r.html", thumb_size=4)
    with pytest.raises(KeyError, match="nope"):
        write_report(index, ["nope.mapset.npz"], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_a_vanished_mapset_shows_its_indexed_thumbnail(folder, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("img0.mapset.npz", "img1.mapset.npz"):
        (copy / name).write_bytes((folder / name).read_bytes())
    with build_index(copy, progress=False) as index:
        rows = index.rows()
        (copy / "img1.mapset.npz").unlink()
        with pytest.warns(RuntimeWarning, match="img1.mapset.npz"):
            text = write_report(index, rows, tmp_path / "r.html", title="Two <cats>").read_text()
        page = Page(text)
        overlays = {a["data-row"]: _png(a["src"]) for a in page.images if "data-row" in a}
        assert set(overlays) == {"img0.mapset.npz", "img1.mapset.npz"}
        assert np.abs(overlays["img1.mapset.npz"].astype(int) - index.thumbnail("img1.mapset.npz")).max() <= 1
        assert "map set not found" in text and "<title>Two &lt;cats&gt;</title>" in text


def test_index_command_writes_the_report(folder, tmp_path, capsys):
    copy = tmp_path / "maps"
    copy.mkdir()
    for name in ("img2.mapset.npz", "img4.mapset.npz"):
        (copy / name).write_bytes((folder / name).read_bytes())
    report = tmp_path / "out" / "atlas.html"
    assert main(["index", str(copy), "--no-progress", "--report", str(report)]) == 0
    assert str(report) in capsys.readouterr().out
    assert set(Page(report.read_text()).rows) == {"img2.mapset.npz", "img4.mapset.npz"}
    assert main(["index", str(copy), "--report", str(report)]) == 0  # with progress: a bar of the rows
    err = capsys.readouterr().err
    assert "atlas report: 100%" in err and "2/2" in err


def test_progress_sees_every_row_and_the_total(index, tmp_path):
    rows = index.rows()
    seen = []
    write_report(index, rows, tmp_path / "r.html", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(k, N) for k in range(N + 1)]  # before the first row, then after each


@pytest.mark.parametrize("flag", ["event", "callable"])
def test_a_cancel_between_rows_leaves_nothing_and_the_earlier_file_whole(index, tmp_path, flag):
    target = tmp_path / "r.html"
    target.write_text("the earlier report")
    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if done == 2:  # set from another thread while the report runs, as the atlas's cancel button does
            threading.Thread(target=stop.set).start()
            assert stop.wait(10)

    with pytest.raises(ReportCancelled, match="cancelled after 2 of 5 rows"):
        write_report(index, index.rows(), target, progress=progress,
                     cancel=stop if flag == "event" else stop.is_set)
    assert seen == [0, 1, 2]  # no row loaded after the cancel
    assert target.read_text() == "the earlier report" and os.listdir(tmp_path) == ["r.html"]


def test_a_cancel_after_the_last_row_still_writes_nothing(index, tmp_path):
    stop = threading.Event()
    with pytest.raises(ReportCancelled):
        write_report(index, index.rows(), tmp_path / "r.html",
                     progress=lambda done, total: stop.set() if done == total else None, cancel=stop)
    assert os.listdir(tmp_path) == []


def test_bad_progress_and_cancel_are_named(index, tmp_path):
    with pytest.raises(TypeError, match="progress must be a callable"):
        write_report(index, index.rows(), tmp_path / "r.html", progress=3)
    with pytest.raises(TypeError, match="cancel must be"):
        write_report(index, index.rows(), tmp_path / "r.html", cancel=True)
    assert os.listdir(tmp_path) == []
