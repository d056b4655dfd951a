"""Storage that is never silently wrong or lost.

1. fp16 map-set files (and the cache, always fp16) round-trip every map faithfully, whatever the
   scale of the activations and probabilities; NaN/inf are refused when saving.
2. A cache that cannot be written (read-only folder, a file in the folder's place, a full disk) is
   a warning: the sweep's result is returned, and no partial file is left.
3. Files that are not map sets, or are damaged or tampered with, are refused with a ValueError that
   says which (never IndexError, KeyError, TypeError or RecursionError).

Faithfulness tolerance (``assert_faithful``): ``s0`` exactly equal; every saliency map (every
class, variant, depth, LNorm on and off) within 2e-3 absolute and, where the map is not constant,
at correlation >= 0.9999 with the map of the in-memory set.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import polycam_explorer as pe
from conftest import TinyNet, tmpfs
from polycam_explorer import cache, mapset_io
from polycam_explorer import compute as compute_module
from polycam_explorer.probes import LayerScores

VARIANTS = ("+", "-", "+-")


# ----- helpers --------------------------------------------------------------------------------
def tiny_classifier(net: torch.nn.Module | None = None) -> pe.Classifier:
    return pe.Classifier((net or TinyNet()).eval(), name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3,
                         input_size=(16, 16), class_names=[f"c{i}" for i in range(5)])


def tiny_input(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def base() -> pe.MapSet:
    return pe.compute_mapset(tiny_classifier(), tiny_input(), progress=False)


def all_maps(ms: pe.MapSet, classes=None):
    for c in range(ms.num_classes) if classes is None else classes:
        for v in VARIANTS:
            for lnorm in (True, False):
                for d in range(1, ms.depth_available + 1):
                    yield (c, v, d, lnorm), ms.saliency(c, v, d, lnorm)


def assert_faithful(loaded: pe.MapSet, ms: pe.MapSet, atol: float = 2e-3, min_r: float = 0.9999,
                    classes=None) -> None:
    assert torch.equal(loaded.probs.cpu(), ms.probs.cpu()), "s0 must round-trip exactly"
    assert loaded.layers == ms.layers and loaded.depth_available == ms.depth_available
    for (key, a), (_, b) in zip(all_maps(loaded, classes), all_maps(ms, classes)):
        assert torch.isfinite(a).all(), f"{key}: non-finite values after loading"
        diff = float((a - b).abs().max())
        assert diff <= atol, f"{key}: max abs diff {diff}"
        if float(b.std()) > 1e-3:
            r = float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
            assert r >= min_r, f"{key}: correlation {r}"


def scaled(ms: pe.MapSet, acts: float | list[float] = 1.0, probs: float = 1.0) -> pe.MapSet:
    """A copy of ``ms`` with activations (per layer, or per channel with a list) and all
    probabilities (s0, S+, S-) multiplied."""
    out = copy.copy(ms)
    out._cache = type(ms._cache)()
    def factor(a: torch.Tensor):
        if not isinstance(acts, list):
            return acts
        return torch.tensor([acts[k % len(acts)] for k in range(a.shape[0])], dtype=torch.float64)[:, None, None]

    out.activations = [(a.double() * factor(a)).float() for a in ms.activations]
    out.probs = (ms.probs.double() * probs).float()
    out._plus = [None if t is None else (t.double() * probs).float() for t in ms._plus]
    out._minus = [None if t is None else (t.double() * probs).float() for t in ms._minus]
    return out


def rewrite(path: Path, edit) -> None:
    """Apply ``edit(header, arrays)`` (in place, or returning the header's new text) to a saved
    map-set file (arrays as stored)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(str(arrays["header"]))
    new_text = edit(header, arrays)  # a string return replaces the header's text
    arrays["header"] = np.array(new_text if isinstance(new_text, str) else json.dumps(header))
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def no_temp_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


# ===== 1. fp16 storage ========================================================================
@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("acts, probs", [
    (1.0, 1.0),
    (1e6, 1.0),          # activations above fp16's largest value (65504)
    (1e12, 1.0),
    (1e-7, 1.0),         # below fp16's smallest normal (6.1e-5)
    (1e-30, 1.0),
    (1.0, 1e-9),         # probabilities near 0: S+, s0 - S- far below fp16's normals
    (1e-7, 1e-20),
    ([1e-6, 1.0, 1e5, 3e-3, 1e7, 1e-4, 10.0, 1e2], 1.0),   # channels of very different scales
])
def test_saved_maps_agree_with_the_in_memory_ones(base, tmp_path, fp16, acts, probs) -> None:
    ms = scaled(base, acts, probs)
    path = tmp_path / "m.mapset.npz"
    ms.save(path, fp16=fp16)
    loaded = pe.MapSet.load(path)
    if fp16:
        assert_faithful(loaded, ms)
    else:
        assert torch.equal(loaded.probs, ms.probs)
        for (key, a), (_, b) in zip(all_maps(loaded), all_maps(ms)):
            assert torch.equal(a, b), key


def test_fp16_keeps_the_stored_arrays_within_fp16_rounding(base, tmp_path) -> None:
    ms = scaled(base, [1e-9, 1e9, 1.0, 1e-3], 1e-12)
    path = tmp_path / "m.mapset.npz"
    ms.save(path, fp16=True)
    loaded = pe.MapSet.load(path)
    for a, b in zip(loaded.activations, ms.activations):
        assert torch.allclose(a, b, rtol=2 ** -11, atol=0), float(((a - b).abs() / b.abs()).nan_to_num().max())
    for i in range(len(ms.layers)):
        for a, b in zip(loaded.scores(i), ms.scores(i)):
            assert torch.isfinite(a).all()
    # the weights the maps use: S+ and s0 - S- each within fp16's relative rounding
    for i in range(len(ms.layers)):
        lp, lm = loaded.scores(i)
        mp, mm = ms.scores(i)
        assert torch.allclose(lp, mp, rtol=2 ** -11, atol=0)
        d_loaded, d_mem = (loaded.probs[None] - lm).double(), (ms.probs[None] - mm).double()
        assert torch.allclose(d_loaded, d_mem, rtol=2 ** -10, atol=1e-7 * float(ms.probs.max()))


def _extreme_classifier(conv: float = 1.0, fc: float = 1.0) -> pe.Classifier:
    net = TinyNet()
    with torch.no_grad():
        for m in net.features:
            if isinstance(m, torch.nn.Conv2d):  # ReLU(k z) = k ReLU(z): activations scale by k per layer
                m.weight.mul_(conv)
                m.bias.mul_(conv)
        net.fc.weight.mul_(fc)
    return tiny_classifier(net)


@pytest.mark.parametrize("conv, fc", [(100.0, 1e-6), (0.01, 1e6), (1.0, 60.0)],
                         ids=["huge-activations", "tiny-activations", "near-zero-probabilities"])
def test_a_cache_hit_gives_the_maps_of_a_fresh_sweep(tmp_path, conv, fc) -> None:
    model = _extreme_classifier(conv, fc)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    fresh = pe.compute_mapset(model, pe.load_image(image, model), progress=False)
    first = pe.mapset_for(image, model, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.mapset.npz"))) == 1
    second = pe.mapset_for(image, model, cache_dir=tmp_path, progress=False)  # from the cache
    assert_faithful(first, fresh)
    assert_faithful(second, fresh)


@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("where", ["act", "plus", "minus", "probs", "image"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_save_refuses_nan_and_inf(base, tmp_path, fp16, where, bad) -> None:
    ms = scaled(base)
    if where == "act":
        ms.activations[1] = ms.activations[1].clone()
        ms.activations[1][2, 1, 1] = bad
    elif where == "probs":
        ms.probs = ms.probs.clone()
        ms.probs[3] = bad
    elif where == "image":
        ms.image = ms.image.clone()
        ms.image[0, 0, 2, 2] = bad
    else:
        store = ms._plus if where == "plus" else ms._minus
        store[0] = store[0].clone()
        store[0][1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite") as info:
        ms.save(tmp_path / "bad.mapset.npz", fp16=fp16)
    assert "bad.mapset.npz" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_fp16_files_stay_small(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    acts = [torch.rand(64, 28, 28, generator=g), torch.rand(128, 14, 14, generator=g) * 1e5]
    s0 = torch.softmax(torch.randn(1000, generator=g), 0)
    ms = pe.MapSet(image=torch.rand(1, 3, 56, 56, generator=g), layers=["a", "b"], activations=acts, s0=s0)
    for i, a in enumerate(acts):
        ms.set_scores(i, LayerScores(torch.softmax(torch.randn(a.shape[0], 1000, generator=g), 1),
                                     torch.softmax(torch.randn(a.shape[0], 1000, generator=g), 1)))
    ms.save(tmp_path / "a32.npz")
    ms.save(tmp_path / "a16.npz", fp16=True)
    size32, size16 = (tmp_path / "a32.npz").stat().st_size, (tmp_path / "a16.npz").stat().st_size
    assert size16 <= 0.6 * size32, (size16, size32)
    some = [i for i, _, _ in ms.topk(3)] + [int(i) for i in torch.argsort(s0)[:3]] + [500]
    assert_faithful(pe.MapSet.load(tmp_path / "a16.npz"), ms, classes=some)


# ----- files of the previous format (version 1) -----------------------------------------------
def _write_version1(ms: pe.MapSet, path: Path, fp16: bool) -> None:
    """A file as polycam-explorer wrote it with format version 1 (fp16: plain casts, no scales)."""
    dtype = np.float16 if fp16 else np.float32
    header = {"format": mapset_io.FORMAT, "version": 1, "layers": ms.layers, "class_names": ms.class_names,
              "model_name": ms.model_name, "model_id": ms.model_id, "mean": list(ms.mean),
              "std": list(ms.std), "probed": [p is not None for p in ms._plus], "stats": ms.stats,
              "dtype": np.dtype(dtype).name}
    arrays = {"header": np.array(json.dumps(header)), "image": ms.image.numpy(), "s0": ms.probs.numpy()}
    for i, act in enumerate(ms.activations):
        with np.errstate(over="ignore"):  # version 1 let values above 65504 overflow to inf
            arrays[f"act_{i}"] = act.numpy().astype(dtype)
        arrays[f"splus_{i}"] = ms._plus[i].numpy().astype(dtype)
        if fp16:
            arrays[f"dminus_{i}"] = (ms.probs[None] - ms._minus[i]).numpy().astype(dtype)
        else:
            arrays[f"sminus_{i}"] = ms._minus[i].numpy().astype(dtype)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def test_version1_fp32_files_still_load_exactly(base, tmp_path) -> None:
    path = tmp_path / "v1.mapset.npz"
    _write_version1(base, path, fp16=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = pe.MapSet.load(path)
    for (key, a), (_, b) in zip(all_maps(loaded), all_maps(base)):
        assert torch.equal(a, b), key


def test_version1_fp16_files_load_with_a_warning_and_overflowed_ones_are_refused(base, tmp_path) -> None:
    path = tmp_path / "v1.mapset.npz"
    _write_version1(base, path, fp16=True)
    with pytest.warns(RuntimeWarning, match="version 1"):
        pe.MapSet.load(path)
    _write_version1(scaled(base, 1e6), path, fp16=True)  # inf in the file
    with pytest.raises(ValueError, match=r"corrupt map-set file .*v1\.mapset\.npz.*NaN or infinite"):
        pe.MapSet.load(path)


def test_the_cache_recomputes_entries_of_an_older_format(tmp_path) -> None:
    model = _extreme_classifier(100.0, 1e-6)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    x = pe.load_image(image, model)
    fresh = pe.compute_mapset(model, x, progress=False)
    entry = tmp_path / f"{cache.cache_key(model, None, x)}.mapset.npz"
    _write_version1(scaled(fresh, 1e-6), entry, fp16=True)  # lossy, but readable
    assert cache.cached(model, None, x, tmp_path) is None
    assert_faithful(pe.mapset_for(image, model, cache_dir=tmp_path, progress=False), fresh)
    assert json.loads(str(np.load(entry)["header"]))["version"] == mapset_io.VERSION  # rewritten


# ===== 2. a cache that cannot be written =======================================================
def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _check_sweep_kept(result: pe.MapSet, model, image, record: list) -> None:
    fresh = pe.compute_mapset(model, pe.load_image(image, model), progress=False)
    assert result.complete
    assert torch.equal(result.probs, fresh.probs)
    for (key, a), (_, b) in zip(all_maps(result), all_maps(fresh)):
        assert torch.equal(a, b), key
    assert record, "a cache that cannot be written must warn"
    assert all(issubclass(w.category, RuntimeWarning) for w in record)


IMAGE = np.random.default_rng(7).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def test_a_file_in_place_of_the_cache_folder_is_a_warning(tmp_path) -> None:
    model = tiny_classifier()
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    with pytest.warns(RuntimeWarning) as record:
        ms = pe.mapset_for(IMAGE, model, cache_dir=blocker, progress=False)
    _check_sweep_kept(ms, model, IMAGE, record)
    assert any(str(blocker) in str(w.message) for w in record)
    assert sorted(os.listdir(tmp_path)) == ["cache"] and blocker.read_text() == "not a folder"
    nested = blocker / "sub"  # a file above the folder
    with pytest.warns(RuntimeWarning) as record:
        ms = pe.mapset_for(IMAGE, model, cache_dir=nested, progress=False)
    _check_sweep_kept(ms, model, IMAGE, record)


def test_a_read_only_cache_folder_is_a_warning(tmp_path) -> None:
    model = tiny_classifier()
    folder = tmp_path / "ro"
    with contextlib.ExitStack() as stack:
        if not _is_root():
            folder.mkdir()
            folder.chmod(0o500)
            stack.callback(folder.chmod, 0o700)
            fault = "chmod 0o500"
        elif stack.enter_context(tmpfs(folder, "ro,size=64k")):
            fault = "read-only tmpfs"
        else:  # root without mount rights: chmod does not stop root, so simulate EROFS
            folder.mkdir(exist_ok=True)  # _tmpfs made it

            def read_only(*args, **kwargs):
                raise OSError(errno.EROFS, "Read-only file system (simulated)")

            # atomic_write's module: its open() makes the temporary file
            files_module = sys.modules[mapset_io.atomic_write.__module__]
            stack.enter_context(pytest.MonkeyPatch.context()).setattr(files_module, "open", read_only,
                                                                      raising=False)
            fault = "simulated EROFS"
        print(f"fault used: {fault}")
        with pytest.warns(RuntimeWarning) as record:
            ms = pe.mapset_for(IMAGE, model, cache_dir=folder, progress=False)
        _check_sweep_kept(ms, model, IMAGE, record)
        assert any(str(folder) in str(w.message) for w in record)
        assert os.listdir(folder) == []


def test_a_full_disk_is_a_warning_and_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    model = tiny_classifier()
    folder = tmp_path / "full"
    with tmpfs(folder, "size=64k") as mounted:
        if mounted:
            fault = "full tmpfs"
            fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
            try:  # fill the disk to the last page
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * 4096)
            finally:
                os.close(fd)
        else:
            fault = "simulated ENOSPC"

            def full(file, **arrays):
                file.write(b"PK partial")
                raise OSError(errno.ENOSPC, "No space left on device (simulated)")

            monkeypatch.setattr(np, "savez_compressed", full)
        print(f"fault used: {fault}")
        with pytest.warns(RuntimeWarning) as record:
            ms = pe.mapset_for(IMAGE, model, cache_dir=folder, progress=False)
        monkeypatch.undo()
        _check_sweep_kept(ms, model, IMAGE, record)
        assert any(str(folder) in str(w.message) and "space" in str(w.message).lower() for w in record)
        assert sorted(os.listdir(folder)) == (["filler"] if mounted else [])


def test_store_warns_and_returns_none_but_an_explicit_save_raises(base, tmp_path) -> None:
    model = tiny_classifier()
    x = tiny_input()
    blocker = tmp_path / "cache"
    blocker.write_text("x")
    with pytest.warns(cache.CacheWriteWarning, match="cache"):
        assert cache.store(base, model, None, x, blocker) is None
    with pytest.raises(OSError):
        base.save(blocker / "m.mapset.npz", fp16=True)
    assert sorted(os.listdir(tmp_path)) == ["cache"]


def test_the_explorer_keeps_its_sweep_when_the_cache_cannot_be_written(tmp_path) -> None:
    model = tiny_classifier()
    blocker = tmp_path / "cache"
    blocker.write_text("x")
    with pytest.warns(RuntimeWarning):
        ex = pe.explore(IMAGE, model=model, cache_dir=blocker, wait=True, panel_size=64)
    try:
        assert "color:#b00020" not in ex.status.value, ex.status.value
        assert ex.mapsets["image 1"].complete
    finally:
        ex.close()


def test_atomic_write_leaves_nothing_when_the_rename_fails(tmp_path, monkeypatch) -> None:
    from polycam_explorer import files

    def broken(src, dst):
        raise OSError(errno.EXDEV, "rename failed")

    monkeypatch.setattr(files.os, "replace", broken)
    with pytest.raises(OSError):
        with files.atomic_write(tmp_path / "out.bin") as f:
            f.write(b"data")
    assert os.listdir(tmp_path) == []


# ===== 3. files that are not map sets, damaged or tampered with ================================
def _not_ours(path: Path, *extra: str) -> None:
    with pytest.raises(ValueError) as info:
        pe.MapSet.load(path)
    message = str(info.value)
    assert "not a polycam-explorer map-set file" in message and path.name in message, message
    assert "allow_pickle" not in message
    for word in extra:
        assert word in message, message


def test_foreign_files_are_named_as_such(tmp_path) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("hello, not a map set\n")
    _not_ours(text)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    _not_ours(empty, "empty")
    npy = tmp_path / "array.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros((3, 4)))
    _not_ours(npy, ".npy")
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3), b=np.ones((2, 2)))
    _not_ours(other)
    saliency = tmp_path / "cat.npz"  # the saliency maps of `generate`
    np.savez_compressed(saliency, **{"polycam": np.zeros((16, 16), np.float32),
                                     "__polycam_explorer__": np.array(json.dumps({"model": "x"}))})
    _not_ours(saliency)
    exported = tmp_path / "view.maps.npz"  # the explorer's export of the maps on screen
    np.savez_compressed(exported, panel0_saliency=np.zeros((16, 16), np.float32), image=np.array("cat"),
                        class_names=np.array(["cat"]))
    _not_ours(exported)
    archive = tmp_path / "docs.npz"  # a zip of something else
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
    _not_ours(archive, "zip")
    png = tmp_path / "picture.npz"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    _not_ours(png)
    text_header = tmp_path / "text_header.npz"  # a text header that is not JSON, nothing of ours
    np.savez(text_header, header=np.array("made by another tool"), data=np.zeros(4))
    _not_ours(text_header)
    json_header = tmp_path / "json.npz"  # a header, but someone else's
    np.savez(json_header, header=np.array(json.dumps({"format": "other/tool", "version": 1})))
    _not_ours(json_header)


@pytest.mark.parametrize("where", ["header", "act_0", "extra"])
def test_pickled_objects_are_refused_as_unsafe(base, tmp_path, where) -> None:
    path = tmp_path / "pickled.npz"
    if where == "header":
        np.savez(path, header=np.array([{"format": mapset_io.FORMAT}], dtype=object))
    else:
        base.save(path)
        rewrite(path, lambda h, a: a.__setitem__(where, np.array([{"x": 1}, None], dtype=object)))
    with pytest.raises(ValueError) as info:
        pe.MapSet.load(path)
    message = str(info.value)
    assert "pickled" in message and "could run code" in message and "pickled.npz" in message, message
    assert "allow_pickle" not in message


def _deep(n: int):
    value = 0
    for _ in range(n):
        value = [value]
    return value


def _set(key, value):
    def edit(h, a):
        h[key] = value
    return edit


def _drop_key(key):
    def edit(h, a):
        del h[key]
    return edit


def _array(key, value):
    def edit(h, a):
        if value is None:
            a.pop(key)
        else:
            a[key] = value(a[key]) if callable(value) else value
    return edit


TAMPERED = {
    "layers-not-a-list": _set("layers", "features"),
    "layers-not-strings": _set("layers", [1, 2, 3]),
    "layers-empty": _set("layers", []),
    "layers-too-short": lambda h, a: h.__setitem__("layers", h["layers"][:2]),
    "layers-too-long": lambda h, a: h.__setitem__("layers", h["layers"] + ["x"]),
    "layers-repeated": lambda h, a: h.__setitem__("layers", [h["layers"][0]] * 3),
    "probed-wrong-length": _set("probed", [True, True]),
    "probed-not-bools": _set("probed", [1, "yes", None]),
    "probed-not-a-list": _set("probed", True),
    "probed-finest-only": _set("probed", [True, False, False]),
    "probed-with-a-gap": _set("probed", [True, False, True]),
    "class-names-wrong-length": _set("class_names", ["a", "b"]),
    "class-names-not-strings": _set("class_names", [1, 2, 3, 4, 5]),
    "class-names-null": _set("class_names", None),
    "mean-not-numbers": _set("mean", ["a", "b", "c"]),
    "mean-wrong-length": _set("mean", [0.5, 0.5]),
    "mean-scalar": _set("mean", 0.5),
    "mean-bools": _set("mean", [True, False, True]),
    "std-zero": _set("std", [0.5, 0.0, 0.5]),
    "std-nested": _set("std", [[0.5], [0.5], [0.5]]),
    "model-id-number": _set("model_id", 5),
    "model-name-null": _set("model_name", None),
    "stats-list": _set("stats", [1, 2]),
    "stats-deep": _set("stats", {"x": _deep(100)}),
    "dtype-unknown": _set("dtype", "int8"),
    "deeply-nested-json": lambda h, a: "[" * 100000 + "]" * 100000,
    "deeply-nested-layers": lambda h, a: json.dumps(h)[:-1] + ', "layers": ' + "[" * 50000 + "]" * 50000 + "}",
    "header-not-json": lambda h, a: "{this is not json",
    "header-not-an-object": lambda h, a: json.dumps([h]),
    "header-number": lambda h, a: "42",
    **{f"missing-{k}": _drop_key(k) for k in ("layers", "class_names", "model_name", "model_id", "mean",
                                               "std", "probed", "stats", "dtype")},
    "act-missing": _array("act_1", None),
    "act-wrong-rank": _array("act_0", lambda x: x[0]),
    "act-wrong-channels": _array("act_0", lambda x: x[:-1]),
    "act-int-dtype": _array("act_0", lambda x: x.astype(np.int32)),
    "act-string-dtype": _array("act_0", lambda x: np.array(["a", "b"])),
    "act-complex": _array("act_0", lambda x: x.astype(np.complex64)),
    "act-nan": _array("act_2", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 3, np.nan, x)),
    "splus-missing": _array("splus_0", None),
    "splus-wrong-shape": _array("splus_0", lambda x: x[:, :-1]),
    "splus-1d": _array("splus_1", lambda x: x[0]),
    "dminus-missing": lambda h, a: [a.pop(k) for k in list(a) if k.startswith(("dminus_0", "sminus_0"))],
    "s0-wrong-length": _array("s0", lambda x: x[:-1]),
    "s0-2d": _array("s0", lambda x: x[None]),
    "s0-inf": _array("s0", lambda x: np.full_like(x, np.inf)),
    "image-missing": _array("image", None),
    "image-wrong-rank": _array("image", lambda x: x[0]),
    "image-wrong-channels": _array("image", lambda x: x[:, :2]),
    "scale-wrong-length": lambda h, a: [a.__setitem__(k, a[k][:-1]) for k in list(a) if k.endswith("_exp")][:1],
    "scale-float": lambda h, a: [a.__setitem__(k, a[k].astype(np.float32)) for k in list(a) if k.endswith("_exp")],
    "scale-huge": lambda h, a: [a.__setitem__(k, a[k] * 0 + 30000) for k in list(a) if k.endswith("_exp")],
    "scale-missing": lambda h, a: [a.pop(k) for k in list(a) if k.endswith("_exp")],
    "offset-wrong-length": lambda h, a: [a.__setitem__(k, a[k][:-1]) for k in list(a) if k.endswith("_off")][:1],
    "offset-strings": lambda h, a: [a.__setitem__(k, a[k].astype(str)) for k in list(a) if k.endswith("_off")],
    "offset-nan": lambda h, a: [a.__setitem__(k, a[k] * np.nan) for k in list(a) if k.endswith("_off")],
}


@pytest.mark.parametrize("case, fp16", [(case, fp16) for case in sorted(TAMPERED) for fp16 in (False, True)
                                        if fp16 or not case.startswith(("scale-", "offset-"))])
def test_tampered_files_are_corrupt_not_crashes(base, tmp_path, case, fp16) -> None:
    path = tmp_path / "tampered.mapset.npz"
    base.save(path, fp16=fp16)
    rewrite(path, TAMPERED[case])
    with pytest.raises(ValueError) as info:
        pe.MapSet.load(path)
    message = str(info.value)
    assert f"corrupt map-set file {str(path)!r}: " in message, message
    assert cache.cached(tiny_classifier(), None, tiny_input(), tmp_path) is None  # and a cache miss


NASTY = [None, True, 0, -1, 1.5, float("nan"), "", "x", [], [None], ["a", 1], {}, {"a": []}, _deep(30),
         [[1.0, 2.0]], [0.5, 0.5, 0.5], ["c0", "c1", "c2", "c3", "c4"], [True, True, True]]


@pytest.mark.parametrize("key", ["format", "version", "layers", "class_names", "model_name", "model_id",
                                 "mean", "std", "probed", "stats", "dtype"])
def test_any_header_value_loads_or_is_a_clear_value_error(base, tmp_path, key) -> None:
    """A fuzz over every header key and a list of awkward JSON values."""
    path = tmp_path / "fuzz.mapset.npz"
    base.save(path, fp16=True)
    original = path.read_bytes()
    for value in NASTY:
        path.write_bytes(original)
        rewrite(path, _set(key, value))
        try:
            loaded = pe.MapSet.load(path)
        except ValueError as exc:
            message = str(exc)
            assert "fuzz.mapset.npz" in message, (value, message)
            assert any(s in message for s in ("corrupt map-set file", "not a polycam-explorer map-set file",
                                              "format version")), (value, message)
        else:  # accepted: then it must be a usable map set
            for _, m in all_maps(loaded):
                assert torch.isfinite(m).all()
            repr(loaded)
            loaded.save(tmp_path / "again.npz")


def test_a_valid_header_with_extra_keys_and_arrays_still_loads(base, tmp_path) -> None:
    path = tmp_path / "extra.mapset.npz"
    base.save(path, fp16=True)
    rewrite(path, lambda h, a: (h.__setitem__("note", "added later"), a.__setitem__("thumb", np.zeros(3))))
    assert_faithful(pe.MapSet.load(path), base)


def test_a_newer_version_is_refused_with_the_versions_read(base, tmp_path) -> None:
    path = tmp_path / "new.mapset.npz"
    base.save(path)
    rewrite(path, _set("version", 99))
    with pytest.raises(ValueError, match=r"format version 99.*reads version"):
        pe.MapSet.load(path)


def test_channels_that_vary_little_around_a_large_level_keep_their_maps(base, tmp_path) -> None:
    ms = scaled(base)
    ms.activations = [a + 1000.0 * a.amax() for a in ms.activations]  # contrast ~1e-3 of the level
    ms.save(tmp_path / "level.npz", fp16=True)
    assert_faithful(pe.MapSet.load(tmp_path / "level.npz"), ms)


def test_zero_weights_stay_exactly_zero(base, tmp_path) -> None:
    ms = scaled(base)
    ms._minus = [None if m is None else ms.probs[None].expand_as(m).clone() for m in ms._minus]  # S- = s0
    ms.save(tmp_path / "zero.npz", fp16=True)
    loaded = pe.MapSet.load(tmp_path / "zero.npz")
    for i in range(len(ms.layers)):
        assert torch.equal(loaded.weights(0, "-", i), torch.zeros_like(loaded.weights(0, "-", i)))
    assert_faithful(loaded, ms)


def test_a_map_set_that_cannot_be_stored_faithfully_is_returned_with_a_warning(tmp_path, monkeypatch) -> None:
    model = tiny_classifier()
    real = compute_module.compute_mapset

    def with_nan(*args, **kwargs):
        ms = real(*args, **kwargs)
        ms.activations[0] = ms.activations[0].clone()
        ms.activations[0][0, 0, 0] = float("nan")
        return ms

    monkeypatch.setattr(compute_module, "compute_mapset", with_nan)
    with pytest.warns(cache.CacheWriteWarning, match="NaN or infinite"):
        ms = pe.mapset_for(IMAGE, model, cache_dir=tmp_path, progress=False)
    assert ms.complete and os.listdir(tmp_path) == []


def test_an_unreadable_cache_is_a_miss(tmp_path, monkeypatch) -> None:
    model, x = tiny_classifier(), tiny_input()

    def denied(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", denied)
    assert cache.cached(model, None, x, tmp_path) is None


def test_load_names_a_bad_device(base, tmp_path) -> None:
    base.save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="device"):
        pe.MapSet.load(tmp_path / "m.npz", device="gpu7")


def test_a_folder_is_not_a_map_set_file(tmp_path) -> None:
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ValueError, match="folder"):
        pe.MapSet.load(tmp_path / "dir.npz")


def test_save_never_writes_a_file_that_load_would_refuse(base, tmp_path) -> None:
    ms = scaled(base)
    ms.stats = dict(ms.stats, batch=np.int64(16), seconds=torch.tensor(1.5), note=None, missing=float("nan"))
    ms.save(tmp_path / "ok.npz", fp16=True)  # NumPy/torch scalars are stored as numbers
    loaded = pe.MapSet.load(tmp_path / "ok.npz")
    assert loaded.stats["batch"] == 16 and loaded.stats["seconds"] == 1.5
    for attribute, value, word in [("class_names", list(range(5)), "class_names"),
                                   ("stats", {"x": object()}, "object"),
                                   ("stats", {"x": {"deep": [1]}}, "stats"),
                                   ("std", (0.5, 0.0, 0.5), "std"),
                                   ("model_name", None, "model_name"),
                                   ("mean", (0.5, 0.5), "mean"),
                                   ("image", torch.zeros(3, 16, 16), "image"),
                                   ("activations", [torch.zeros(4, 16), torch.zeros(6, 8, 8),
                                                    torch.zeros(8, 4, 4)], "act_0"),
                                   ("probs", torch.full((4,), 0.25), "classes")]:
        bad = scaled(base)
        setattr(bad, attribute, value)
        with pytest.raises(ValueError, match=word) as info:
            bad.save(tmp_path / "bad.npz", fp16=True)
        assert "bad.npz" in str(info.value)
        assert not (tmp_path / "bad.npz").exists()


def test_load_refuses_a_classifier_with_other_preprocessing(tmp_path, tiny_model, tiny_x) -> None:
    """The fingerprint covers the network; a Classifier's mean and std are compared too."""
    ms = pe.compute_mapset(tiny_model, tiny_x, progress=False)
    path = tmp_path / "a.mapset.npz"
    ms.save(path)
    assert pe.MapSet.load(path, model=tiny_model).model_id == ms.model_id
    assert pe.MapSet.load(path, model=tiny_model.net).model_id == ms.model_id  # bare net: no preprocessing
    other = pe.Classifier(tiny_model.net, name="tiny", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    with pytest.raises(ValueError, match="normalisation mean="):
        pe.MapSet.load(path, model=other)


def test_the_photo_frame_is_saved_and_older_files_have_none(tmp_path, tiny_model, tiny_x) -> None:
    ms = pe.compute_mapset(tiny_model, tiny_x, progress=False)
    assert ms.frame is None
    ms.frame = (266, 400)
    for fp16 in (False, True):
        path = tmp_path / f"f{fp16}.mapset.npz"
        ms.save(path, fp16=fp16)
        assert pe.MapSet.load(path).frame == (266, 400)
    ms.frame = None
    ms.save(tmp_path / "none.mapset.npz")
    assert pe.MapSet.load(tmp_path / "none.mapset.npz").frame is None


@pytest.mark.parametrize("frame", [[10 ** 30, 10 ** 30], [1, 10 ** 9], [2 ** 63, 2]])
def test_a_frame_larger_than_any_photo_is_corrupt(base, tmp_path, frame) -> None:
    """A hand-edited frame of 10^30 x 10^30 would have a full-resolution export allocate it."""
    path = tmp_path / "big.mapset.npz"
    base.save(path)
    rewrite(path, _set("frame", frame))
    with pytest.raises(ValueError, match=r"corrupt map-set file .*header 'frame' is .*over \d+ pixels"):
        pe.MapSet.load(path)


def test_mapset_for_records_the_photos_frame(tmp_path, tiny_model) -> None:
    picture = (np.random.default_rng(0).random((30, 50, 3)) * 255).astype(np.uint8)
    first = pe.mapset_for(picture, tiny_model, cache_dir=tmp_path, progress=False)
    again = pe.mapset_for(picture, tiny_model, cache_dir=tmp_path, progress=False)  # from the cache
    assert first.frame == again.frame == (30, 50)
