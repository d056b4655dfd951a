"""What the user looks at comes first (issue 10 §2, issue 11 item 3): foreground work holds back
the sweeps of images not on screen, and the image on screen is swept first. Real threads."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import polycam_explorer as pe
from polycam_explorer.scheduler import Priority


def test_background_work_waits_while_foreground_work_runs() -> None:
    priority = Priority()
    order = []
    inside, release = threading.Event(), threading.Event()

    def foreground() -> None:
        with priority.foreground():
            inside.set()
            release.wait(10)
            order.append("foreground done")

    def background() -> None:
        priority.wait_for_foreground()
        order.append("background went on")

    threading.Thread(target=foreground).start()
    assert inside.wait(10)
    waiting = threading.Thread(target=background)
    waiting.start()
    time.sleep(0.5)
    assert order == [] and waiting.is_alive()  # held back
    release.set()
    waiting.join(10)
    assert order == ["foreground done", "background went on"]


def test_a_stop_releases_a_waiting_background_sweep() -> None:
    priority, stop = Priority(), threading.Event()
    with priority.foreground():
        t = threading.Thread(target=priority.wait_for_foreground, args=(stop,))
        t.start()
        stop.set()
        t.join(5)
        assert not t.is_alive()


def _pictures(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(n)]


def test_sweeps_of_images_not_on_screen_pause_for_the_explorers_jobs(tiny_model, tmp_path) -> None:
    ex = pe.explore(_pictures(1), model=tiny_model, cache_dir=tmp_path, wait=True, panel_size=64)
    try:
        runner = ex.runner
        assert runner.priority is ex.jobs.priority and runner.on_screen() == "image 1"
        job = ex.jobs.job()
        started, release = threading.Event(), threading.Event()
        job.start(lambda: (started.set(), release.wait(20)))  # e.g. the faithfulness curves
        assert started.wait(10)
        runner.submit("other", _pictures(2)[1])  # not on screen: its sweep must wait
        time.sleep(1.5)
        assert "other" not in ex.mapsets or not ex.mapsets["other"].complete
        release.set()
        runner.wait(60)
        assert ex.mapsets["other"].complete
    finally:
        ex.close()


def test_the_image_on_screen_is_swept_before_the_queue(tiny_model, tmp_path) -> None:
    ex = pe.explore(_pictures(1), model=tiny_model, cache_dir=tmp_path, wait=True, panel_size=64)
    try:
        runner, done = ex.runner, []
        real = runner._run
        runner._run = lambda name, image, show: (done.append(name), real(name, image, show))
        runner.stop.set()  # hold the worker while the queue fills
        pictures = _pictures(4)
        with runner._lock:
            runner.queue += [("a", pictures[1], False), ("b", pictures[2], False), ("c", pictures[3], False)]
        runner.on_screen = lambda: "c"  # the user switched to c, still queued
        runner.stop.clear()
        runner.submit("d", pictures[0])
        runner.wait(60)
        assert done[0] == "c" and sorted(done) == ["a", "b", "c", "d"]
    finally:
        ex.close()


def test_time_left_follows_the_rate_so_far(monkeypatch) -> None:
    from polycam_explorer import scheduler

    now = [100.0]
    monkeypatch.setattr(scheduler.time, "monotonic", lambda: now[0])
    clock = scheduler.Clock()
    assert clock.left(0, 10) == ""  # no rate yet
    now[0] = 110.0
    assert clock.left(5, 10) == "about 10 s left"  # 10 s for 5 steps: 10 s for the other 5
    assert clock.left(1, 100) == "about 17 min left"  # 10 s a step, 99 steps
    assert clock.left(10, 10) == ""


def test_a_jobs_progress_and_the_sweep_label_say_the_time_left(tiny_model, tmp_path) -> None:
    ex = pe.explore(_pictures(1), model=tiny_model, cache_dir=tmp_path, wait=True, panel_size=64)
    try:
        job = ex.jobs.job()

        def work() -> None:
            job.report(0, 4)
            time.sleep(0.3)
            job.report(1)
            seen.append(job.time_left)
        seen: list = []
        job.start(work, block=True)
        assert seen and seen[0].startswith("about ") and seen[0].endswith("left")
        ex.store.set_progress(("x", 0, 100))
        time.sleep(0.2)
        ex.store.set_progress(("x", 50, 100))
        assert "left" in ex.progress_label.value
    finally:
        ex.close()


class SlowNet(torch.nn.Module):
    """A 128-channel coarsest layer and a pause per forward pass: a sweep of many slow batches."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 128, 3, stride=2, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(128, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.02)
        return self.fc(self.features(x).mean((2, 3)))


def _slow_model() -> pe.Classifier:
    return pe.Classifier(SlowNet().eval(), name="slow", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16))


def _until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def slow(tmp_path):
    """An explorer on the slow model, its first image swept; the model and three pictures."""
    model, pictures = _slow_model(), _pictures(3)
    ex = pe.explore(pictures[0], model=model, cache_dir=tmp_path, wait=True, panel_size=64, batch_size=4,
                    backend="eager")
    try:
        yield ex, model, pictures
    finally:
        ex.close()


def test_an_upload_preempts_the_running_sweep_which_resumes_to_the_same_maps(slow) -> None:
    ex, model, pictures = slow
    runner = ex.runner
    runner.submit("background", pictures[1])
    _until(lambda: "background" in ex.mapsets)  # its sweep is under way (first estimate shown)
    runner.submit("upload", pictures[2], show=True)
    _until(lambda: "upload" in ex.mapsets and ex.mapsets["upload"].complete)
    assert not ex.mapsets["background"].complete  # it paused, it did not finish first
    assert ex.state.image == "upload"
    runner.wait(120)
    paused = ex.mapsets["background"]
    assert paused.complete
    plain = pe.compute_mapset(model, pe.load_image(pictures[1], model), progress=False, backend="eager")
    for depth in range(1, len(plain.layers) + 1):
        torch.testing.assert_close(paused.saliency(0, "+-", depth), plain.saliency(0, "+-", depth))


def test_switching_to_a_queued_image_sweeps_it_now(slow) -> None:
    ex, _, pictures = slow
    runner, asked = ex.runner, []
    real = runner.look_at
    runner.look_at = lambda name: (asked.append(name), real(name))
    runner.submit("running", pictures[1])
    runner.submit("queued", pictures[2])
    _until(lambda: "running" in ex.mapsets)
    ex.state.image = "running"  # the app tells the runner what the user looks at
    assert asked[-1] == "running"
    runner.on_screen = lambda: "queued"  # as if the picker offered the queued image
    runner.look_at("queued")
    assert not any(item[0] == "queued" for item in runner.queue)  # taken out of the queue: swept now
    _until(lambda: "queued" in ex.mapsets and ex.mapsets["queued"].complete)
    assert not ex.mapsets["running"].complete
    runner.wait(120)
    assert ex.mapsets["running"].complete and not runner.busy


def test_the_progress_is_cleared_when_the_sweep_started_for_the_user_ends_last(slow) -> None:
    ex, _, pictures = slow
    runner, looking = ex.runner, ["queued"]
    runner.on_screen = lambda: looking[0]
    runner.submit("running", pictures[1])
    runner.submit("queued", pictures[2])
    _until(lambda: "running" in ex.mapsets)
    runner.look_at("queued")  # swept now, in its own thread
    _until(lambda: "queued" in ex.mapsets)
    looking[0] = "running"  # the user goes back: the worker's sweep ends first
    runner.wait(120)
    assert ex.mapsets["running"].complete and ex.mapsets["queued"].complete
    assert ex.store.progress is None  # nothing is being swept: no progress bar left behind
