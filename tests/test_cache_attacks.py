"""A hostile user against the map-set cache, the model identity and map-set files.

The standard: a result never depends on cache history (a cache hit gives the maps of a fresh
``compute_mapset`` of this model and this image); loading a saved file never runs code nor
allocates without bound; nothing half-written is left on disk.

1. The model is changed in place (or rebuilt) in a way its fingerprint could miss, then the cache is
   asked again: a module-level constant or helper the forward reads (also inside a generator
   expression, also after a notebook cell redefines it), a builtin or torch op held as an
   attribute, settings in a config object (SimpleNamespace, argparse.Namespace, dataclass,
   ``__slots__``, an enum, deep nesting), a class attribute, a module held in a plain list or as a
   global, a hook object's settings, a global forward hook or pre-hook; and the changes that
   already held (weights, BatchNorm statistics, swapped activations, a forward hook, a patched
   forward, a parametrization, a wrapper, a class redefined with another forward, flags).
2. A cache entry that is not what its name says: another entry linked, copied or renamed onto it,
   a partial map set, one of other layers; a photo file changed under its name (other pixels,
   size, EXIF rotation, grayscale); a damaged entry, a folder in its place, a full disk.
3. Real processes filling one entry at once.
4. Map-set files: a zip bomb (a small file inflating to far more than memory allows); odd dtypes.
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import logging
import math
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import polycam_explorer as pe
from conftest import TinyNet, tmpfs
from polycam_explorer import cache, mapset_schema

PHOTO = np.random.RandomState(3).randint(0, 256, (16, 16, 3), np.uint8)
OTHER_PHOTO = np.random.RandomState(4).randint(0, 256, (16, 16, 3), np.uint8)


def classifier(net: nn.Module) -> pe.Classifier:
    return pe.Classifier(net.eval(), name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16),
                         class_names=[f"c{i}" for i in range(5)])


def fresh(model: nn.Module, photo=PHOTO, layers=None) -> pe.MapSet:
    return pe.compute_mapset(model, pe.load_image(photo, model), layers, progress=False)


def assert_same_maps(ms: pe.MapSet, expected: pe.MapSet) -> None:
    """The cache stores fp16 (``s0`` exactly): maps within 2e-3, as tests/test_storage.py."""
    assert ms.layers == expected.layers
    assert torch.allclose(ms.probs, expected.probs, rtol=0, atol=1e-6), (ms.probs, expected.probs)
    for c in range(expected.num_classes):
        for variant in ("+", "-", "+-"):
            assert torch.allclose(ms.saliency(c, variant), expected.saliency(c, variant), atol=2e-3)


# ----- 1. the model changed in a way the fingerprint might miss ---------------------------------
TEMPERATURE = 1.0
ACTIVATION = torch.sigmoid
HEAD = None  # a module the forward reads as a global (set by the attack)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


HELPER = _identity


class GlobalTemperature(TinyNet):
    def forward(self, x):
        return super().forward(x) / TEMPERATURE


class GlobalActivation(TinyNet):
    def forward(self, x):
        return ACTIVATION(super().forward(x))


class HelperInGenerator(TinyNet):
    def forward(self, x):
        return torch.cat(tuple(HELPER(row) for row in super().forward(x).split(1)))


class GlobalHead(TinyNet):
    def forward(self, x):
        return HEAD(super().forward(x))


class Applied(TinyNet):
    """The logits through ``self.apply_to(self.setting, logits)``: a setting held any way."""

    def __init__(self, setting, apply_to) -> None:
        super().__init__()
        self.setting, self.apply_to = setting, apply_to

    def forward(self, x):
        return self.apply_to(self.setting, super().forward(x))


class ClassScale(TinyNet):
    scale = 1.0

    def forward(self, x):
        return super().forward(x) * self.scale


class Mode(enum.Enum):
    PLAIN = 1
    SHARP = 2


@dataclasses.dataclass
class Settings:
    temperature: float = 1.0


class Slotted:
    __slots__ = ("temperature",)

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature


class HookSettings:
    def __init__(self) -> None:
        self.temperature = 1.0

    def hook(self, _module, _inputs, output):
        return output / self.temperature

    def __call__(self, module, inputs, output):
        return self.hook(module, inputs, output)


def _set(obj, name, value):
    def change():
        setattr(obj, name, value)
    return change


def _scale_weights(module: nn.Module, factor: float):
    def change():
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(factor)
    return change


def _global(monkeypatch, name, value):
    return lambda: monkeypatch.setitem(globals(), name, value)


def _applied(setting, apply_to, change_of):
    def attack(monkeypatch):
        model = classifier(Applied(setting, apply_to))
        return model, change_of(model.net)
    return attack


def _global_hook(register, hook_of):
    def attack(monkeypatch):
        model = classifier(TinyNet())

        return model, lambda: _HANDLES.append(register(hook_of(model.net.fc)))
    return attack


def _hook_settings(hook_of):
    net, settings = TinyNet(), HookSettings()
    _HANDLES.append(net.fc.register_forward_hook(hook_of(settings)))
    return classifier(net), _set(settings, "temperature", 3.0)


_HANDLES: list = []  # hooks a test registered, removed after it


@pytest.fixture(autouse=True)
def _remove_global_hooks():
    yield
    while _HANDLES:
        _HANDLES.pop().remove()


def _notebook(monkeypatch):
    """A notebook: cell 1 defines SCALE, a helper reading it and the network; cell 2 sets SCALE."""
    cell = {"__name__": "__main__", "torch": torch, "TinyNet": TinyNet}
    exec(textwrap.dedent("""
        SCALE = 1.0
        def soften(t):
            return t * SCALE
        class Net(TinyNet):
            def forward(self, x):
                return soften(super().forward(x))
    """), cell)
    return classifier(cell["Net"]()), lambda: exec("SCALE = 3.0", cell)


def _redefined_class(monkeypatch):
    """A notebook cell run again with another forward; the weights loaded into the new object."""
    def define(body):
        cell = {"__name__": "__main__", "torch": torch, "TinyNet": TinyNet}
        exec(textwrap.dedent(f"""
            class Net(TinyNet):
                def forward(self, x):
                    return {body}
        """), cell)
        return cell["Net"]()
    first = define("super().forward(x)")

    def change():
        second = define("super().forward(x) * 3")
        second.load_state_dict(first.state_dict())
        return classifier(second)
    return classifier(first), change


def _with_batchnorm(monkeypatch):
    net = TinyNet()
    net.features.append(nn.BatchNorm2d(8))
    return classifier(net), lambda: net.features[-1].running_mean.add_(0.5)


def _swap_activation(monkeypatch):
    net = TinyNet()
    return classifier(net), lambda: net.features.__setitem__(5, nn.Tanh())


def _forward_hook(monkeypatch):
    net = TinyNet()
    return classifier(net), lambda: _HANDLES.append(net.fc.register_forward_hook(lambda m, i, o: o * 3))


def _patched_forward(monkeypatch):
    net = TinyNet()
    plain = net.forward
    return classifier(net), lambda: setattr(net, "forward", lambda x: plain(x) * 3)


def _parametrization(monkeypatch):
    from torch.nn.utils import parametrize

    class Triple(nn.Module):
        def forward(self, w):
            return w * 3
    net = TinyNet()

    def change():
        parametrize.register_parametrization(net.fc, "weight", Triple())
    return classifier(net), change


def _wrapped(monkeypatch):
    net = TinyNet()
    return classifier(net), lambda: classifier(nn.Sequential(net, nn.Softmax(1)))


ATTACKS = {
    # missed by the fingerprint before
    "module constant read by forward": lambda mp: (classifier(GlobalTemperature()), _global(mp, "TEMPERATURE", 3.0)),
    "module-level builtin read by forward": lambda mp: (classifier(GlobalActivation()),
                                                        _global(mp, "ACTIVATION", torch.tanh)),
    "helper named in a generator expression": lambda mp: (classifier(HelperInGenerator()),
                                                          _global(mp, "HELPER", lambda t: t * 3)),
    "module held as a global": lambda mp: (mp.setitem(globals(), "HEAD", nn.Linear(5, 5)) or classifier(GlobalHead()),
                                           _scale_weights(globals()["HEAD"], 3)),
    "notebook cell changes a constant a helper reads": _notebook,
    "builtin function attribute": _applied(torch.sigmoid, lambda act, t: act(t),
                                           lambda net: _set(net, "setting", torch.tanh)),
    "torch op attribute": _applied(torch.ops.aten.sigmoid, lambda op, t: op(t),
                                   lambda net: _set(net, "setting", torch.ops.aten.tanh)),
    "SimpleNamespace setting": _applied(types.SimpleNamespace(t=1.0), lambda s, t: t / s.t,
                                        lambda net: _set(net.setting, "t", 3.0)),
    "argparse.Namespace setting": _applied(argparse.Namespace(t=1.0), lambda s, t: t / s.t,
                                           lambda net: _set(net.setting, "t", 3.0)),
    "dataclass setting": _applied(Settings(), lambda s, t: t / s.temperature,
                                  lambda net: _set(net.setting, "temperature", 3.0)),
    "__slots__ setting": _applied(Slotted(1.0), lambda s, t: t / s.temperature,
                                  lambda net: _set(net.setting, "temperature", 3.0)),
    "enum setting": _applied(Mode.PLAIN, lambda m, t: t * (3 if m is Mode.SHARP else 1),
                             lambda net: _set(net, "setting", Mode.SHARP)),
    "deeply nested setting": _applied([[[[[[1.0]]]]]], lambda s, t: t / s[0][0][0][0][0][0],
                                      lambda net: (lambda: net.setting[0][0][0][0][0].__setitem__(0, 3.0))),
    "class attribute": lambda mp: (classifier(ClassScale()), lambda: mp.setattr(ClassScale, "scale", 3.0)),
    "module in a plain list": _applied([nn.Linear(5, 5)], lambda heads, t: heads[0](t),
                                       lambda net: _scale_weights(net.setting[0], 3)),
    "bound-method hook's settings": lambda mp: _hook_settings(lambda settings: settings.hook),
    "callable hook object's settings": lambda mp: _hook_settings(lambda settings: settings),
    "global forward hook": _global_hook(nn.modules.module.register_module_forward_hook,
                                        lambda fc: lambda m, i, o: o * 3 if m is fc else None),
    "global forward pre-hook": _global_hook(nn.modules.module.register_module_forward_pre_hook,
                                            lambda fc: lambda m, args: (args[0] * 3,) if m is fc else None),
    # held before: kept as regressions
    "weights": lambda mp: (lambda m: (m, _scale_weights(m.net.fc, 3)))(classifier(TinyNet())),
    "BatchNorm running statistics": _with_batchnorm,
    "ReLU swapped for Tanh": _swap_activation,
    "forward hook": _forward_hook,
    "forward patched on the instance": _patched_forward,
    "parametrization": _parametrization,
    "wrapped in Sequential with Softmax": _wrapped,
    "class redefined with another forward": _redefined_class,
}


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_a_cache_hit_after_a_change_gives_the_changed_models_maps(attack, tmp_path, monkeypatch) -> None:
    model, change = attack(monkeypatch)
    before = pe.mapset_for(PHOTO, model, cache_dir=tmp_path, progress=False)
    changed = change()  # in place, or a new model
    model = changed if isinstance(changed, nn.Module) else model
    expected = fresh(model)
    assert not torch.allclose(before.probs, expected.probs, atol=1e-4), "the change must change the model's output"
    assert_same_maps(pe.mapset_for(PHOTO, model, cache_dir=tmp_path, progress=False), expected)


def test_flags_are_not_identity_and_their_hit_is_the_fresh_maps(tmp_path) -> None:
    net = TinyNet()
    net.features.append(nn.BatchNorm2d(8))
    net.features.append(nn.Dropout(0.5))
    model = classifier(net)
    pe.mapset_for(PHOTO, model, cache_dir=tmp_path, progress=False)
    net.train()
    for p in net.parameters():
        p.requires_grad_(False)
    hit = pe.mapset_for(PHOTO, model, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 1  # one entry: a hit
    assert_same_maps(hit, fresh(model))
    assert net.training and not any(p.requires_grad for p in net.parameters())


class Configured(TinyNet):
    """Settings of every kind, for the identity's stability across processes."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = types.SimpleNamespace(names={"b", "a", "c"}, mode=Mode.SHARP, nested=Settings(2.0),
                                         slotted=Slotted(0.5), table={Mode.PLAIN: (1, 2)})
        self.log, self.lock = logging.getLogger("polycam-test"), threading.Lock()
        self.act = torch.tanh


