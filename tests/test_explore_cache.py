"""pe.explore: background sweeps into the widget, the disk cache, partial map sets, uploads."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

import polycam_explorer as pe
from polycam_explorer import cache
from polycam_explorer.explorer import explore as explore_module
from polycam_explorer.explorer import frames
from polycam_explorer.explorer.frames import Look, Panel

SIZE = 64


def _images(n, seed=0, shape=(20, 24, 3)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def shown(ms, panel, look=Look(), size=(SIZE, SIZE)):
    return frames.zoom_and_fit(frames.frame(ms, panel, look), look.zoom, size)


def errors(explorer):
    return "color:#b00020" in explorer.status.value


@pytest.fixture
def opened():
    explorers = []
    yield explorers
    for ex in explorers:
        ex.close()


def test_explore_sweeps_every_image_and_caches_it(tiny_model, tmp_path, opened):
    images = _images(2)
    ex = pe.explore(images, model=tiny_model, cache_dir=tmp_path, wait=True, panel_size=SIZE)
    opened.append(ex)
    assert not errors(ex), ex.status.value
    assert list(ex.image_picker.options) == ["image 1", "image 2"]
    for name, image in zip(["image 1", "image 2"], images):
        ms = ex.mapsets[name]
        assert ms.complete and ms.size == (16, 16)
        assert torch.equal(ms.image, pe.load_image(image, tiny_model))
    assert ex.image_picker.value == "image 1"
    ms = ex.mapsets["image 1"]
    top = ms.topk(1)[0][0]
    assert ex.klass.value == top
    # the photo (24 x 20) at its own aspect ratio, the map drawn back onto it
    geo = frames.geometry(ms.size, ex.store.frame_size("image 1"), SIZE)
    expected = frames.panel_pixels(ms, Panel(top, "+-", 3, True), Look(), ex.store.picture("image 1", geo.work_size),
                                   None, geo, tuple(ex.canvases[0].size))
    assert ex.canvases[0].pixels.shape[:2] == (53, 64)
    assert np.array_equal(ex.canvases[0].pixels, expected)
    assert ex.status.value == ""  # the "probing…" note is gone
    assert ex.progress.layout.display == "none" and ex.stop_button.layout.display == "none"
    files = sorted(tmp_path.glob("*.mapset.npz"))
    assert len(files) == 2
    key = cache.cache_key(tiny_model, None, pe.load_image(images[0], tiny_model))
    assert (tmp_path / f"{key}.mapset.npz") in files


def test_second_explore_loads_from_the_disk_cache_without_forward_passes(tiny_model, tmp_path, opened,
                                                                         monkeypatch):
    images = _images(2, seed=3)
    first = pe.explore(images, model=tiny_model, cache_dir=tmp_path, wait=True, panel_size=SIZE)
    opened.append(first)

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass on a cached image")

    # not the model's own forward or hooks: they are part of its identity (model_fingerprint)
    monkeypatch.setattr(torch.nn.functional, "conv2d", no_forward)
    monkeypatch.setattr(explore_module, "iter_mapset", no_forward)
    second = pe.explore(images, model=tiny_model, cache_dir=tmp_path, wait=True, panel_size=SIZE)
    opened.append(second)
    assert not errors(second), second.status.value
    assert list(second.mapsets) == ["image 1", "image 2"]
    for name in second.mapsets:
        cached, fresh = second.mapsets[name], first.mapsets[name]
        assert cached.complete
        assert torch.allclose(cached.probs, fresh.probs, atol=1e-3)
        assert torch.allclose(cached.saliency(2, "-"), fresh.saliency(2, "-"), atol=0.02)
    assert second.canvases[0].pixels is not None and second.klass.value == first.klass.value


def test_a_damaged_cache_file_is_recomputed(tiny_model, tmp_path, opened):
    image = _images(1, seed=5)[0]
    key = cache.cache_key(tiny_model, None, pe.load_image(image, tiny_model))
    (tmp_path / f"{key}.mapset.npz").write_bytes(b"not a zip file")
    ex = pe.explore(image, model=tiny_model, cache_dir=tmp_path, wait=True, panel_size=SIZE)
    opened.append(ex)
    assert not errors(ex), ex.status.value
    assert ex.mapsets["image 1"].complete
    assert pe.MapSet.load(tmp_path / f"{key}.mapset.npz").complete  # rewritten


def test_partial_mapset_shows_the_depths_probed_so_far(tiny_model, tiny_x, opened):
    ex = pe.Explorer({}, size=SIZE)
    opened.append(ex)
    assert "waiting" in ex.status.value
    sweep = pe.iter_mapset(tiny_model, tiny_x, progress=False)
    ms = next(sweep)
    assert ms.depth_available == 1
    ex.add_mapset("img", ms)
    top = ms.topk(1)[0][0]
    assert "1..1 of 3" in ex.status.value
    # the slider offers only the depths probed; the state keeps the depth asked for (full depth)
    assert [v for _, v in ex.depth.options] == [1] and ex.depth.value == 1
    assert ex.state.depth == 3 and ex.main_panel().depth == 1  # clamped to what is probed
    assert "depth 3 once probed" in ex.controls.depth_label.value
    assert np.array_equal(ex.canvases[0].pixels, shown(ms, Panel(top, "+-", 1, True)))
    assert "depth 1/3" in ex.captions[0].value
    ex.recursion.click(4 + 2 * 76 + 30, 30)  # depth 3 is not there yet: nothing happens
    assert ex.state.depth == 3
    ex.state.depth = 2
    assert ex.main_panel().depth == 1 and ex.depth.value == 1 and not errors(ex)
    ex.compare.value = "depths"  # pinned depths are clamped too
    assert [p.depth for p in ex.panels()] == [1, 1, 1] and not errors(ex)
    ex.compare.value = "none"
    ex.state.depth = 3

    next(sweep)
    ex.refresh("img")
    assert "1..2 of 3" in ex.status.value
    assert [v for _, v in ex.depth.options] == [1, 2] and ex.depth.value == 2  # moves towards depth 3
    assert np.array_equal(ex.canvases[0].pixels, shown(ms, Panel(top, "+-", 2, True)))
    assert not errors(ex)

    for _ in sweep:
        pass
    ex.refresh("img")
    assert ms.complete and ex.status.value == ""
    assert [v for _, v in ex.depth.options] == [1, 2, 3] and ex.depth.value == 3
    assert "once probed" not in ex.controls.depth_label.value
    assert np.array_equal(ex.canvases[0].pixels, shown(ms, Panel(top, "+-", 3, True)))


def _png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_explains_a_new_image(tiny_model, tmp_path, opened):
    ex = pe.explore(_images(1, seed=7), model=tiny_model, cache_dir=tmp_path, wait=True, panel_size=SIZE)
    opened.append(ex)
    assert ex.upload.layout.display is None  # offered once a runner is attached
    pixels = _images(1, seed=8, shape=(16, 16, 3))[0]
    ex._on_upload({"new": [{"name": "x.png", "content": memoryview(_png(pixels))}]})
    ex.runner.wait(30)
    assert not errors(ex), ex.status.value
    assert list(ex.image_picker.options) == ["image 1", "x"]
    ms = ex.mapsets["x"]
    assert ms.complete and torch.equal(ms.image, pe.load_image(pixels, tiny_model))
    assert ex.image_picker.value == "x"  # an uploaded image is shown as soon as it has a map
    top = ms.topk(1)[0][0]
    assert ex.klass.value == top
    assert np.array_equal(ex.canvases[0].pixels, shown(ms, Panel(top, "+-", 3, True)))
    assert len(list(tmp_path.glob("*.mapset.npz"))) == 2


def test_upload_without_a_runner_or_file_does_nothing():
    ex = pe.Explorer({}, size=SIZE)
    try:
        ex._on_upload({"new": [{"name": "x.png", "content": _png(np.zeros((16, 16, 3), np.uint8))}]})
        ex._on_upload({"new": []})
        assert ex.mapsets == {} and not errors(ex)
    finally:
        ex.close()


def test_bad_upload_is_shown_not_raised(tiny_model, tmp_path, opened):
    ex = pe.explore(_images(1, seed=9), model=tiny_model, cache_dir=tmp_path, wait=True, panel_size=SIZE)
    opened.append(ex)
    ex._on_upload({"new": [{"name": "notes.txt", "content": b"this is not an image"}]})
    assert errors(ex)
    assert list(ex.mapsets) == ["image 1"]


def test_an_image_submitted_as_the_worker_finishes_is_still_explained(tiny_model, tmp_path, opened):
    import threading

    ex = pe.explore(_images(1, seed=10), model=tiny_model, cache_dir=tmp_path, wait=True, panel_size=SIZE)
    opened.append(ex)
    at_end, go_on = threading.Event(), threading.Event()
    real = ex.store.set_progress  # the worker reports progress to the store, not to a view

    def slow_end(state):  # hold the worker just as it finds its queue empty
        if state is None and not at_end.is_set():
            at_end.set()
            go_on.wait(10)
        real(state)

    ex.store.set_progress = slow_end
    a, b = _images(2, seed=11)
    ex.runner.submit("a", a)
    assert at_end.wait(30)
    ex.runner.submit("b", b)
    go_on.set()
    ex.runner.wait(30)
    assert not errors(ex), ex.status.value
    assert set(ex.mapsets) == {"image 1", "a", "b"} and ex.mapsets["b"].complete
    assert ex.progress.layout.display == "none"


def test_wait_for_returns_the_complete_map_set_and_refuses_unknown_names(tiny_model, tmp_path, opened):
    ex = pe.explore(_images(2, seed=3), model=tiny_model, cache_dir=tmp_path, panel_size=SIZE)
    opened.append(ex)
    ms = ex.wait_for("image 2", timeout=60)
    assert ms.complete and ms is ex.mapsets["image 2"]
    ex.runner.wait(30)
    with pytest.raises(ValueError, match="no complete map set 'nope'"):
        ex.wait_for("nope")


def test_cancel_drops_queued_images(tiny_model, tmp_path, opened):
    ex = pe.explore(_images(1, seed=3), model=tiny_model, cache_dir=tmp_path, panel_size=SIZE, wait=True)
    opened.append(ex)
    ex.runner.stop.set()  # hold: nothing starts until submit clears it
    ex.runner.queue.append(("queued", _images(1, seed=4)[0], False))
    ex.runner.cancel()
    assert not ex.runner.queue


def test_a_closed_explorer_sweeps_nothing_more(tiny_model, tmp_path):
    """After close, an image submitted (by code, or an upload decoded late) is refused, not swept
    in the background of an explorer nobody sees; a sweep stopped by the stop button does restart."""
    ex = pe.explore(_images(1, seed=3), model=tiny_model, cache_dir=tmp_path, panel_size=SIZE, wait=True)
    runner = ex.runner
    runner.cancel()  # the stop button: later images still sweep
    runner.submit("again", _images(1, seed=5)[0])
    runner.wait(30)
    assert "again" in ex.mapsets
    ex.close()
    with pytest.raises(RuntimeError, match="cannot sweep 'late': this explorer is closed"):
        runner.submit("late", _images(1, seed=4)[0])
    assert not runner.busy and not runner.queue and "late" not in ex.store.names()


def test_a_successful_draw_clears_an_earlier_error(tiny_model, tmp_path, opened):
    ex = pe.explore(_images(1, seed=3), model=tiny_model, cache_dir=tmp_path, panel_size=SIZE, wait=True)
    opened.append(ex)
    ex.show_error(ValueError("boom"))
    assert errors(ex)
    ex.variant.value = "-"
    assert not errors(ex) and ex.status.value == ""


def test_the_cache_key_tells_the_layer_rules_apart(default_model):
    """A map set discovered with one rule is never served for the other (same weights, same image)."""
    x = torch.zeros(1, 3, 32, 32)
    main_path = pe.load_model(layer_rule="main-path")
    assert cache.cache_key(default_model, None, x) != cache.cache_key(main_path, None, x)
    assert cache.cache_key(default_model, ["bn2"], x) == cache.cache_key(main_path, ["bn2"], x)


def test_the_default_map_set_uses_the_models_layers(default_model):
    x = pe.load_image(pe.cache.sample_images()[1], default_model, size=64)
    ms = pe.compute_mapset(default_model, x, progress=False)
    assert ms.layers == pe.find_target_layers(default_model, (64, 64))
    assert ms.layers[0] == "blocks.1.0.bn1" and all(float(a.min()) >= 0 for a in ms.activations)


def test_explore_takes_a_backend_and_refuses_an_unknown_one(tiny_model, tmp_path, opened):
    ex = pe.explore(_images(1, seed=5), model=tiny_model, cache_dir=tmp_path, wait=True, panel_size=SIZE,
                    backend="eager")
    opened.append(ex)
    assert not errors(ex) and ex.mapsets["image 1"].complete
    assert ex.mapsets["image 1"].stats["backend"] == "eager"
    with pytest.raises(ValueError, match="backend"):
        pe.explore(_images(1), model=tiny_model, cache_dir=tmp_path, backend="warp-drive")
