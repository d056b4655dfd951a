"""``evaluate`` fills the atlas index: after ``generate(save_mapsets=True)``, each row's Ins-Del per
variant is the image's insertion AUC minus deletion AUC of its full-depth map (end to end with the
tiny model); rows of another model, class or input size, and per-depth maps, are left alone."""
from __future__ import annotations

import csv

import pytest

from polycam_explorer import evaluation
from polycam_explorer.atlas import open_index
from polycam_explorer.atlas.evaluated import Score, record_insdel
from polycam_explorer.atlas.store import FILE_NAME

N_STEPS = 8
NAMES = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg")
pytestmark = pytest.mark.usefixtures("own_cache")


@pytest.fixture
def images(sample_folder):
    return sample_folder(*(name[:-4] for name in NAMES))


def _aucs(out, kind: str, method: str) -> dict[str, float]:
    rows = list(csv.reader(open(out / f"{kind}_auc_tiny_{method}.csv")))[1:]
    return {r[0]: float(r[1]) for r in rows}


def _insdel(out, method: str) -> dict[str, float]:
    ins, dele = _aucs(out, "ins", method), _aucs(out, "del", method)
    return {n: ins[n] - dele[n] for n in ins}


def _evaluate(model, images, out, *methods):
    return evaluation.evaluate(model, images, [out / f"tiny_{m}.npz" for m in methods], out, n_steps=N_STEPS,
                               batch_size=16, progress=False)


def test_evaluate_records_each_images_insdel_in_the_index(tiny_model, images, tmp_path):
    out = tmp_path / "out"
    evaluation.generate(tiny_model, images, ["pcam+", "pcam-", "pcam+-"], out, save_mapsets=True,
                        all_depths=True, progress=False)
    with open_index(out / "mapsets") as index:
        assert len(index) == len(NAMES) and all(r.insdel(v) is None for r in index.rows() for v in "+-")

    _evaluate(tiny_model, images, out, "pcampm0")  # a depth-1 map is not the row's (full-depth) map
    with open_index(out / "mapsets") as index:
        assert all(r.insdel_pm is None for r in index.rows())

    _evaluate(tiny_model, images, out, "pcampm")
    expected = _insdel(out, "pcampm")
    with open_index(out / "mapsets") as index:
        rows = {r.image: r for r in index.rows()}
    assert sorted(rows) == sorted(NAMES)
    for name, row in rows.items():
        assert row.insdel("+-") == pytest.approx(expected[name], abs=1e-6)
        assert row.insdel("+") is None and row.insdel("-") is None  # not evaluated yet

    _evaluate(tiny_model, images, out, "pcamp", "pcamm")
    with open_index(out / "mapsets") as index:
        rows = {r.image: r for r in index.rows()}
    for variant, method in (("+", "pcamp"), ("-", "pcamm"), ("+-", "pcampm")):
        expected = _insdel(out, method)
        assert {n: r.insdel(variant) for n, r in rows.items()} == pytest.approx(expected, abs=1e-6)
    assert len({r.insdel("+") for r in rows.values()}) > 1  # per image, not one mean for all


def test_evaluate_without_an_index_makes_none(tiny_model, images, tmp_path):
    out = tmp_path / "out"
    evaluation.generate(tiny_model, images, ["pcam+-"], out, progress=False)
    assert _evaluate(tiny_model, images, out, "pcampm")[0]["images"] == len(NAMES)
    assert not list(tmp_path.rglob(FILE_NAME))


def test_only_rows_of_the_same_image_model_class_and_size_take_a_score(tiny_model, images, tmp_path):
    out = tmp_path / "out"
    evaluation.generate(tiny_model, images, ["pcam+"], out, save_mapsets=True, progress=False)
    folder = out / "mapsets"
    with open_index(folder) as index:
        rows = {r.image: r for r in index.rows()}
    model_id = rows["coffee.jpg"].model_id
    a, c = rows["astronaut.jpg"], rows["chelsea.jpg"]
    scores = {"±": {"astronaut.jpg": Score(a.pred_class, (a.height, a.width), 0.5),
                    "chelsea.jpg": Score(c.pred_class + 1, (c.height, c.width), 0.25),  # another class
                    "coffee.jpg": Score(rows["coffee.jpg"].pred_class, (32, 32), 0.125),  # another size
                    "rocket.jpg": Score(0, (16, 16), 1.0)}}  # not in the index
    assert record_insdel([folder, tmp_path / "no-index"], "another-model", scores) == {folder.resolve(): 0}
    assert record_insdel([folder, folder / "."], model_id, scores) == {folder.resolve(): 1}
    with open_index(folder) as index:
        assert {r.image: r.insdel_pm for r in index.rows()} == {"astronaut.jpg": 0.5, "chelsea.jpg": None,
                                                               "coffee.jpg": None}
    with pytest.raises(ValueError, match="variant"):
        record_insdel([folder], model_id, {"x": {}})
