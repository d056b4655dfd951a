"""generate / evaluate: the authors' file layout, resume, bad input, and torchrun sharding."""
import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import polycam_explorer as pe
from polycam_explorer import cli, evaluation

ARGS = ["--size", "48", "--no-progress"]


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    """generate reads the explorer's disk cache: keep the user's out of these tests."""
    monkeypatch.setenv("POLYCAM_EXPLORER_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def images(tmp_path, sample):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("chelsea", "coffee"):
        shutil.copy(sample(name), folder / f"{name}.jpg")
    return folder


def _generate(images, out, *extra):
    return cli.main(["generate", "--images", str(images), "--out", str(out), *ARGS, *extra])


def _evaluate(images, out, *extra):
    return cli.main(["evaluate", "--images", str(images), "--out", str(out), "--n-steps", "12", *ARGS, *extra])


def test_generate_then_evaluate_in_the_authors_layout(images, tmp_path, capsys):
    out = tmp_path / "out"
    assert _generate(images, out) == 0
    for method in ("pcamp", "pcamm", "pcampm"):
        maps, meta = evaluation.read_maps(out / f"efficientnet_lite0_{method}.npz")
        assert sorted(maps) == ["chelsea.jpg", "coffee.jpg"] and maps["chelsea.jpg"].shape == (48, 48)
        assert meta["model"] == "efficientnet_lite0" and meta["method"] == method
    assert _evaluate(images, out) == 0
    summary = capsys.readouterr().out
    assert "| efficientnet_lite0 | pcampm | 2 |" in summary
    rows = list(csv.reader(open(out / "ins_details_efficientnet_lite0_pcampm.csv")))
    assert rows[0] == [""] + [str(i) for i in range(12)] and [r[0] for r in rows[1:]] == ["chelsea.jpg", "coffee.jpg"]
    aucs = {r[0]: float(r[1]) for r in list(csv.reader(open(out / "del_auc_efficientnet_lite0_pcamm.csv")))[1:]}
    # the same number as the metric called directly on the stored map
    model = pe.load_model()
    x = pe.load_image(images / "coffee.jpg", model, size=48)
    c = int(model(x).argmax())
    sal = np.load(out / "efficientnet_lite0_pcamm.npz")["coffee.jpg"]
    expected, _ = pe.deletion(model, x, __import__("torch").from_numpy(sal), c, 12)
    assert aucs["coffee.jpg"] == pytest.approx(expected, abs=1e-6)
    table = list(csv.DictReader(open(out / "summary.csv")))
    assert {r["method"] for r in table} == {"pcamp", "pcamm", "pcampm"}
    for r in table:
        assert float(r["ins_del"]) == pytest.approx(float(r["insertion"]) - float(r["deletion"]))


def test_generate_and_evaluate_resume_where_they_stopped(images, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert _generate(images, out, "--methods", "pcam+-") == 0
    part = out / ".parts" / "efficientnet_lite0_pcampm" / "coffee.jpg.npy"
    part.unlink()  # as if the run had stopped before this image
    calls = []
    real = evaluation.compute_mapset
    monkeypatch.setattr(evaluation, "compute_mapset", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert _generate(images, out, "--methods", "pcam+-") == 0
    assert calls == [1] and part.is_file()
    assert _evaluate(images, out) == 0
    monkeypatch.setattr(evaluation, "faithfulness_curves", lambda *a, **k: pytest.fail("recomputed a finished image"))
    assert _evaluate(images, out) == 0


def test_evaluate_refuses_maps_of_another_model(images, tmp_path, capsys):
    out = tmp_path / "out"
    assert _generate(images, out, "--methods", "pcam+") == 0
    weights = tmp_path / "other.pth"
    import torch
    import timm

    torch.save(timm.create_model("tf_efficientnet_lite0").state_dict(), weights)  # random weights
    rc = cli.main(["evaluate", "--model", "tf_efficientnet_lite0", "--weights", str(weights), "--images",
                   str(images), "--out", str(tmp_path / "o2"), "--npz", str(out / "efficientnet_lite0_pcamp.npz"),
                   *ARGS])
    assert rc == 2 and "not of the given" in capsys.readouterr().err


def test_authors_npz_without_metadata_must_name_the_model(images, tmp_path, capsys):
    foreign = tmp_path / "vgg16_gradcam.npz"
    np.savez(foreign, **{"chelsea.jpg": np.ones((1, 1, 14, 14), np.float32),
                         "coffee.jpg": np.ones((1, 1, 14, 14), np.float32)})
    assert _evaluate(images, tmp_path / "o", "--npz", str(foreign)) == 2
    assert "does not name the model" in capsys.readouterr().err
    ours = tmp_path / "efficientnet_lite0_gradcam.npz"
    shutil.copy(foreign, ours)  # an authors' file for this model: (1, 1, h, w) maps are upsampled
    assert _evaluate(images, tmp_path / "o", "--npz", str(ours)) == 0


@pytest.mark.parametrize("extra, message", [
    (["--methods", "pcam*"], "unknown method"),
    (["--list", "missing.txt"], "does not exist"),
])
def test_generate_bad_input(images, tmp_path, capsys, extra, message):
    assert _generate(images, tmp_path / "out", *extra) == 2
    assert message in capsys.readouterr().err


def test_image_list_selects_images_and_reports_missing_ones(images, tmp_path, capsys):
    listing = tmp_path / "images.txt"
    listing.write_text("coffee.jpg 967 espresso\n")
    assert evaluation.list_images(images, listing) == ["coffee.jpg"]
    listing.write_text("coffee.jpg\nnope.jpg\n")
    with pytest.raises(ValueError, match="not in"):
        evaluation.list_images(images, listing)


def test_torchrun_two_processes_equal_one(images, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    one, two = tmp_path / "one", tmp_path / "two"
    base = ["-m", "polycam_explorer.cli", "generate", "--images", str(images), *ARGS]
    subprocess.run([sys.executable, *base, "--out", str(one)], env=env, check=True, capture_output=True)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *base,
                          "--out", str(two)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    for method in ("pcamp", "pcamm", "pcampm"):
        a, meta_a = evaluation.read_maps(one / f"efficientnet_lite0_{method}.npz")
        b, meta_b = evaluation.read_maps(two / f"efficientnet_lite0_{method}.npz")
        assert a.keys() == b.keys() and meta_a == meta_b
        assert all(np.array_equal(a[k], b[k]) for k in a)
    # each rank wrote its own share of the part files
    assert len(list((two / ".parts" / "efficientnet_lite0_pcampm").glob("*.npy"))) == 2
    # one image per batch group in both runs, so the forward batches (and the floats) are the same
    ev = ["-m", "polycam_explorer.cli", "evaluate", "--images", str(images), "--n-steps", "12",
          "--images-per-batch", "1", *ARGS]
    subprocess.run([sys.executable, *ev, "--out", str(one)], env=env, check=True, capture_output=True)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *ev,
                          "--out", str(two)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (one / "summary.csv").read_text() == (two / "summary.csv").read_text()
    assert (one / "del_details_efficientnet_lite0_pcampm.csv").read_bytes() == \
        (two / "del_details_efficientnet_lite0_pcampm.csv").read_bytes()
