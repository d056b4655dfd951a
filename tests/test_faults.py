"""Real faults: SIGINT and SIGKILL of `generate` / `evaluate` processes at seeded random points, a
full disk; every rerun must finish to the very bytes of an uninterrupted run, and no temporary
file may survive it or pass for a finished part."""
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tmpfs

SEED = 2022
N_IMAGES = 6
METHODS = "pcam+,pcam+-,gradcam"
N_LAYERS = 4  # timm's test_resnet at 32 x 32: act1, layer1, layer2, layer3
PARTS = N_IMAGES * (3 + 2 * N_LAYERS + 1)  # methods, depths of the two PCAM variants, map set
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A tiny timm model (random weights, saved here), six pictures, and the uninterrupted runs."""
    import timm

    root = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet").state_dict(), root / "weights.pth")
    rng = np.random.default_rng(0)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    names = [f"im{i}.png" for i in range(N_IMAGES - 1)] + ["sub/im.png"]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / name)
    (root / "list.txt").write_text("\n".join(names) + "\n")
    env = dict(ENV, POLYCAM_EXPLORER_CACHE=str(root / "cache"))
    common = ["--model", "test_resnet", "--weights", str(root / "weights.pth"), "--images", str(images),
              "--list", str(root / "list.txt"), "--size", "32", "--no-progress"]
    gen = [sys.executable, "-m", "polycam_explorer.cli", "generate", *common, "--methods", METHODS,
           "--all-depths", "--save-mapsets"]
    ev = [sys.executable, "-m", "polycam_explorer.cli", "evaluate", *common, "--n-steps", "16",
          "--images-per-batch", "2", "--npz"]
    subprocess.run(gen + ["--out", str(root / "ref")], env=env, check=True, capture_output=True)
    maps = [str(root / "ref" / f"test_resnet_{m}.npz") for m in ("pcampm", "gradcam")]
    ev += maps
    subprocess.run(ev + ["--out", str(root / "ref_eval")], env=env, check=True, capture_output=True)
    return {"root": root, "gen": gen, "ev": ev, "env": env}


def _parts(out: Path) -> int:
    """Finished part files (temporary ones start with a dot)."""
    return sum(1 for p in (out / ".parts").rglob("*") if p.is_file() and not p.name.startswith("."))


def _results(out: Path) -> dict:
    """Every result file outside the parts -> its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".parts" not in p.relative_to(out).parts
            and not p.name.startswith(".polycam-atlas")}  # the atlas index records file times


def _temporary(out: Path) -> list:
    return [p for p in out.rglob("*.tmp")]