def test_the_identity_of_settings_is_the_same_in_every_process() -> None:
    """No addresses, no set order in the description of objects, enums, loggers or locks."""
    code = ("import sys, torch; sys.path[:0] = [{tests!r}]; import polycam_explorer as pe; "
            "from test_cache_attacks import Configured; torch.manual_seed(0); "
            "print(pe.model_fingerprint(Configured()))").format(tests=str(Path(__file__).parent))
    seen = set()
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        seen.add(out.stdout.strip())
    torch.manual_seed(0)
    assert seen == {pe.model_fingerprint(Configured())}


class Touchy:
    """An object whose unknown attributes raise, and whose ``__dict__`` has a key that is no string."""

    def __init__(self) -> None:
        self.t = 1.0
        vars(self)[1] = "one"

    def __getattr__(self, name):
        raise RuntimeError(f"no {name}")


def test_cyclic_and_odd_objects_are_described_without_failing() -> None:
    a = types.SimpleNamespace(t=1.0, touchy=Touchy())
    a.me = a
    net = Applied(a, lambda s, t: t / s.t)
    before = pe.model_fingerprint(net)
    a.t = 3.0
    assert pe.model_fingerprint(net) != before
    before = pe.model_fingerprint(net)
    a.touchy.t = 3.0
    assert pe.model_fingerprint(net) != before


