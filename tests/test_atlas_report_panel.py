"""The atlas's report button writes in a background thread: the button is disabled while it runs,
the grid still changes page, the progress says rows done of all and the time left, cancel leaves
no file, the end shows the path; with rows slowed by a gate the test opens one row at a time (real
threads, no sleeps)."""
from __future__ import annotations

import threading
import time

import pytest
import torch
from conftest import TinyNet

import polycam_explorer as pe
from polycam_explorer.atlas import build_index, report
from polycam_explorer.atlas.widget import Atlas

N = 6


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("atlas")
    model = pe.Classifier(TinyNet().eval(), name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16),
                          class_names=[f"c{i}" for i in range(5)])
    for seed in range(N):
        x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * (1 + seed)
        pe.compute_mapset(model, x, progress=False).save(folder / f"img{seed}.mapset.npz")
    build_index(folder, progress=False).close()
    return folder


@pytest.fixture
def atlas(folder, tmp_path):
    widget = Atlas(folder, page_size=2, columns=2, export_dir=tmp_path / "exports")
    yield widget
    widget.close()


class Gate:
    """Each report row waits for a permit (:meth:`let`); :meth:`wait_begun` waits for a row to begin."""

    def __init__(self) -> None:
        self.permits, self.begun = threading.Semaphore(0), threading.Semaphore(0)

    def let(self, rows: int = 1) -> None:
        for _ in range(rows):
            self.permits.release()

    def wait_begun(self) -> None:
        assert self.begun.acquire(timeout=30), "no report row began"


@pytest.fixture
def gate(atlas, monkeypatch):
    """Report rows that wait for the test (torn down before the atlas: every row let through)."""
    gate, real = Gate(), report._pictures

    def slow(*args):
        gate.begun.release()
        assert gate.permits.acquire(timeout=30), "the test let no row through"
        return real(*args)

    monkeypatch.setattr(report, "_pictures", slow)
    yield gate
    gate.let(100)


def _exports(atlas: Atlas) -> list[str]:
    return sorted(p.name for p in atlas.export_dir.iterdir()) if atlas.export_dir.exists() else []


def test_the_report_runs_in_the_background_while_the_grid_changes_page(atlas, gate):
    panel = atlas.report
    atlas.report.button.click()  # returns while the first row waits: the old code blocked here
    gate.wait_begun()
    assert panel.job.running and panel.button.disabled and not panel.cancel_button.disabled
    assert panel.progress.layout.display != "none" and f"0 of {N} images" in panel.progress_text.value
    first = [item.file for item in atlas.items]
    atlas.next.click()  # the grid stays usable
    assert atlas.page.value == 2 and [item.file for item in atlas.items] != first and panel.job.running
    assert atlas.export_report() is None and "being written" in atlas.status.value  # one report at a time
    gate.let()
    gate.wait_begun()  # the second row begun: one done
    assert panel.progress.value == 1 and panel.progress.max == N
    assert f"1 of {N} images" in panel.progress_text.value and "s left" in panel.progress_text.value
    gate.let(N)
    panel.wait(30)
    assert not panel.job.running and not panel.button.disabled and panel.cancel_button.disabled
    assert panel.progress.layout.display == "none" and panel.progress_text.value == ""
    assert _exports(atlas) == ["atlas_report_1.html"] and panel.path == atlas.export_dir / "atlas_report_1.html"
    assert str(panel.path) in panel.link.value and "download" in panel.link.value
    assert f"report of {N} images written" in atlas.status.value
    assert panel.path.read_text().count('data-file="') == N


def test_cancel_stops_the_report_and_leaves_no_file(atlas, gate):
    panel = atlas.report
    atlas.report.button.click()
    gate.wait_begun()
    gate.let()
    gate.wait_begun()  # in the second row
    panel.cancel_button.click()
    gate.let(N)
    panel.wait(30)
    assert not panel.job.running and not panel.button.disabled and panel.cancel_button.disabled
    assert "report cancelled" in atlas.status.value and "no file written" in atlas.status.value
    assert _exports(atlas) == [] and panel.path is None and panel.link.value == ""
    assert panel.job.done <= 2  # no row after the one under way


def test_closing_the_atlas_stops_a_running_report(atlas, gate):
    atlas.report.button.click()
    gate.wait_begun()
    closing = threading.Thread(target=atlas.close)
    closing.start()
    end = time.monotonic() + 30
    while not atlas.report.job.stop.is_set() and time.monotonic() < end:  # close asked the report to stop
        time.sleep(0.01)
    gate.let(N)
    closing.join(30)
    assert not closing.is_alive() and not atlas.report.job.running and _exports(atlas) == []


def test_block_returns_the_path_and_an_error_goes_to_the_status_line(atlas, monkeypatch):
    path = atlas.export_report(block=True)
    assert path is not None and path.is_file() and atlas.report.path == path and str(path) in atlas.report.link.value

    def broken(*args):
        raise RuntimeError("the map set reader broke")

    monkeypatch.setattr(report, "_pictures", broken)
    assert atlas.export_report(block=True) is None
    assert "report not written" in atlas.status.value and "the map set reader broke" in atlas.status.value
    assert _exports(atlas) == [path.name] and atlas.report.path is None and not atlas.report.button.disabled
