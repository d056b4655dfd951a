"""The explorer's design holds: no import circle, views that know only (state, store, jobs), one
observable state with validators, workers that write the store, drawing one frame at a time."""
from __future__ import annotations

import ast
import math
import threading
import time
from pathlib import Path

import pytest
import traitlets
from conftest import TinyNet

import polycam_explorer as pe
from polycam_explorer.explorer.jobs import Draws
from polycam_explorer.explorer.state import ViewState

PACKAGE = Path(pe.__file__).parent
EXPLORER = PACKAGE / "explorer"
SIZE = 64
TOP = 3


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The polycam_explorer modules ``path`` imports (at any level, in functions too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # "from . import frames"
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_no_import_circle_in_the_explorer():
    graph = {_module_name(p): _imports(p) for p in EXPLORER.rglob("*.py")}
    inside = {k: {m for m in v if m.startswith("polycam_explorer.explorer")} for k, v in graph.items()}
    # a package's __init__ importing its own modules is not a circle through them
    for k in inside:
        if k.endswith("explorer") or k.endswith("views"):
            inside[k] = set()
    assert _cycle(inside) == []


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_views_know_state_store_and_jobs_only():
    for path in (EXPLORER / "views").glob("*.py"):
        imported = _imports(path)
        assert "polycam_explorer.explorer.app" not in imported, path.name
        others = {m for m in imported if m.startswith("polycam_explorer.explorer.views.")}
        assert others == set(), f"{path.name} imports another view: {others}"
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # no reaching into another object's private members
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                assert isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"), \
                    f"{path.name}:{node.lineno} reaches into {ast.unparse(node)}"


def test_the_engine_does_not_import_widgets():
    entry_points = ("__init__.py", "cli.py")  # above the explorer: they may open it
    for path in PACKAGE.glob("*.py"):
        if path.name in entry_points:
            continue
        assert not any(m.startswith("polycam_explorer.explorer") for m in _imports(path)), path.name
        assert "ipywidgets" not in path.read_text(), path.name


# ----- the state -------------------------------------------------------------------------------
@pytest.fixture
def explorer(ms, tmp_path):
    ex = pe.Explorer(ms, size=SIZE, export_dir=tmp_path)
    yield ex
    ex.close()


def test_setting_the_state_moves_the_controls_and_the_picture(explorer, ms):
    seen = []
    explorer.state.observe(lambda change: seen.append((change["name"], change["new"])), names=["variant", "depth"])
    sent = explorer.canvases[0].frames_sent
    explorer.state.variant = "-"
    assert explorer.variant.value == "-" and seen == [("variant", "-")]
    assert explorer.canvases[0].frames_sent == sent + 1  # one change, one frame
    explorer.state.variant = "±"
    assert explorer.state.variant == "+-" and explorer.variant.value == "+-"
    explorer.depth.value = 1  # and a control moves the state
    assert explorer.state.depth == 1 and seen[-1] == ("depth", 1)
    explorer.state.mode = "heatmap"
    assert explorer.mode.value == "heatmap"


@pytest.mark.parametrize("name, value, word", [
    ("variant", "x", "variant"), ("opacity", math.nan, "opacity"), ("opacity", math.inf, "opacity"),
    ("opacity", 1.5, "opacity"), ("depth", 0, "depth"), ("depth", 4, "depth"), ("klass", 5, "klass"),
    ("mode", "sepia", "mode"), ("cmap", "no-such-map", "colormap"), ("zoom", (0, 0, 20, 4), "zoom"),
    ("compare", "everything", "compare"), ("pins", [{"colour": 1}, {}], "panel"),
])
def test_the_state_refuses_bad_values_and_keeps_drawing(explorer, name, value, word):
    before = getattr(explorer.state, name)
    with pytest.raises(traitlets.TraitError, match=word):
        setattr(explorer.state, name, value)
    assert getattr(explorer.state, name) == before
    explorer.state.variant = "+"
    assert "Error" not in explorer.status.value


def test_a_state_alone_has_documented_attributes():
    doc = ViewState.__doc__
    for name in ("image", "klass", "other_class", "variant", "depth", "lnorm", "mode", "cmap", "opacity", "zoom",
                 "pins", "beside", "compare"):
        assert f"{name} (" in doc or f", {name} (" in doc or f"{name}," in doc, name
    state = ViewState()
    assert state.variant == "+-" and state.opacity == 0.5


# ----- drawing one frame at a time -------------------------------------------------------------
def test_draws_run_one_at_a_time_and_the_latest_wins():
    errors, inside, log = [], [0], []

    def draw():
        inside[0] += 1
        assert inside[0] == 1, "two draws at once"
        time.sleep(0.01)
        log.append(1)
        inside[0] -= 1

    draws = Draws(on_error=errors.append)
    threads = [threading.Thread(target=lambda: [draws.request(draw) for _ in range(5)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and 1 <= len(log) <= 20
    with draws.held():
        draws.request(draw)
        draws.request(draw)
        assert len(log) <= 20
        n = len(log)
    assert len(log) == n + 1  # two requests while held: one draw


def test_workers_write_the_store_and_never_call_a_view(ms, tiny_model, monkeypatch):
    """A baseline computed in a thread reaches the canvas through the store's event."""
    from polycam_explorer.explorer.views.main import MainView

    ex = pe.Explorer(ms, model=tiny_model, size=SIZE)
    drawn_in = []
    real = MainView.draw

    def spy(self):
        drawn_in.append(threading.current_thread().name)
        real(self)

    monkeypatch.setattr(MainView, "draw", spy)
    events = []
    ex.store.subscribe(lambda e: events.append((e.kind, e.what)))
    try:
        ex.beside.value = "gradcam"
        end = time.monotonic() + 60
        while ("result", "baseline") not in events and time.monotonic() < end:
            time.sleep(0.02)
        assert ("result", "baseline") in events
        time.sleep(0.1)
        assert "Grad-CAM" in ex.captions[1].value and "computing" not in ex.captions[1].value
        assert drawn_in  # the main view drew on the store's event
    finally:
        ex.close()


# ----- small things a researcher sees ----------------------------------------------------------
@pytest.fixture
def two(ms, tiny_x):
    model = pe.Classifier(TinyNet(seed=2).eval(), name="tiny2", mean=(0.5,) * 3, std=(0.5,) * 3,
                          input_size=(16, 16), class_names=[f"c{i}" for i in range(5)])
    other = pe.compute_mapset(model, -tiny_x, progress=False)
    ex = pe.Explorer({"cat": ms, "dog": other}, size=SIZE)
    yield ex
    ex.close()


def test_the_hover_value_of_the_previous_image_is_cleared(two):
    two.main.hover_at(0, 9, 45)
    assert "saliency" in two.hover.value
    two.image_picker.value = "dog"
    assert "saliency" not in two.hover.value


def test_an_unknown_class_name_in_the_search_box_says_so(explorer):
    explorer.search.value = "no such class"
    assert "no class named" in explorer.search_note.value and "no such class" in explorer.search_note.value
    assert explorer.klass.value == TOP
    explorer.search.value = "c"  # several classes match: they are named
    assert "5 classes match" in explorer.search_note.value and explorer.klass.value == TOP
    explorer.search.value = "C2"  # a unique part of a name, any case, is enough
    assert explorer.klass.value == 2 and explorer.search_note.value == ""


def test_the_faithfulness_bar_is_empty_for_a_class_without_curves(ms, tiny_model):
    ex = pe.Explorer(ms, model=tiny_model, size=SIZE)
    try:
        ex.curves.n_steps = 8
        ex.curves.compute(block=True)
        assert ex.curves.progress.value == ex.curves.progress.max == 16
        ex.klass.value = 0  # no curves for this class
        assert ex.curves.progress.value == 0 and len(ex.curves.ins_line.y) == 0
        ex.klass.value = TOP  # back: its curves and a full bar
        assert ex.curves.progress.value == ex.curves.progress.max and len(ex.curves.ins_line.y) == 8
    finally:
        ex.close()


def test_the_depth_label_is_shown_whole(explorer, ms):
    explorer.depth.value = 2
    label = explorer.controls.depth_label.value
    assert "2: features.3 (8×8)" in label  # in a widget of its own, not the slider's narrow readout
    assert explorer.depth.readout is False
    assert explorer.upload.layout.width == "auto"  # "explain an image" is not cut either


def test_the_curves_key_does_not_cover_the_curves(ms, tiny_model):
    from polycam_explorer.explorer.views.faithfulness import DELETION_COLOR, INSERTION_COLOR

    ex = pe.Explorer(ms, model=tiny_model, size=SIZE)
    try:
        assert not ex.curves.ins_line.display_legend and not ex.curves.del_line.display_legend
        assert INSERTION_COLOR in ex.curves.legend.value and DELETION_COLOR in ex.curves.legend.value
        assert list(ex.curves.ins_line.colors) == [INSERTION_COLOR] and list(ex.curves.del_line.colors) == [DELETION_COLOR]
    finally:
        ex.close()
