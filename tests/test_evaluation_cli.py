"""generate / evaluate: the authors' file layout, resume, bad input, and torchrun sharding."""
import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import polycam_explorer as pe
from polycam_explorer import cli, evaluation, runs
from polycam_explorer import explain as explain_module

ARGS = ["--size", "48", "--no-progress"]
pytestmark = pytest.mark.usefixtures("own_cache")  # generate never reads that cache; keep the user's out anyway


@pytest.fixture
def images(sample_folder):
    return sample_folder("chelsea", "coffee")


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
    [part] = (out / ".parts" / "efficientnet_lite0_pcampm").glob("coffee.jpg-*.npy")
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
    assert runs.list_images(images, listing) == ["coffee.jpg"]
    listing.write_text("coffee.jpg\nnope.jpg\n")
    with pytest.raises(ValueError, match="not in"):
        runs.list_images(images, listing)


def test_torchrun_two_processes_equal_one(images, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    one, two = tmp_path / "one", tmp_path / "two"
    base = ["-m", "polycam_explorer.cli", "generate", "--images", str(images), "--save-mapsets", *ARGS]
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
    # the atlas index of the map sets the ranks wrote is the one-process index, Ins-Del included
    from polycam_explorer.atlas import open_index

    with open_index(one / "mapsets") as a, open_index(two / "mapsets") as b:
        rows_a, rows_b = a.rows(sort="file"), b.rows(sort="file")
        assert len(rows_a) == 2 and all(r.insdel("+-") is not None for r in rows_a)
        assert [(r.file, r.pred_class, r.insdel("+-")) for r in rows_a] == \
            [(r.file, r.pred_class, r.insdel("+-")) for r in rows_b]


# --- issue 9: nothing silently wrong or lost (tiny model, Python API and CLI checks) ---

import json
import torch
from PIL import Image

from conftest import TinyNet
from polycam_explorer import cache


def _tiny(name="tiny"):
    return pe.Classifier(TinyNet().eval(), name=name, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16),
                         class_names=[f"c{i}" for i in range(5)])