# ----- 2. entries that are not what their name says ---------------------------------------------
def _entry(model, photo=PHOTO, layers=None, folder=None) -> Path:
    return folder / f"{cache.cache_key(model, layers, pe.load_image(photo, model))}.mapset.npz"


@pytest.mark.parametrize("how", ["symlink", "copy", "rename", "hard link"])
def test_another_entry_under_this_name_is_a_miss_and_is_replaced(how, tmp_path) -> None:
    model = classifier(TinyNet())
    pe.mapset_for(OTHER_PHOTO, model, cache_dir=tmp_path, progress=False)
    other, mine = _entry(model, OTHER_PHOTO, folder=tmp_path), _entry(model, folder=tmp_path)
    {"symlink": lambda: mine.symlink_to(other), "copy": lambda: mine.write_bytes(other.read_bytes()),
     "rename": lambda: other.rename(mine), "hard link": lambda: os.link(other, mine)}[how]()
    assert_same_maps(pe.mapset_for(PHOTO, model, cache_dir=tmp_path, progress=False), fresh(model))
    assert mine.is_file() and not mine.is_symlink()
    if how != "rename":  # the other entry is left as it was, and still serves its own photo
        assert_same_maps(pe.mapset_for(OTHER_PHOTO, model, cache_dir=tmp_path, progress=False),
                         fresh(model, OTHER_PHOTO))


