"""What the explorer pushes to the browser per change: only frames that differ from the one on
screen, computed on one torch thread (small tensors: a thread pool's hand-offs cost more than the
work on a busy CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import polycam_explorer as pe
from polycam_explorer.explorer.canvas import FrameCanvas
from polycam_explorer.explorer.jobs import Draws


@pytest.fixture
def canvas():
    c = FrameCanvas((4, 6))
    yield c
    c.canvas.close()


def frame(value: int) -> np.ndarray:
    return np.full((4, 6, 3), value, np.uint8)


def test_a_frame_equal_to_the_one_on_screen_is_not_sent_again(canvas):
    canvas.draw(frame(10))
    canvas.draw(frame(10))
    assert canvas.frames_sent == 1
    canvas.draw(frame(11))
    assert canvas.frames_sent == 2 and canvas.pixels[0, 0, 0] == 11
    canvas.draw(frame(11), box=(0, 0, 2, 2))  # the same pixels with a selection box: another frame
    assert canvas.frames_sent == 3


def test_an_array_changed_in_place_is_sent(canvas):
    pixels = frame(10)
    canvas.draw(pixels)
    pixels[1, 1] = 200  # the caller reused its array
    canvas.draw(pixels)
    assert canvas.frames_sent == 2


def test_a_resized_canvas_gets_its_frame_again(canvas):
    canvas.draw(frame(10))
    canvas.resize((5, 6))  # the browser blanks a resized canvas
    canvas.resize((4, 6))
    canvas.draw(frame(10))
    assert canvas.frames_sent == 2


@pytest.mark.parametrize("fails", [False, True])
def test_draws_run_on_one_torch_thread_and_restore_the_count(fails):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen, errors = [], []

        def draw():
            seen.append(torch.get_num_threads())
            if fails:
                raise RuntimeError("drawing failed")

        Draws(on_error=errors.append).request(draw)
        assert seen == [1] and torch.get_num_threads() == 2
        assert len(errors) == int(fails)
    finally:
        torch.set_num_threads(before)


def test_a_change_that_leaves_the_picture_as_it_is_sends_no_frame(ms):
    explorer = pe.Explorer(ms, size=96)
    try:
        canvas = explorer.canvases[0]
        sent = canvas.frames_sent
        assert explorer.state.mode == "overlay"
        explorer.state.other_class = (explorer.state.other_class + 1) % ms.num_classes  # drawn by "contrast" only
        assert canvas.frames_sent == sent
        explorer.state.mode = "heatmap"
        assert canvas.frames_sent == sent + 1
    finally:
        explorer.close()



def test_the_hidden_against_list_follows_the_image_when_shown(ms, tiny_model, tiny_x):
    """Re-listing every class costs the browser tens of ms: the "against" dropdown (shown by the
    contrast view only) gets the image's list when it is shown, with the state's class selected."""
    other = pe.compute_mapset(tiny_model, -tiny_x, progress=False)
    explorer = pe.Explorer({"a": ms, "b": other}, size=96)
    try:
        first = explorer.other_class.options
        assert first == explorer.klass.options  # the first image: listed at once
        explorer.state.image = "b"
        assert explorer.klass.options != first and explorer.other_class.options == first  # hidden: kept
        explorer.state.mode = "contrast"
        assert explorer.other_class.options == explorer.klass.options
        assert explorer.other_class.value == explorer.state.other_class == other.topk(2)[1][0]
        explorer.state.image = "a"  # shown: follows at once
        assert explorer.other_class.options == explorer.klass.options == first
    finally:
        explorer.close()
