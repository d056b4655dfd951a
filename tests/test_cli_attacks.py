"""The command line and the evaluation protocol under a hostile user: signals, two runs in one
folder, reruns with other settings, odd image names and folders, tampered npz files, empty and
ambiguous arguments. Each test names the fault it guards against; all use the tiny model."""
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import polycam_explorer as pe
from conftest import TinyNet
from polycam_explorer import cli, evaluation, runs
from polycam_explorer import explain as explain_module

TESTS = Path(__file__).parent
pytestmark = pytest.mark.usefixtures("own_cache")


def _tiny(name="tiny", class_names=None, seed=0):
    return pe.Classifier(TinyNet(seed=seed).eval(), name=name, mean=(0.5,) * 3, std=(0.5,) * 3,
                         input_size=(16, 16), class_names=class_names or [f"c{i}" for i in range(5)])


def _pictures(folder, names, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / name, format="PNG")
    return folder


def _files(out):
    """Every file under ``out`` but the parts and the atlas index -> its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(Path(out).rglob("*"))
            if p.is_file() and ".parts" not in p.parts and not p.name.startswith(".polycam-atlas")}


@pytest.fixture
def tiny_cli(monkeypatch):
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: _tiny())
    monkeypatch.setattr(explain_module, "load_model", lambda *a, **k: _tiny())


# --- entry point and signals ----------------------------------------------------------------------

def test_python_dash_m_runs_the_command_line():
    """`python3 -m polycam_explorer ...` (the README's entry point) had no __main__ module."""
    run = subprocess.run([sys.executable, "-m", "polycam_explorer", "evaluate", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and "--n-steps" in run.stdout


DRIVER = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
from conftest import TinyNet
import polycam_explorer as pe
from polycam_explorer import cli, explain as ex
tiny = lambda *a, **k: pe.Classifier(TinyNet().eval(), name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3,
                                     input_size=(16, 16), class_names=[f"c{{i}}" for i in range(5)])
cli.load_model = ex.load_model = tiny
real_fsync, calls = os.fsync, []
def fsync(fd):  # inside an atomic write: the data is in its temporary file, not yet renamed
    calls.append(fd)
    if len(calls) == {at} and {signal_self}:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    if len(calls) == {at} and {pause}:
        open(os.environ["READY"], "w").close()
        for _ in range(600):
            if os.path.exists(os.environ["GO"]):
                break
            time.sleep(0.1)
    return real_fsync(fd)
os.fsync = fsync
sys.exit(cli.main(sys.argv[1:]))
"""


def _driver(tmp_path, at, signal_self=False, pause=False):
    path = tmp_path / f"driver_{at}_{signal_self}_{pause}.py"
    path.write_text(DRIVER.format(tests=str(TESTS), at=at, signal_self=signal_self, pause=pause))
    return [sys.executable, str(path)]


@pytest.mark.parametrize("command", ["explain", "generate"])
def test_sigterm_stops_like_ctrl_c_and_a_rerun_gives_the_same_files(tmp_path, command):
    """SIGTERM (a scheduler's stop) killed the process mid-write: its temporary file stayed in OUT
    (explain never removes them) and exit status -15 said nothing; now it stops as Ctrl-C does."""
    images = _pictures(tmp_path / "images", ["a.png", "b.png"])
    args = {"explain": ["explain", str(images / "a.png"), "--no-progress"],
            "generate": ["generate", "--images", str(images), "--no-progress", "--methods", "pcam+,pcam-"]}[command]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = subprocess.run(_driver(tmp_path, 10 ** 6) + args + ["--out", str(tmp_path / "ref")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "out"
    run = subprocess.run(_driver(tmp_path, 3, signal_self=True) + args + ["--out", str(out)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 143, run.stderr[-2000:]
    assert "stopped by SIGTERM" in run.stderr
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.endswith("_preview.png")]
    rerun = subprocess.run(_driver(tmp_path, 10 ** 6) + args + ["--out", str(out)], env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    ours, theirs = _files(out), _files(tmp_path / "ref")
    if command == "explain":  # the report names its folder
        ours.pop("a_explain.json"), theirs.pop("a_explain.json")
    assert ours == theirs


def test_two_runs_into_one_out_wait_for_each_other(tmp_path):
    """A second generate into the same OUT removed the first one's temporary file while it was
    being written (its start-up clean-up), and the first failed at the rename; now the second
    waits, says so, and both end with the files of one run."""
    images = _pictures(tmp_path / "images", ["a.png", "b.png", "c.png"])
    args = ["generate", "--images", str(images), "--no-progress", "--methods", "pcam+"]
    env = dict(os.environ, OMP_NUM_THREADS="1", READY=str(tmp_path / "ready"), GO=str(tmp_path / "go"))
    subprocess.run(_driver(tmp_path, 10 ** 6) + args + ["--out", str(tmp_path / "ref")], env=env, check=True,
                   capture_output=True, timeout=300)
    out = tmp_path / "out"
    first = subprocess.Popen(_driver(tmp_path, 1, pause=True) + args + ["--out", str(out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):
            if (tmp_path / "ready").exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert (tmp_path / "ready").exists(), "the first run never reached its first write"
        err = tmp_path / "second.err"
        with open(err, "w") as err_file:
            second = subprocess.Popen(_driver(tmp_path, 10 ** 6) + args + ["--out", str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=err_file, text=True)
            for _ in range(1200):  # until the second waits (or, unheld, has run to its end)
                if second.poll() is not None or "waiting for another run" in err.read_text():
                    break
                time.sleep(0.1)
        (tmp_path / "go").touch()
        first_err = first.communicate(timeout=300)[1]
        second.communicate(timeout=300)
    finally:
        for p in (first, locals().get("second")):
            if p is not None and p.poll() is None:
                p.kill()
    assert first.returncode == 0, first_err[-2000:]
    assert second.returncode == 0, err.read_text()[-2000:]
    assert "waiting for another run" in err.read_text()
    assert _files(out) == _files(tmp_path / "ref")


# --- reruns with other settings -------------------------------------------------------------------

def test_explain_rerun_with_other_settings_leaves_only_its_own_files(tmp_path, tiny_cli):
    """A rerun with fewer variants or other layers left the earlier run's overlays beside the new
    ones (PCAM- maps of other layers next to a summary that shows neither)."""
    image = _pictures(tmp_path / "images", ["x.png"]) / "x.png"
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert cli.main(["explain", str(image), "--out", str(out), "--no-progress", "--save-mapset"]) == 0
    second = ["--no-progress", "--variant", "+", "--layers", "features.3,features"]
    assert cli.main(["explain", str(image), "--out", str(out), *second]) == 0
    assert cli.main(["explain", str(image), "--out", str(fresh), *second]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in fresh.iterdir())
    report = json.loads((out / "x_explain.json").read_text())
    assert sorted(Path(f).name for f in report["files"]) == sorted(p.name for p in out.iterdir()
                                                                    if p.name != "x_explain.json")


def test_explain_rerun_that_fails_keeps_the_earlier_explanation(tmp_path, tiny_cli, capsys):
    image = _pictures(tmp_path / "images", ["x.png"]) / "x.png"
    out = tmp_path / "out"
    assert cli.main(["explain", str(image), "--out", str(out), "--no-progress"]) == 0
    before = _files(out)
    assert cli.main(["explain", str(image), "--out", str(out), "--no-progress", "--layers", "nope"]) == 2
    assert "unknown layer" in capsys.readouterr().err and _files(out) == before


@pytest.mark.parametrize("stop", ["scoring", "merge"])
def test_evaluate_rerun_interrupted_never_leaves_a_mix(tmp_path, monkeypatch, stop):
    """An evaluate rerun with other settings stopped in its merge left the earlier run's summary and
    csv files beside its own, read back as this run's results. Now, stopped while scoring, the
    earlier results stay whole; stopped in the merge, none of them is left."""
    images = _pictures(tmp_path / "images", ["a.png", "b.png", "c.png"])
    model = _tiny()
    npz = evaluation.generate(model, images, ["pcam+", "pcam-"], tmp_path / "maps", progress=False)
    out = tmp_path / "out"
    evaluation.evaluate(model, images, npz, out, n_steps=4, images_per_batch=1, progress=False)
    earlier = _files(out)
    where = {"scoring": (evaluation, "faithfulness_curves"), "merge": (runs, "csv_text")}[stop]
    real, calls = getattr(*where), []

    def stop_on_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(*where, stop_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate(model, images, npz, out, n_steps=8, images_per_batch=1, progress=False)
    if stop == "scoring":
        assert _files(out) == earlier
    else:  # no summary, and no csv of the earlier run: those written are this run's
        now = _files(out)
        assert "summary.csv" not in now and not [k for k, v in now.items() if earlier.get(k) == v]
    monkeypatch.setattr(*where, real)
    evaluation.evaluate(model, images, npz, out, n_steps=8, images_per_batch=1, progress=False)
    evaluation.evaluate(model, images, npz, tmp_path / "ref", n_steps=8, images_per_batch=1, progress=False)
    assert _files(out) == _files(tmp_path / "ref")


def test_generate_rerun_interrupted_in_its_merge_never_mixes_sizes(tmp_path, monkeypatch):
    """A generate rerun at another size stopped between two merged files left one npz of each size."""
    images = _pictures(tmp_path / "images", ["a.png", "b.png"])
    model, out = _tiny(), tmp_path / "out"
    evaluation.generate(model, images, ["pcam+", "pcam-"], out, progress=False)
    real, calls = runs.write_npz, []

    def stop_on_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(runs, "write_npz", stop_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        evaluation.generate(model, images, ["pcam+", "pcam-"], out, size=24, progress=False)
    sizes = {f.name: np.load(f)["a.png"].shape for f in out.glob("*.npz")}
    assert sizes == {"tiny_pcamp.npz": (24, 24)}


def test_generate_rerun_that_fails_keeps_the_earlier_results(tmp_path):
    images = _pictures(tmp_path / "images", ["a.png"])
    model, out = _tiny(), tmp_path / "out"
    evaluation.generate(model, images, ["pcam+"], out, progress=False)
    before = _files(out)
    with pytest.raises(ValueError, match="size"):
        evaluation.generate(model, images, ["pcam+"], out, size=10 ** 5, progress=False)
    assert _files(out) == before


# --- names and folders ----------------------------------------------------------------------------

def test_a_file_listed_twice_under_two_spellings_counts_once(tmp_path):
    """`./a.png` and `a.png` in images.txt were two images: a's maps were scored twice in the mean."""
    images = _pictures(tmp_path / "images", ["a.png", "b.png", "sub/c.png"])
    listing = tmp_path / "images.txt"
    listing.write_text("a.png\n./a.png\nb.png\nsub//c.png\nsub/./c.png\n")
    assert runs.list_images(images, listing) == ["a.png", "b.png", "sub/c.png"]
    model = _tiny()
    npz = evaluation.generate(model, images, ["pcam+"], tmp_path / "o", list_file=listing, progress=False)
    rows = evaluation.evaluate(model, images, npz, tmp_path / "o", list_file=listing, n_steps=4, progress=False)
    assert rows[0]["images"] == 3


def test_non_utf8_file_names_are_refused_before_any_work(tmp_path):
    """A file name that is not UTF-8 failed at the merge, after every image had been swept."""
    images = _pictures(tmp_path / "images", ["a.png"])
    os.link(images / "a.png", os.fsencode(str(images)) + b"/b\xff.png")
    with pytest.raises(ValueError, match="not UTF-8") as info:
        evaluation.generate(_tiny(), images, ["pcam+"], tmp_path / "out", progress=False)
    assert "b\\xff.png" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_unreadable_images_are_all_named_before_any_work(tmp_path, capsys):
    """A zero-byte or non-image file stopped the run when its turn came, after the images before it,
    and named only the first such file."""
    images = _pictures(tmp_path / "images", ["a.png", "b.png"])
    (images / "c.png").write_bytes(b"")
    (images / "d.jpg").write_text("not a picture")
    assert cli.main(["generate", "--images", str(images), "--out", str(tmp_path / "out"), "--size", "16",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'c.png': an empty file (0 bytes)" in err and "'d.jpg'" in err
    assert not (tmp_path / "out" / ".parts").exists()


def test_csv_cells_never_start_a_spreadsheet_formula(tmp_path):
    """An image named `=1+1.png` (or +, -, @) was written as a formula cell into the csv files."""
    names = ["=1+1.png", "+a.png", "-b.png", "@c.png", 'q,"uote".png']
    images = _pictures(tmp_path / "images", names)
    model = _tiny("=HYPERLINK(1)")
    out = tmp_path / "out"
    npz = evaluation.generate(model, images, ["pcam+"], out, progress=False)
    evaluation.evaluate(model, images, npz, out, n_steps=4, progress=False)
    for table in out.glob("*.csv"):
        cells = [c for row in csv.reader(open(table, newline="")) for c in row]
        assert cells and not [c for c in cells if c[:1] in ("=", "+", "@") or c[:1] == "-" and not c[1:2].isdigit()]
    first = [r[0] for r in csv.reader(open(out / "ins_auc__HYPERLINK_1__pcamp.csv", newline=""))][1:]
    assert sorted(first) == sorted("'" + n if n[0] in "=+-@" else n for n in names)
    assert list(csv.DictReader(open(out / "summary.csv")))[0]["model"] == "'=HYPERLINK(1)"


def test_summary_table_keeps_its_columns_whatever_the_names(tmp_path):
    """A model or method name with `|` or a line break broke summary.md's table."""
    images = _pictures(tmp_path / "images", ["a.png"])
    path = tmp_path / "tiny__x_a|b.npz"  # the file label of the model 'tiny\n|x', method 'a|b'
    np.savez(path, **{"a.png": np.random.default_rng(0).random((16, 16)).astype(np.float32)})
    evaluation.evaluate(_tiny("tiny\n|x"), images, [path], tmp_path / "o", n_steps=4, progress=False)
    lines = (tmp_path / "o" / "summary.md").read_text().splitlines()
    assert len(lines) == 3 and all(line.replace("\\|", "").count("|") == 7 for line in lines)


# --- tampered and foreign npz files ---------------------------------------------------------------

@pytest.mark.parametrize("meta", ["[1, 2]", '"text"', "not json", '{"size": "abc"}', '{"size": true}',
                                  '{"image_sha256": [1]}', '{"image_sha256": {"a.png": 5}}', '{"model_id": 7}'])
def test_tampered_metadata_is_refused_naming_the_file(tmp_path, meta):
    """Metadata edited by hand crashed evaluate with AttributeError / a bare JSON error."""
    images = _pictures(tmp_path / "images", ["a.png"])
    model = _tiny()
    [npz] = evaluation.generate(model, images, ["pcam+"], tmp_path / "maps", progress=False)
    maps = dict(np.load(npz))
    good = json.loads(str(maps[runs.META_KEY]))
    edited = json.loads(meta) if meta.startswith("{") else None
    maps[runs.META_KEY] = np.array(json.dumps(dict(good, **edited)) if edited is not None else meta)
    np.savez(npz, **maps)
    with pytest.raises(ValueError, match="its metadata") as info:
        evaluation.evaluate(model, images, [npz], tmp_path / "out", n_steps=4, progress=False)
    assert "tiny_pcamp.npz" in str(info.value)


def test_a_map_too_large_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A map whose npz entry decompresses to gigabytes was read whole (a zip bomb); now its size in
    the zip directory is checked first, and keys that are not images are never read."""
    monkeypatch.setattr(runs, "MAX_MAP_BYTES", 50_000, raising=False)
    images = _pictures(tmp_path / "images", ["a.png", "b.png"])
    small = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    path = tmp_path / "tiny_x.npz"
    np.savez_compressed(path, **{"a.png": small, "b.png": np.zeros((200, 200)), "unused": np.zeros((300, 300))})
    with pytest.raises(ValueError, match="'b.png' is 320128 bytes uncompressed"):
        evaluation.evaluate(_tiny(), images, [path], tmp_path / "out", n_steps=4, progress=False)
    np.savez_compressed(path, **{"a.png": small, "b.png": small, "unused": np.zeros((300, 300))})
    assert evaluation.evaluate(_tiny(), images, [path], tmp_path / "out", n_steps=4, progress=False)


def test_maps_of_a_model_whose_name_extends_ours_are_not_taken_for_ours(tmp_path, capsys, tiny_cli):
    """vgg16's evaluate took the authors' vgg16_bn_gradcam.npz (no metadata) as a vgg16 method
    `bn_gradcam` and scored it silently; and the default OUT/vgg16_*.npz refused vgg16's own run
    because vgg16_bn's files were in the same folder."""
    images = _pictures(tmp_path / "images", ["a.png"])
    out = tmp_path / "out"
    evaluation.generate(_tiny(), images, ["pcam+"], out, progress=False)
    evaluation.generate(_tiny("tiny_bn", seed=3), images, ["pcam+"], out, progress=False)
    assert cli.main(["evaluate", "--images", str(images), "--out", str(out), "--n-steps", "4", "--no-progress"]) == 0
    assert [r["method"] for r in csv.DictReader(open(out / "summary.csv"))] == ["pcamp"]
    foreign = tmp_path / "tiny_bn_gradcam.npz"
    np.savez(foreign, **{"a.png": np.ones((16, 16), np.float32)})
    with pytest.raises(ValueError, match="does not name the model 'tiny'"):
        evaluation.evaluate(_tiny(), images, [foreign], tmp_path / "o2", n_steps=4, progress=False)


# --- arguments ------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["--out", "--model", "--layers", "--class", "--weights"])
def test_empty_arguments_are_refused(tmp_path, capsys, monkeypatch, tiny_cli, option):
    """`--out "$UNSET"` wrote the explanation into the current folder; an empty --layers or --model
    was taken as 'the default'."""
    image = _pictures(tmp_path / "images", ["x.png"]) / "x.png"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    args = ["explain", str(image), "--no-progress"] + ([] if option == "--out" else ["--out", str(tmp_path / "o")])
    assert cli.main(args + [option, ""]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must not be empty" in err
    assert not list(cwd.iterdir()) and not (tmp_path / "o").exists()


def test_a_class_name_two_classes_share_is_refused(tmp_path, capsys, monkeypatch):
    """ImageNet names two classes 'cardigan' (the corgi, 264, and the sweater, 474): --class
    cardigan explained the first without a word."""
    names = ["c0", "cardigan", "c2", "Cardigan", "c4"]
    monkeypatch.setattr(explain_module, "load_model", lambda *a, **k: _tiny(class_names=names))
    image = _pictures(tmp_path / "images", ["x.png"]) / "x.png"
    assert cli.main(["explain", str(image), "--out", str(tmp_path / "o"), "--class", "cardigan", "--no-progress"]) == 2
    assert "names 2 classes of this model, indices [1, 3]" in capsys.readouterr().err
    assert cli.main(["explain", str(image), "--out", str(tmp_path / "o"), "--class", "3", "--no-progress"]) == 0