def test_an_entry_of_other_layers_or_another_layer_rule_is_a_miss(tmp_path) -> None:
    model = classifier(TinyNet())
    two = ["features.3", "features"]
    pe.mapset_for(PHOTO, model, layers=two, cache_dir=tmp_path, progress=False)
    # the entry of two layers under the name of the discovered layers, and of the other two
    _entry(model, folder=tmp_path).write_bytes(_entry(model, layers=two, folder=tmp_path).read_bytes())
    _entry(model, layers=["features.1", "features"], folder=tmp_path).write_bytes(
        _entry(model, layers=two, folder=tmp_path).read_bytes())
    assert_same_maps(pe.mapset_for(PHOTO, model, cache_dir=tmp_path, progress=False), fresh(model))
    got = pe.mapset_for(PHOTO, model, layers=["features.1", "features"], cache_dir=tmp_path, progress=False)
    assert_same_maps(got, fresh(model, layers=["features.1", "features"]))


def test_a_partial_map_set_under_the_name_is_a_miss(tmp_path) -> None:
    model = classifier(TinyNet())
    full = fresh(model)
    partial = pe.MapSet(image=full.image, layers=full.layers, activations=full.activations, s0=full.probs,
                        class_names=full.class_names, model_id=full.model_id, mean=full.mean, std=full.std,
                        stats={"cache_key": cache.cache_key(model, None, full.image)})
    from polycam_explorer.probes import LayerScores
    partial.set_scores(2, LayerScores(*full.scores(2)))
    partial.save(_entry(model, folder=tmp_path), fp16=True)
    got = pe.mapset_for(PHOTO, model, cache_dir=tmp_path, progress=False)
    assert got.complete
    assert_same_maps(got, full)


