"""Clear errors for bad images, arguments and files; map-set files saved atomically and read back."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import polycam_explorer as pe
from conftest import TinyNet


@pytest.fixture(scope="module")
def tiny_ms() -> pe.MapSet:
    model = pe.Classifier(TinyNet().eval(), name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3,
                          input_size=(16, 16), class_names=[f"c{i}" for i in range(5)])
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return pe.compute_mapset(model, x, progress=False)


def maps(ms: pe.MapSet) -> list[torch.Tensor]:
    return [ms.saliency(c, v, depth=d) for c in range(ms.num_classes) for v in ("+", "-", "+-")
            for d in range(1, len(ms.layers) + 1)]


# ----- images given to compute_mapset --------------------------------------------------------
@pytest.mark.parametrize("shape, words", [
    ((16, 16), "1 x C x H x W"),
    ((2, 3, 16, 16), "one image"),
    ((1, 1, 3, 16, 16), "1 x C x H x W"),
    ((1, 4, 16, 16), "channels"),
    ((1, 1, 16, 16), "channels"),
    ((1, 3, 4, 16), "8 x 8"),
])
def test_compute_mapset_bad_shape(tiny_model, shape, words) -> None:
    with pytest.raises(ValueError, match=words):
        pe.compute_mapset(tiny_model, torch.randn(*shape), progress=False)


def test_compute_mapset_accepts_3d_image(tiny_model, tiny_x) -> None:
    ms = pe.compute_mapset(tiny_model, tiny_x[0], progress=False)
    assert ms.size == (16, 16)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_compute_mapset_non_finite(tiny_model, tiny_x, value) -> None:
    x = tiny_x.clone()
    x[0, 1, 3, 5] = value
    with pytest.raises(ValueError, match="NaN or infinite"):
        pe.compute_mapset(tiny_model, x, progress=False)


def test_compute_mapset_not_a_tensor(tiny_model, tiny_x) -> None:
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        pe.compute_mapset(tiny_model, tiny_x.numpy(), progress=False)
    with pytest.raises(ValueError, match="floating-point"):
        pe.compute_mapset(tiny_model, (tiny_x * 10).to(torch.int64), progress=False)


def test_compute_mapset_not_a_model(tiny_x) -> None:
    with pytest.raises(TypeError, match="model"):
        pe.compute_mapset(lambda x: x, tiny_x, progress=False)


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, "8", True, None])
def test_bad_batch_size(tiny_model, tiny_x, batch_size) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        pe.compute_mapset(tiny_model, tiny_x, batch_size=batch_size, progress=False)


@pytest.mark.parametrize("cancel", [True, "stop", 1])
def test_a_cancel_flag_that_cannot_be_asked_is_refused_before_the_sweep(tiny_model, tiny_x, cancel) -> None:
    with pytest.raises(TypeError, match="cancel must be a threading.Event, a callable"):
        pe.compute_mapset(tiny_model, tiny_x, progress=False, cancel=cancel)


def test_the_meta_device_is_refused_clearly(tiny_model, tiny_x) -> None:
    """An image, a device or a model's weights on the meta device (shapes, no values): a
    ValueError naming it, not 'Tensor.item() cannot be called on meta tensors' mid-way."""
    with pytest.raises(ValueError, match="x is on the meta device"):
        pe.compute_mapset(tiny_model, tiny_x.to("meta"), progress=False)
    with pytest.raises(ValueError, match="device 'meta' cannot hold a map set"):
        pe.compute_mapset(tiny_model, tiny_x, progress=False, device="meta")
    with torch.device("meta"):
        hollow = TinyNet()
    with pytest.raises(ValueError, match="weights are on the meta device"):
        pe.compute_mapset(hollow, tiny_x, progress=False)


# ----- reading maps ---------------------------------------------------------------------------
@pytest.mark.parametrize("class_idx", [5, -1, 1000])
def test_class_out_of_range(tiny_ms, class_idx) -> None:
    with pytest.raises(ValueError, match=f"class_idx {class_idx} is out of range"):
        tiny_ms.saliency(class_idx)


@pytest.mark.parametrize("class_idx", ["cat", None, 1.5, True, [1]])
def test_class_not_an_int(tiny_ms, class_idx) -> None:
    with pytest.raises((ValueError, TypeError), match="class_idx"):
        tiny_ms.saliency(class_idx)


@pytest.mark.parametrize("class_idx", [np.int64(2), torch.tensor(2)])
def test_class_integer_types_accepted(tiny_ms, class_idx) -> None:
    assert torch.equal(tiny_ms.saliency(class_idx), tiny_ms.saliency(2))


@pytest.mark.parametrize("variant", ["x", "++", None, "PCAM+", 1])
def test_unknown_variant(tiny_ms, variant) -> None:
    with pytest.raises(ValueError, match="variant"):
        tiny_ms.saliency(0, variant=variant)


def test_variant_aliases(tiny_ms) -> None:
    assert torch.equal(tiny_ms.saliency(0, "±"), tiny_ms.saliency(0, "+-"))


@pytest.mark.parametrize("depth", [0, 4, -1, 1.5, "2", True])
def test_bad_depth(tiny_ms, depth) -> None:
    assert len(tiny_ms.layers) == 3
    with pytest.raises(ValueError, match="depth"):
        tiny_ms.saliency(0, depth=depth)


def test_bad_layer_in_layer_cam(tiny_ms) -> None:
    with pytest.raises(ValueError, match="nope"):
        tiny_ms.layer_cam(0, "+", "nope")
    with pytest.raises(ValueError, match="out of range"):
        tiny_ms.layer_cam(0, "+", 3)


# ----- pe.load_image ------------------------------------------------------------------------
def test_load_image_grayscale_array(tiny_model) -> None:
    arr = (np.arange(20 * 30) % 256).astype(np.uint8).reshape(20, 30)
    x = pe.load_image(arr, tiny_model)
    assert tuple(x.shape) == (1, 3, 16, 16)
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])
    x1 = pe.load_image(arr[:, :, None], tiny_model)
    assert torch.equal(x1, x)


def test_load_image_rgba_array(tiny_model) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    alpha = np.random.default_rng(1).integers(0, 256, (20, 30, 1), dtype=np.uint8)
    x = pe.load_image(np.concatenate([rgb, alpha], axis=2), tiny_model)
    assert tuple(x.shape) == (1, 3, 16, 16)
    assert torch.equal(x, pe.load_image(rgb, tiny_model))


def test_load_image_float_array_and_size(tiny_model) -> None:
    arr = np.random.default_rng(0).random((20, 30, 3))
    x = pe.load_image(arr, tiny_model, size=0)
    assert tuple(x.shape) == (1, 3, 20, 30)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0  # mean = std = 0.5


def test_load_image_missing_file(tmp_path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ValueError, match="nope.jpg"):
        pe.load_image(missing)
    with pytest.raises(ValueError, match="nope.jpg"):
        pe.load_image(str(missing))


def test_load_image_not_an_image(tmp_path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not an image at all\n")
    with pytest.raises(ValueError, match="notes.jpg"):
        pe.load_image(path)


@pytest.mark.parametrize("shape", [(20, 30, 2), (20, 30, 5), (2, 20, 30, 3), (30,)])
def test_load_image_bad_array_shape(shape) -> None:
    with pytest.raises(ValueError, match="shape"):
        pe.load_image(np.zeros(shape, dtype=np.uint8))


def test_load_image_bad_array_values() -> None:
    with pytest.raises(ValueError, match="NaN"):
        pe.load_image(np.full((20, 30, 3), np.nan))
    with pytest.raises(ValueError, match="dtype"):
        pe.load_image(np.zeros((20, 30, 3), dtype=np.int64))


def test_load_image_bad_type() -> None:
    with pytest.raises(TypeError, match="image must be"):
        pe.load_image(12345)


# ----- map-set files --------------------------------------------------------------------------
def test_save_load_round_trip_fp32(tiny_ms, tmp_path) -> None:
    path = tmp_path / "tiny.mapset.npz"
    tiny_ms.save(path)
    loaded = pe.MapSet.load(path)
    assert loaded.layers == tiny_ms.layers and loaded.class_names == tiny_ms.class_names
    assert loaded.complete and loaded.model_id == tiny_ms.model_id
    assert torch.equal(loaded.probs, tiny_ms.probs) and torch.equal(loaded.image, tiny_ms.image)
    for a, b in zip(maps(loaded), maps(tiny_ms)):
        assert torch.equal(a, b)


def test_save_load_round_trip_fp16(tiny_ms, tmp_path) -> None:
    path = tmp_path / "tiny16.mapset.npz"
    tiny_ms.save(path, fp16=True)
    loaded = pe.MapSet.load(path, device="cpu")
    for a, b in zip(maps(loaded), maps(tiny_ms)):
        assert a.shape == b.shape
        if b.std() == 0:
            assert torch.allclose(a, b, atol=1e-2)
            continue
        r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert float(r) > 0.999


def test_partial_map_set_round_trip(tiny_model, tiny_x, tmp_path) -> None:
    path = tmp_path / "partial.npz"
    for ms in pe.iter_mapset(tiny_model, tiny_x, progress=False):
        ms.save(path)
        break
    loaded = pe.MapSet.load(path)
    assert not loaded.complete and loaded.depth_available == 1
    assert torch.equal(loaded.saliency(0, depth=1), ms.saliency(0, depth=1))
    with pytest.raises(ValueError, match="depth"):
        loaded.saliency(0)


def test_load_missing_file(tmp_path) -> None:
    with pytest.raises(ValueError, match="missing.npz"):
        pe.MapSet.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.95])
def test_load_truncated_file(tiny_ms, tmp_path, fraction) -> None:
    path = tmp_path / "cut.npz"
    tiny_ms.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match="cut.npz"):
        pe.MapSet.load(path)


def test_load_truncated_tail(tiny_ms, tmp_path) -> None:
    path = tmp_path / "cut.npz"
    tiny_ms.save(path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="cut.npz"):
        pe.MapSet.load(path)


def test_load_corrupted_file(tiny_ms, tmp_path) -> None:
    path = tmp_path / "bad.npz"
    tiny_ms.save(path)
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 4, len(data) // 2, 7):  # damage compressed data, keep the zip index
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad.npz"):
        pe.MapSet.load(path)


def test_load_not_npz(tmp_path) -> None:
    path = tmp_path / "text.npz"
    path.write_text("hello, not a zip file\n")
    with pytest.raises(ValueError, match="text.npz"):
        pe.MapSet.load(path)


def test_load_foreign_npz(tmp_path) -> None:
    path = tmp_path / "foreign.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="foreign.npz"):
        pe.MapSet.load(path)
    other = tmp_path / "pickled.npz"
    np.savez(other, header=np.array([{"format": "x"}], dtype=object))
    with pytest.raises(ValueError, match="pickled.npz"):
        pe.MapSet.load(other)


def test_load_refuses_other_model(tiny_ms, tmp_path) -> None:
    path = tmp_path / "tiny.npz"
    tiny_ms.save(path)
    same = TinyNet(seed=0).eval()
    assert pe.MapSet.load(path, model=same).model_id == tiny_ms.model_id
    other = TinyNet(seed=1).eval()
    with pytest.raises(ValueError, match="model"):
        pe.MapSet.load(path, model=other)
    tweaked = TinyNet(seed=0).eval()
    with torch.no_grad():
        tweaked.fc.bias.add_(0.01)
    with pytest.raises(ValueError, match="model"):
        pe.MapSet.load(path, model=tweaked)


def test_load_refuses_other_layers(tiny_ms, tmp_path) -> None:
    path = tmp_path / "tiny.npz"
    tiny_ms.save(path)
    assert pe.MapSet.load(path, layers=tiny_ms.layers).layers == tiny_ms.layers
    with pytest.raises(ValueError, match="layers"):
        pe.MapSet.load(path, layers=["features.1", "features"])


def test_save_is_atomic(tiny_ms, tmp_path) -> None:
    path = tmp_path / "out.npz"
    tiny_ms.save(path)
    tiny_ms.save(path)  # overwriting too
    assert sorted(os.listdir(tmp_path)) == ["out.npz"]


def test_failed_save_leaves_old_file_and_no_temp(tiny_ms, tmp_path, monkeypatch) -> None:
    path = tmp_path / "out.npz"
    tiny_ms.save(path)
    before = path.read_bytes()

    def broken(file, **arrays):
        file.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        tiny_ms.save(path)
    assert sorted(os.listdir(tmp_path)) == ["out.npz"]
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", ["out.txt", "out", "out.npz.tmp", "out.npy"])
def test_save_refuses_other_suffix(tiny_ms, tmp_path, name) -> None:
    with pytest.raises(ValueError, match="npz"):
        tiny_ms.save(tmp_path / name)
    assert os.listdir(tmp_path) == []