def _run(job, command, out: Path, *, sig=None, after_parts=None, after_s=None):
    """Run ``command`` into ``out``; send ``sig`` once ``after_parts`` parts exist or ``after_s`` passed."""
    proc = subprocess.Popen(command + ["--out", str(out)], env=job["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    start = time.monotonic()
    if sig is not None:
        while proc.poll() is None:
            if (after_parts is not None and out.is_dir() and _parts(out) >= after_parts) or \
                    (after_s is not None and time.monotonic() - start >= after_s):
                proc.send_signal(sig)
                break
            time.sleep(0.005)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def test_sigint_at_random_points_then_resume_gives_the_same_bytes(job, tmp_path):
    rng = random.Random(SEED)
    out = tmp_path / "out"
    stops = sorted(rng.sample(range(1, PARTS), 2))
    for k in stops:
        rc, err = _run(job, job["gen"], out, sig=signal.SIGINT, after_parts=k)
        assert rc == 130, err[-2000:]
        assert "interrupted" in err and str(out / ".parts") in err and "resumes" in err
        assert "no partial output" not in err
        assert not _temporary(out)  # an interrupted write removes its temporary file
        assert k <= _parts(out) < PARTS
    rc, err = _run(job, job["gen"], out)
    assert rc == 0, err[-2000:]
    assert _parts(out) == PARTS and _results(out) == _results(job["root"] / "ref")


def test_sigkill_at_random_points_then_resume_gives_the_same_bytes(job, tmp_path):
    rng = random.Random(SEED + 1)
    out = tmp_path / "out"
    for kill in [dict(after_parts=rng.randrange(1, PARTS)), dict(after_s=rng.uniform(2.0, 6.0)),
                 dict(after_parts=PARTS)]:  # the last one: all parts there, during or after the merge
        rc, err = _run(job, job["gen"], out, sig=signal.SIGKILL, **kill)
        assert rc in (-signal.SIGKILL, 0), err[-2000:]
    # what a SIGKILL can leave mid-write: a temporary file beside a part and beside a result
    part = next((out / ".parts" / "test_resnet_pcamp").glob("*.npy"))
    part.unlink()
    (part.parent / f".{part.name}.k1ll3d.tmp").write_bytes(b"\x93NUMPY half")
    (out / ".test_resnet_pcamp.npz.x9.tmp").write_bytes(b"PK half")
    (out / "mapsets").mkdir(exist_ok=True)
    (out / "mapsets" / ".im0.png-0.mapset.npz.y7.tmp").write_bytes(b"PK half")
    rc, err = _run(job, job["gen"], out)
    assert rc == 0, err[-2000:]
    assert not _temporary(out) and part.is_file()
    assert _parts(out) == PARTS and _results(out) == _results(job["root"] / "ref")


def test_sigkill_of_evaluate_then_resume_gives_the_same_bytes(job, tmp_path):
    rng = random.Random(SEED + 2)
    out = tmp_path / "out"
    total = 2 * N_IMAGES  # two npz files
    rc, _ = _run(job, job["ev"], out, sig=signal.SIGKILL, after_parts=rng.randrange(1, total))
    (out / ".parts" / "test_resnet_pcampm").mkdir(parents=True, exist_ok=True)
    (out / ".parts" / "test_resnet_pcampm" / ".im0.png-0.json.z1.tmp").write_bytes(b'{"ins_auc": 0.')
    rc, err = _run(job, job["ev"], out)
    assert rc == 0, err[-2000:]
    assert not _temporary(out)
    assert _results(out) == _results(job["root"] / "ref_eval")


FULL_DISK = """
import contextlib, errno, os, sys
from polycam_explorer import cli, evaluation, files, mapset_io, runs
writes = [0]
@contextlib.contextmanager
def full(path):
    writes[0] += 1
    with files.atomic_write(path) as f:
        if writes[0] > int(os.environ["WRITES_BEFORE_FULL"]):
            f.write(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        yield f
evaluation.atomic_write = runs.atomic_write = mapset_io.atomic_write = full
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_full_disk_is_a_clear_error_and_a_rerun_with_room_finishes(job, tmp_path):
    ref = job["root"] / "ref"
    used = sum(math.ceil(p.stat().st_size / 4096) * 4 for p in (ref / ".parts").rglob("*") if p.is_file())
    disk = tmp_path / "disk"
    with tmpfs(disk, f"size={used // 2}k") as mounted:
        out = disk / "out"
        if mounted:
            rc, err = _run(job, job["gen"], out)
        else:  # simulated: the writes after the first 30 fail with ENOSPC
            job_env = dict(job, env=dict(job["env"], WRITES_BEFORE_FULL="30"))
            rc, err = _run(job_env, [sys.executable, "-c", FULL_DISK] + job["gen"][3:], out)
        assert rc == 2, err[-2000:]
        assert "polycam-explorer: error:" in err and "No space left on device" in err
        assert str(out / ".parts") in err and "Traceback" not in err
        assert 0 < _parts(out) < PARTS and not _temporary(out)
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        rc, err = _run(job, job["gen"], out)
        assert rc == 0, err[-2000:]
        assert _results(out) == _results(ref)