def _pictures(folder, names, seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _outputs(out):
    """Every result file (not the parts) -> its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".parts" not in p.parts
            and not p.name.startswith(".polycam-atlas")}  # the atlas index records file times


def _gen(model, images, out, methods=("pcam+", "pcam+-", "gradcam"), **kw):
    return evaluation.generate(model, images, list(methods), out, progress=False, **kw)


def test_generate_never_reads_the_explorers_fp16_cache(tmp_path):
    images = _pictures(tmp_path / "images", ["a.png", "b.png"])
    model = _tiny()
    _gen(model, images, tmp_path / "clean", methods=["pcam+-"])
    # a deliberately different map set under the very key generate would look up
    x = pe.load_image(images / "a.png", model)
    ms = pe.compute_mapset(model, x, progress=False)
    ms.activations[0] = ms.activations[0].flip(-1) * 3
    cache.store(ms, model, None, x)  # POLYCAM_EXPLORER_CACHE is this test's folder (own_cache)
    assert cache.cached(model, None, x) is not None
    _gen(model, images, tmp_path / "cached", methods=["pcam+-"])
    assert _outputs(tmp_path / "cached") == _outputs(tmp_path / "clean")


@pytest.mark.parametrize("lost", ["first method", "later method", "first depth of the first method",
                                  "a depth of a later method", "map set", "baseline"])
def test_resume_finishes_whatever_part_an_interruption_lost(tmp_path, monkeypatch, lost):
    images = _pictures(tmp_path / "images", ["a.png", "b.png", "c.png"])
    model = _tiny()
    opts = dict(all_depths=True, save_mapsets=True)
    _gen(model, images, tmp_path / "ref", **opts)
    out = tmp_path / "out"
    _gen(model, images, out, **opts)
    folder = {"first method": "tiny_pcamp", "later method": "tiny_pcampm", "first depth of the first method":
              "tiny_pcamp0", "a depth of a later method": "tiny_pcampm2", "map set": "mapsets",
              "baseline": "tiny_gradcam"}[lost]
    [part] = (out / ".parts" / folder).glob("b.png-*")
    part.unlink()
    for merged in out.glob("*.npz"):
        merged.unlink()  # as if the run stopped before the merge
    (out / "mapsets" / "index.json").unlink()
    calls = []
    real = evaluation.compute_mapset
    monkeypatch.setattr(evaluation, "compute_mapset", lambda *a, **k: calls.append(1) or real(*a, **k))
    _gen(model, images, out, **opts)
    assert part.is_file() and _outputs(out) == _outputs(tmp_path / "ref")
    assert calls == ([] if lost == "baseline" else [1])  # only the image that lacked something
    _gen(model, images, out, **opts)
    assert len(calls) == (0 if lost == "baseline" else 1)  # a finished run does nothing again


def test_resume_adds_outputs_asked_for_later(tmp_path):
    images = _pictures(tmp_path / "images", ["a.png", "b.png"])
    model = _tiny()
    _gen(model, images, tmp_path / "ref", all_depths=True, save_mapsets=True)
    out = tmp_path / "out"
    _gen(model, images, out, methods=["pcam+"])
    _gen(model, images, out, all_depths=True, save_mapsets=True)
    assert _outputs(out) == _outputs(tmp_path / "ref")


def test_changed_image_or_settings_never_reuse_old_parts(tmp_path):
    images = _pictures(tmp_path / "images", ["a.png", "b.png"])
    model = _tiny()
    out = tmp_path / "out"
    _gen(model, images, out, methods=["pcam+"])
    _pictures(images, ["b.png"], seed=7)  # b.png replaced by another picture
    _gen(model, images, out, methods=["pcam+"])
    _gen(model, images, tmp_path / "fresh", methods=["pcam+"])
    assert _outputs(out) == _outputs(tmp_path / "fresh")
    _gen(model, images, out, methods=["pcam+"], size=24)  # another size: new maps, not the 16 x 16 ones
    assert np.load(out / "tiny_pcamp.npz")["a.png"].shape == (24, 24)


def test_image_names_that_flatten_alike_get_their_own_maps(tmp_path):
    images = _pictures(tmp_path / "images", ["a/b.png", "a__b.png", "a_b.png"])
    listing = tmp_path / "list.txt"
    listing.write_text("a/b.png\na__b.png\na_b.png\n")
    model = _tiny()
    out = tmp_path / "out"
    _gen(model, images, out, methods=["pcam+"], list_file=listing, save_mapsets=True)
    maps = np.load(out / "tiny_pcamp.npz")
    for name in ("a/b.png", "a__b.png", "a_b.png"):
        alone = tmp_path / name.replace("/", "-")
        (alone / "img").mkdir(parents=True)
        shutil.copy(images / name, alone / "img" / "x.png")
        _gen(model, alone / "img", alone / "out", methods=["pcam+"])
        assert np.array_equal(maps[name], np.load(alone / "out" / "tiny_pcamp.npz")["x.png"])
    index = json.loads((out / "mapsets" / "index.json").read_text())
    assert len(set(index.values())) == 3
    for name, file in index.items():
        ms = pe.MapSet.load(out / "mapsets" / file)
        assert torch.equal(ms.image, pe.load_image(images / name, model))


@pytest.mark.parametrize("entry", ["../outside.png", "/etc/passwd", "a/../../outside.png"])
def test_list_entries_must_stay_in_the_image_folder(tmp_path, entry):
    images = _pictures(tmp_path / "images", ["a.png"])
    _pictures(tmp_path, ["outside.png"])
    listing = tmp_path / "list.txt"
    listing.write_text(f"a.png\n{entry}\n")
    with pytest.raises(ValueError, match="leave the image folder"):
        runs.list_images(images, listing)


@pytest.mark.parametrize("name, label", [("../../escape", "_.._escape"), ("hf-hub:org/model", "hf-hub_org_model"),
                                         ("/abs/name", "_abs_name"), ("..", "model")])
def test_model_names_never_lead_paths_out_of_out(tmp_path, name, label):
    assert runs.file_label(name) == label
    images = _pictures(tmp_path / "work" / "images", ["a.png"])
    out = tmp_path / "work" / "deep" / "out"
    before = {p for p in tmp_path.rglob("*")}
    written = _gen(_tiny(name), images, out, methods=["pcam+"])
    assert [p.name for p in written] == [f"{label}_pcamp.npz"]
    assert all(out in p.parents for p in set(tmp_path.rglob("*")) - before if p != out and p not in out.parents)
    assert evaluation.evaluate(_tiny(name), images, written, out, n_steps=4, progress=False)[0]["method"] == "pcamp"


def _npz(path, **maps):
    np.savez(path, **maps)
    return path


@pytest.mark.parametrize("bad, message", [
    (np.ones(16 * 16, np.float32), r"shape \(256,\)"),
    (np.ones((3, 16, 16), np.float32), r"shape \(3, 16, 16\)"),
    (np.ones((16, 16, 3), np.float32), r"shape \(16, 16, 3\)"),
    (np.full((16, 16), np.nan, np.float32), "non-finite"),
    (np.array([[1.0, np.inf]] * 8, np.float32), "non-finite"),
    (np.array([["a"] * 4] * 4), "dtype"),
])
def test_evaluate_refuses_maps_it_cannot_score_naming_file_and_image(tmp_path, bad, message):
    images = _pictures(tmp_path / "images", ["a.png", "b.png"])
    path = _npz(tmp_path / "tiny_x.npz", **{"a.png": np.ones((16, 16), np.float32), "b.png": bad})
    with pytest.raises(ValueError, match=message) as info:
        evaluation.evaluate(_tiny(), images, [path], tmp_path / "out", n_steps=4, progress=False)
    assert "tiny_x.npz" in str(info.value) and "'b.png'" in str(info.value)
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("kw", [{"images_per_batch": 0}, {"images_per_batch": -1}, {"batch_size": 0},
                                {"n_steps": 0}, {"images_per_batch": 2.0}])
def test_evaluate_bad_numbers_are_named(tmp_path, kw):
    images = _pictures(tmp_path / "images", ["a.png"])
    path = _npz(tmp_path / "tiny_x.npz", **{"a.png": np.ones((16, 16), np.float32)})
    with pytest.raises(ValueError, match=next(iter(kw))):
        evaluation.evaluate(_tiny(), images, [path], tmp_path / "out", progress=False, **kw)


def test_evaluate_resume_redoes_a_partly_scored_group_to_the_same_bytes(tmp_path, monkeypatch):
    images = _pictures(tmp_path / "images", ["a.png", "b.png", "c.png"])
    model = _tiny()
    npz = _gen(model, images, tmp_path / "maps", methods=["pcam+", "pcam-"])
    opts = dict(n_steps=8, images_per_batch=2, progress=False)
    evaluation.evaluate(model, images, npz, tmp_path / "ref", **opts)
    out = tmp_path / "out"
    evaluation.evaluate(model, images, npz, out, **opts)
    [part] = (out / ".parts" / "tiny_pcamm").glob("b.png-*.json")
    part.unlink()  # one image of the first group of one file
    for f in out.glob("*.csv"):
        f.unlink()
    groups = []
    real = evaluation.faithfulness_curves
    monkeypatch.setattr(evaluation, "faithfulness_curves", lambda m, xs, *a, **k: groups.append(len(xs)) or real(m, xs, *a, **k))
    evaluation.evaluate(model, images, npz, out, **opts)
    assert groups == [2] and _outputs(out) == _outputs(tmp_path / "ref")
    # a changed map is scored again, not read from the old part
    maps = dict(np.load(npz[0]))
    maps["c.png"] = np.flip(maps["c.png"]).copy()
    np.savez(npz[0], **maps)
    evaluation.evaluate(model, images, npz, out, **opts)
    assert groups == [2, 1]


def test_evaluate_warns_when_the_model_returns_nan(tmp_path):
    images = _pictures(tmp_path / "images", ["a.png"])
    path = _npz(tmp_path / "broken_x.npz", **{"a.png": np.random.default_rng(0).random((16, 16)).astype(np.float32)})
    net = TinyNet().eval()
    with torch.no_grad():
        net.fc.bias.fill_(float("nan"))
    model = pe.Classifier(net, name="broken", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16))
    with pytest.warns(RuntimeWarning, match="non-finite scores"):
        evaluation.evaluate(model, images, [path], tmp_path / "out", n_steps=4, progress=False)


# CLI: every check before the work

@pytest.fixture
def tiny_cli(monkeypatch, tmp_path):
    """The CLI with the tiny model whatever --model says, and a sweep that must not run."""
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: _tiny())
    monkeypatch.setattr(explain_module, "load_model", lambda *a, **k: _tiny())
    return _pictures(tmp_path / "images", ["a.png"])


INTEGER_OPTIONS = [("explain", "--size"), ("explain", "--batch-size"), ("generate", "--size"),
                   ("generate", "--batch-size"), ("evaluate", "--size"), ("evaluate", "--batch-size"),
                   ("evaluate", "--n-steps"), ("evaluate", "--images-per-batch"), ("serve", "--port")]


@pytest.mark.parametrize("command, option", INTEGER_OPTIONS)
def test_integer_options_refuse_zero_negative_and_text(tmp_path, capsys, command, option):
    base = {"explain": ["--out", str(tmp_path)], "serve": [],
            "generate": ["--images", str(tmp_path), "--out", str(tmp_path)],
            "evaluate": ["--images", str(tmp_path), "--out", str(tmp_path)]}[command]
    for value in ["0", "-3", "two", "1.5"] + (["70000"] if option == "--port" else []):
        assert cli.main([command, *base, option, value]) == 2
        err = capsys.readouterr().err
        assert err.startswith("polycam-explorer: error:") and option in err and "integer" in err and value in err


def test_explain_refuses_an_out_of_range_class_before_the_sweep(tmp_path, capsys, monkeypatch, tiny_cli):
    monkeypatch.setattr(explain_module, "iter_mapset", lambda *a, **k: pytest.fail("swept before checking --class"))
    for spec, message in [("5000", "out of range: this model has 5 classes"), ("5", "0..4"), ("c9", "'c9'")]:
        assert cli.main(["explain", str(tiny_cli / "a.png"), "--out", str(tmp_path / "o"), "--class", spec]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["explain", "generate", "evaluate"])
@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_unwritable_out_is_refused_before_the_work(tmp_path, capsys, monkeypatch, tiny_cli, command, where):
    monkeypatch.setattr(explain_module, "iter_mapset", lambda *a, **k: pytest.fail("swept before checking --out"))
    monkeypatch.setattr(evaluation, "compute_mapset", lambda *a, **k: pytest.fail("swept before checking --out"))
    (tmp_path / "file").write_text("x")
    out = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "out",
           "read-only": tmp_path / "ro" / "out"}[where]
    if where == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o500)
    args = [str(tiny_cli / "a.png")] if command == "explain" else ["--images", str(tiny_cli)]
    assert cli.main([command, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and str(out) in err


def test_generate_with_no_method_is_a_clear_error(tmp_path, capsys, tiny_cli):
    for methods in [",", "", " , "]:
        assert cli.main(["generate", "--images", str(tiny_cli), "--out", str(tmp_path / "o"), "--methods", methods]) == 2
        assert "no method named" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["generate", "evaluate", "explain"])
def test_ctrl_c_message_says_what_is_kept(tmp_path, capsys, monkeypatch, tiny_cli, command):
    def stop(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluation, command if command != "explain" else "generate", stop)
    monkeypatch.setattr(cli, "explain", stop)
    monkeypatch.setattr(cli, "_npz_files", lambda *a: [])
    args = [str(tiny_cli / "a.png")] if command == "explain" else ["--images", str(tiny_cli)]
    assert cli.main([command, *args, "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert "no partial output" not in err
    if command == "explain":
        assert "complete" in err and "rerun" in err
    else:
        assert str(tmp_path / "o" / ".parts") in err and "resumes" in err


def test_generate_keeps_the_atlas_index_of_its_map_sets_current(tmp_path):
    images = _pictures(tmp_path / "images", ["a.png", "b.png"])
    model = _tiny()
    out = tmp_path / "out"
    _gen(model, images, out, methods=["pcam+-"], save_mapsets=True)
    index = pe.atlas.open_index(out / "mapsets")
    try:
        assert sorted(r.image for r in index.query()) == ["a.png", "b.png"]
    finally:
        index.close()
    _pictures(images, ["c.png"], seed=1)
    _gen(model, images, out, methods=["pcam+-"], save_mapsets=True)
    index = pe.atlas.open_index(out / "mapsets")
    try:
        assert sorted(r.image for r in index.query()) == ["a.png", "b.png", "c.png"]
    finally:
        index.close()


def test_explain_keeps_another_images_explanation_of_the_same_stem(tmp_path, capsys, tiny_cli):
    """scans/a/xray.png and scans/b/xray.png both write xray_*: the second is refused, naming both,
    and the first image's files stay as they were; explaining the first again is fine."""
    first = _pictures(tmp_path / "scans" / "a", ["xray.png"], seed=1) / "xray.png"
    second = _pictures(tmp_path / "scans" / "b", ["xray.png"], seed=2) / "xray.png"
    out = tmp_path / "out"
    assert cli.main(["explain", str(first), "--out", str(out), "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli.main(["explain", str(second), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds the explanation of another image named 'xray'" in err and str(first) in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert cli.main(["explain", str(first), "--out", str(out), "--no-progress"]) == 0
