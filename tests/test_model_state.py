"""The user's model is left as found: under real threads sharing one model, and between the
yields of iter_mapset (issue 9, items 7 and 8)."""
from __future__ import annotations

import threading

import torch

import polycam_explorer as pe
from conftest import TinyNet


def _flags(net: torch.nn.Module) -> tuple[list[bool], list[bool]]:
    return [m.training for m in net.modules()], [p.requires_grad for p in net.parameters()]


def _user_model() -> pe.Classifier:
    """A model in training mode with mixed requires_grad flags, as a user's might be mid-training."""
    net = TinyNet().train()
    net.features[0].weight.requires_grad_(False)
    net.features[2].eval()
    return pe.Classifier(net, name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16))


def _gate(net: torch.nn.Module, name: str, on_first_call) -> None:
    """Call ``on_first_call()`` in the first forward pass that thread ``name`` makes."""
    seen = []

    def hook(_module, _inputs):
        if threading.current_thread().name == name and not seen:
            seen.append(1)
            on_first_call()
    net.register_forward_pre_hook(hook)


def test_two_threads_on_one_model_leave_every_flag_as_found(tiny_x) -> None:
    """Thread A starts first and ends first, thread B starts second and ends last: the order in
    which saving and restoring flags per call left the model frozen in eval mode for good."""
    model = _user_model()
    before = _flags(model.net)
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()
    _gate(model.net, "A", lambda: (a_in.set(), b_in.wait(10)))
    _gate(model.net, "B", lambda: (b_in.set(), a_done.wait(10)))
    errors, seen_inside = [], []

    def run_a() -> None:
        try:
            pe.insertion(model, tiny_x, torch.rand(16, 16), 1, n_steps=8)
            seen_inside.append(_flags(model.net))  # B still holds it: frozen, in eval mode
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            a_done.set()

    def run_b() -> None:
        try:
            pe.compute_mapset(model, tiny_x, progress=False)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    a = threading.Thread(target=run_a, name="A")
    b = threading.Thread(target=run_b, name="B")
    a.start()
    assert a_in.wait(10)
    b.start()
    a.join(30)
    b.join(30)
    assert not errors and not a.is_alive() and not b.is_alive()
    assert seen_inside[0][0] == [False] * len(before[0]) and not any(seen_inside[0][1])
    assert _flags(model.net) == before


def test_many_threads_at_random_overlaps_restore_the_flags(tiny_x) -> None:
    model = _user_model()
    before = _flags(model.net)
    start = threading.Barrier(6)
    errors = []

    def work(i: int) -> None:
        try:
            start.wait(10)
            for _ in range(3):
                if i % 2:
                    pe.compute_mapset(model, tiny_x, progress=False, batch_size=3 + i)
                else:
                    pe.deletion(model, tiny_x, torch.rand(16, 16), i % 5, n_steps=4 + i, batch_size=2)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert _flags(model.net) == before


def test_nested_use_of_a_wrapper_and_its_network_restores_the_flags(tiny_x) -> None:
    from polycam_explorer.model_state import inference_state

    model = _user_model()
    before = _flags(model.net)
    with inference_state(model):
        with inference_state(model.net):
            assert not model.net.training and not torch.is_grad_enabled()
        assert not model.net.training  # the outer holder still holds it
    assert _flags(model.net) == before and torch.is_grad_enabled()


def test_iter_mapset_changes_nothing_between_its_yields(tiny_x) -> None:
    model = _user_model()
    before = _flags(model.net)
    steps = 0
    for ms in pe.iter_mapset(model, tiny_x, progress=False):
        steps += 1
        # the caller's loop body runs with its own grad mode and the model as the user left it
        assert torch.is_grad_enabled()
        assert _flags(model.net) == before
        if steps == 2:
            break
    assert steps == 2 and ms.depth_available == 2
    assert torch.is_grad_enabled() and _flags(model.net) == before
    # a generator abandoned without being closed changes nothing either
    gen = pe.iter_mapset(model, tiny_x, progress=False)
    next(gen)
    assert torch.is_grad_enabled() and _flags(model.net) == before
    del gen
    assert _flags(model.net) == before


def test_flags_are_restored_after_an_error_in_the_forward_pass(tiny_x) -> None:
    model = _user_model()
    before = _flags(model.net)
    calls = []

    def fail(_module, _inputs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")
    handle = model.net.register_forward_pre_hook(fail)
    try:
        try:
            pe.compute_mapset(model, tiny_x, progress=False, batch_size=2)
        except RuntimeError:
            pass
    finally:
        handle.remove()
    assert len(calls) == 5 and _flags(model.net) == before