@pytest.mark.parametrize("how", ["other pixels, same name", "another size", "rotated by EXIF", "grayscale file"])
def test_a_photo_file_changed_under_its_name_gives_its_own_maps(how, tmp_path) -> None:
    from PIL import Image

    model, photo = classifier(TinyNet()), tmp_path / "photo.png"
    Image.fromarray(PHOTO).save(photo)
    pe.mapset_for(photo, model, cache_dir=tmp_path / "cache", progress=False)
    size = None
    if how == "other pixels, same name":
        Image.fromarray(OTHER_PHOTO).save(photo)
    elif how == "another size":
        size = 24
    elif how == "rotated by EXIF":
        photo = tmp_path / "photo.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees when shown
        Image.fromarray(PHOTO).save(photo, exif=exif, quality=100)
    else:
        photo = tmp_path / "photo_gray.png"
        Image.fromarray(PHOTO).convert("L").save(photo)
    got = pe.mapset_for(photo, model, size=size, cache_dir=tmp_path / "cache", progress=False)
    assert_same_maps(got, pe.compute_mapset(model, pe.load_image(photo, model, size=size), progress=False))


@pytest.mark.parametrize("damage", ["truncated", "empty", "folder", "dangling symlink"])
def test_a_damaged_entry_gives_the_fresh_maps(damage, tmp_path) -> None:
    model = classifier(TinyNet())
    pe.mapset_for(PHOTO, model, cache_dir=tmp_path, progress=False)
    path = _entry(model, folder=tmp_path)
    data = path.read_bytes()
    path.unlink()
    {"truncated": lambda: path.write_bytes(data[: len(data) // 2]), "empty": lambda: path.write_bytes(b""),
     "folder": path.mkdir, "dangling symlink": lambda: path.symlink_to(tmp_path / "gone")}[damage]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = pe.mapset_for(PHOTO, model, cache_dir=tmp_path, progress=False)
    assert_same_maps(got, fresh(model))
    if damage == "folder":  # cannot be replaced: said, and left alone
        assert any(issubclass(w.category, cache.CacheWriteWarning) for w in caught)
        assert path.is_dir()
    else:
        assert path.is_file() and not path.is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_leaves_nothing_and_gives_the_fresh_maps(tmp_path) -> None:
    folder = tmp_path / "small"
    with tmpfs(folder, "size=64k") as mounted:
        if not mounted:
            pytest.fail("this test needs a real tmpfs (root with mount rights), as tests/conftest.py's tmpfs")
        (folder / "filler").write_bytes(bytes(60 * 1024))
        with pytest.warns(cache.CacheWriteWarning):
            got = pe.mapset_for(PHOTO, classifier(TinyNet()), cache_dir=folder, progress=False)
        assert sorted(p.name for p in folder.iterdir()) == ["filler"]
    assert_same_maps(got, fresh(classifier(TinyNet())))


# ----- 3. processes filling one entry at once ---------------------------------------------------
FILL = """
import sys, numpy as np, torch
sys.path[:0] = [{tests!r}]
import polycam_explorer as pe
from test_cache_attacks import PHOTO, classifier, TinyNet
sys.stdin.readline()  # all start together
ms = pe.mapset_for(PHOTO, classifier(TinyNet()), cache_dir={folder!r}, progress=False)
print(repr(ms.probs.tolist()))
"""


def test_processes_filling_one_entry_at_once_leave_one_whole_entry(tmp_path) -> None:
    code = FILL.format(tests=str(Path(__file__).parent), folder=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate("go\n", timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    assert len({out for out, _ in outs}) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [_entry(classifier(TinyNet()), folder=tmp_path).name]
    assert_same_maps(pe.mapset_for(PHOTO, classifier(TinyNet()), cache_dir=tmp_path / "cache", progress=False),
                     fresh(classifier(TinyNet())))


# ----- 4. map-set files --------------------------------------------------------------------------
def _inflating(src: Path, dst: Path, key: str, shape: tuple) -> Path:
    """``src`` with the array ``key`` replaced by honest zeros of ``shape``: a small file (deflate
    packs zeros about 1000:1) whose array takes ``prod(shape) * 4`` bytes once read."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.namelist():
            if item != f"{key}.npy":
                zout.writestr(item, zin.read(item))
        with zout.open(f"{key}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
            zeros = bytes(1 << 20)
            for _ in range(math.prod(shape) * 4 >> 20):
                f.write(zeros)
    return dst


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch) -> None:
    model = classifier(TinyNet())
    fresh(model).save(tmp_path / "a.mapset.npz")
    bomb = _inflating(tmp_path / "a.mapset.npz", tmp_path / "bomb.mapset.npz", "act_0", (24, 1024, 1024))
    assert bomb.stat().st_size < 1 << 20  # 96 MiB of activations in under 1 MiB
    monkeypatch.setattr(mapset_schema, "memory_budget", lambda: 32 << 20, raising=False)  # as if 256 MiB free
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"bomb\.mapset\.npz.*too large to load.*1006\d{5} bytes once decompressed"):
            pe.MapSet.load(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak} bytes taken before refusing"
    # the cache takes it for a miss and computes the maps
    monkeypatch.setattr(mapset_schema, "memory_budget", lambda: 32 << 20)
    entry = _entry(model, folder=tmp_path / "cache")
    entry.parent.mkdir()
    entry.write_bytes(bomb.read_bytes())
    assert_same_maps(pe.mapset_for(PHOTO, model, cache_dir=tmp_path / "cache", progress=False), fresh(model))


def test_the_memory_budget_is_a_part_of_the_memory_available() -> None:
    budget = mapset_schema.memory_budget()
    assert 0 < budget
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    assert budget <= available // 8 * 1.1


@pytest.mark.parametrize("dtype", [np.complex64, ">f4", [("a", "<f4")], np.int64, bool])
def test_arrays_of_odd_dtypes_are_a_value_error_naming_the_file(dtype, tmp_path) -> None:
    fresh(classifier(TinyNet())).save(tmp_path / "a.mapset.npz")
    with np.load(tmp_path / "a.mapset.npz") as data:
        arrays = dict(data)
    arrays["act_1"] = np.zeros(arrays["act_1"].shape, dtype)
    np.savez(tmp_path / "odd.mapset.npz", **arrays)
    with pytest.raises(ValueError, match=r"odd\.mapset\.npz.*'act_1'.*dtype"):
        pe.MapSet.load(tmp_path / "odd.mapset.npz")
