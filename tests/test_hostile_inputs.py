"""An outside attack on the data paths: each test is a way a careful hostile user got a silently
wrong result, an unhelpful crash or lost work, and now gets the right result or a clear error."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from polycam_explorer import evaluation


def _photos(folder, *seeds, size=24):
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        pixels = np.random.RandomState(seed).randint(0, 256, (size, size, 3), np.uint8)
        Image.fromarray(pixels).save(folder / f"p{seed}.png")
    return folder


# ----- evaluate with maps that are not those of these images at this size ------------------------
def test_evaluate_refuses_maps_made_at_another_input_size(tiny_model, tmp_path):
    images = _photos(tmp_path / "images", 0, 1)
    files = evaluation.generate(tiny_model, images, ["pcam+"], tmp_path / "out", size=(24, 24), progress=False)
    # the maps explain the class predicted at 24 x 24; scoring them at 16 x 16 (the model's input
    # size, the default) would score another prediction with them
    with pytest.raises(ValueError, match=r"input size \[24, 24\].*\[16, 16\]"):
        evaluation.evaluate(tiny_model, images, files, tmp_path / "eval", n_steps=4, progress=False)
    rows = evaluation.evaluate(tiny_model, images, files, tmp_path / "eval", size=24, n_steps=4, progress=False)
    assert rows[0]["images"] == 2


def test_evaluate_takes_the_models_input_size_as_the_default_size(tiny_model, tmp_path):
    images = _photos(tmp_path / "images", 0)
    files = evaluation.generate(tiny_model, images, ["pcam+"], tmp_path / "out", progress=False)
    rows = evaluation.evaluate(tiny_model, images, files, tmp_path / "eval", size=(16, 16), n_steps=4,
                               progress=False)  # the same input as generate's default
    assert rows[0]["images"] == 1


def test_evaluate_refuses_maps_of_other_images_with_the_same_names(tiny_model, tmp_path):
    files = evaluation.generate(tiny_model, _photos(tmp_path / "a", 0, 1), ["pcam+"], tmp_path / "out",
                                progress=False)
    other = _photos(tmp_path / "b", 0, 1)
    (other / "p1.png").unlink()
    _photos(tmp_path / "c", 7)
    (tmp_path / "c" / "p7.png").rename(other / "p1.png")  # same name, another picture
    with pytest.raises(ValueError, match=r"p1\.png.*not the image"):
        evaluation.evaluate(tiny_model, other, files, tmp_path / "eval", n_steps=4, progress=False)


# ----- image lists as editors write them --------------------------------------------------------
def test_an_image_list_saved_with_a_byte_order_mark_and_crlf_lines_is_read(tmp_path):
    from polycam_explorer import runs

    images = _photos(tmp_path / "images", 0, 1)
    listed = tmp_path / "list.txt"
    listed.write_bytes("p1.png 3\r\np0.png 5\r\n".encode("utf-8-sig"))  # Windows Notepad's UTF-8
    assert runs.list_images(images, listed) == ["p1.png", "p0.png"]


def test_an_image_list_that_is_not_utf8_text_is_named(tmp_path):
    from polycam_explorer import runs

    images = _photos(tmp_path / "images", 0)
    listed = tmp_path / "list.txt"
    listed.write_bytes(b"\xff\xfep\x000\x00")  # UTF-16
    with pytest.raises(ValueError, match=r"list\.txt.*UTF-8"):
        runs.list_images(images, listed)


# ----- map-set files edited by hand ---------------------------------------------------------------
def _arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _with_claimed_shape(src, dst, name, shape):
    """``src`` with array ``name``'s header claiming ``shape``, its data left short."""
    import io
    import zipfile

    with zipfile.ZipFile(dst, "w") as zf:
        for key, value in _arrays(src).items():
            buffer = io.BytesIO()
            if key == name:
                np.lib.format.write_array_header_2_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
                buffer.write(bytes(64))
            else:
                np.save(buffer, value)
            zf.writestr(f"{key}.npy", buffer.getvalue())
    return dst


@pytest.mark.parametrize("shape", [(10 ** 6, 10 ** 3, 10 ** 3), (1000, 1000, 1000), (4, 4, 4)])
def test_an_array_claiming_more_data_than_its_file_holds_is_corrupt_not_a_memory_error(ms, tmp_path, shape):
    import polycam_explorer as pe

    ms.save(tmp_path / "a.mapset.npz")
    bad = _with_claimed_shape(tmp_path / "a.mapset.npz", tmp_path / "bad.mapset.npz", "act_0", shape)
    with pytest.raises(ValueError, match=r"bad\.mapset\.npz.*'act_0'.*claims"):
        pe.MapSet.load(bad)


def test_an_array_too_large_for_memory_is_a_clear_error(ms, tmp_path, monkeypatch):
    import polycam_explorer as pe

    ms.save(tmp_path / "a.mapset.npz")

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 40.0 GiB")
    monkeypatch.setattr(np.lib.format, "read_array", no_memory)
    with pytest.raises(ValueError, match=r"a\.mapset\.npz.*too large to load"):
        pe.MapSet.load(tmp_path / "a.mapset.npz")


def _edited(ms, tmp_path, **arrays):
    ms.save(tmp_path / "a.mapset.npz")
    data = _arrays(tmp_path / "a.mapset.npz")
    data.update(arrays)
    np.savez_compressed(tmp_path / "bad.mapset.npz", **data)
    return tmp_path / "bad.mapset.npz"


@pytest.mark.parametrize("key, value", [
    ("image", np.zeros((1, 3, 0, 16), np.float32)),
    ("act_0", np.zeros((4, 0, 16), np.float32)),
    ("act_2", np.zeros((0, 4, 4), np.float32)),  # no channel: every map of it would be 0
])
def test_empty_images_and_activations_are_corrupt(ms, tmp_path, key, value):
    import polycam_explorer as pe

    extra = {"splus_2": np.zeros((0, 5), np.float32), "sminus_2": np.zeros((0, 5), np.float32)} if key == "act_2" else {}
    with pytest.raises(ValueError, match=rf"corrupt map-set file .*{key}.*empty"):
        pe.MapSet.load(_edited(ms, tmp_path, **{key: value}, **extra))


@pytest.mark.parametrize("key", ["s0", "splus_1", "sminus_2"])
def test_probabilities_outside_0_1_are_corrupt(ms, tmp_path, key):
    import polycam_explorer as pe

    ms.save(tmp_path / "a.mapset.npz")
    value = _arrays(tmp_path / "a.mapset.npz")[key].copy()
    value.flat[0] = 5.0  # a logit, not a probability: every map would be silently wrong
    with pytest.raises(ValueError, match=r"corrupt map-set file .*outside \[0, 1\]"):
        pe.MapSet.load(_edited(ms, tmp_path, **{key: value}))


# ----- insertion / deletion at their edges ----------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_metrics_take_images_in_other_float_dtypes_as_the_sweep_does(tiny_model, tiny_x, dtype):
    import torch

    import polycam_explorer as pe

    sal = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    auc, curve = pe.insertion(tiny_model, tiny_x.to(getattr(torch, dtype)), sal, 1, 8)
    expected, _ = pe.insertion(tiny_model, tiny_x.to(getattr(torch, dtype)).float(), sal, 1, 8)
    assert auc == pytest.approx(expected, abs=1e-6) and curve.shape == (8,)


@pytest.mark.parametrize("x, message", [
    (lambda x: x.int(), r"x must be a floating-point tensor"),
    (lambda x: x[:, :1], r"x has 1 channels but the model takes 3"),
    (lambda x: x.to("meta"), r"x is on the meta device"),
    (lambda x: x[..., :5, :], r"at least 6 x 6 pixels"),
])
def test_metrics_refuse_images_they_cannot_score_clearly(tiny_model, tiny_x, x, message):
    import torch

    import polycam_explorer as pe

    image = x(tiny_x)
    with pytest.raises(ValueError, match=message):
        pe.deletion(tiny_model, image, torch.rand(image.shape[-2:]), 0, 4)


def test_metrics_refuse_a_saliency_map_on_the_meta_device(tiny_model, tiny_x):
    import torch

    import polycam_explorer as pe

    with pytest.raises(ValueError, match=r"saliency is on the meta device"):
        pe.insertion(tiny_model, tiny_x, torch.rand(16, 16, device="meta"), 0, 4)


def test_metrics_take_numpy_integers_for_counts(tiny_model, tiny_x):
    import torch

    import polycam_explorer as pe

    sal = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    assert pe.insertion(tiny_model, tiny_x, sal, 1, np.int64(8), batch_size=np.int32(4))[0] == pytest.approx(
        pe.insertion(tiny_model, tiny_x, sal, 1, 8, batch_size=4)[0])


# ----- images: sizes and paths ----------------------------------------------------------------------
@pytest.mark.parametrize("size", [(8, 10 ** 9), 10 ** 6])
def test_a_resize_beyond_the_pixel_limit_is_refused_before_allocating(size):
    import polycam_explorer as pe

    with pytest.raises(ValueError, match=r"size .* over .*MAX_IMAGE_PIXELS"):
        pe.load_image(np.zeros((16, 16, 3), np.uint8), size=size)


def test_paths_that_are_not_image_files_say_what_they_are(tmp_path):
    import os

    import polycam_explorer as pe

    (tmp_path / "photo.png").mkdir()
    with pytest.raises(ValueError, match=r"photo\.png' is a folder"):
        pe.load_image(tmp_path / "photo.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "link.png")
    with pytest.raises(ValueError, match=r"link\.png' is a symbolic link to .*gone\.png.*does not exist"):
        pe.load_image(tmp_path / "link.png")
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ValueError, match=r"pipe\.png' is not a regular file"):
        pe.load_image(tmp_path / "pipe.png")
    with pytest.raises(ValueError, match=r"missing\.png' does not exist"):
        pe.load_image(tmp_path / "missing.png")


# ----- the disk cache: a hit is this request's map set, whoever filled the entry ---------------------
def test_a_cache_hit_carries_this_models_labels_and_name(tiny_model, tmp_path):
    import polycam_explorer as pe

    photo = np.random.RandomState(0).randint(0, 256, (20, 20, 3), np.uint8)
    relabelled = pe.Classifier(tiny_model.net, name="renamed", mean=tiny_model.mean, std=tiny_model.std,
                               input_size=(16, 16), class_names=list("vwxyz"))  # same network, new labels
    first = pe.mapset_for(photo, tiny_model, cache_dir=tmp_path, progress=False)
    hit = pe.mapset_for(photo, relabelled, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.mapset.npz"))) == 1  # a hit
    assert hit.class_names == list("vwxyz") and hit.model_name == "renamed"
    assert hit.topk(1)[0][1] == "vwxyz"[first.topk(1)[0][0]]


def test_a_cache_hit_carries_this_photos_frame(tiny_model, tmp_path):
    import polycam_explorer as pe

    tall, wide = np.zeros((40, 20, 3), np.uint8), np.zeros((20, 40, 3), np.uint8)  # both resize to one input
    assert pe.mapset_for(tall, tiny_model, cache_dir=tmp_path, progress=False).frame == (40, 20)
    assert len(list(tmp_path.glob("*.mapset.npz"))) == 1
    assert pe.mapset_for(wide, tiny_model, cache_dir=tmp_path, progress=False).frame == (20, 40)
    assert len(list(tmp_path.glob("*.mapset.npz"))) == 1  # a hit, not a second entry


# ----- maps in float64 or wide integers keep their order -------------------------------------------
@pytest.mark.parametrize("scale", [1e-50, 1e300])
def test_a_float64_map_is_ranked_in_its_own_precision(tiny_model, tiny_x, scale):
    import torch

    import polycam_explorer as pe

    sal = torch.rand(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for metric in (pe.insertion, pe.deletion):  # float32 flushed 1e-50 maps to ties and 1e300 to inf
        assert metric(tiny_model, tiny_x, sal * scale, 1, 8)[0] == pytest.approx(metric(tiny_model, tiny_x, sal, 1, 8)[0],
                                                                                abs=1e-7)


def test_a_map_of_large_integers_is_ranked_exactly(tiny_model, tiny_x):
    import torch

    import polycam_explorer as pe

    order = torch.randperm(256, generator=torch.Generator().manual_seed(0)).reshape(16, 16)
    big = order.to(torch.int64) + 2 ** 40  # distinct, but equal once cast to float32
    assert pe.insertion(tiny_model, tiny_x, big, 1, 8)[0] == pytest.approx(
        pe.insertion(tiny_model, tiny_x, order.float(), 1, 8)[0], abs=1e-7)


@pytest.mark.parametrize("scale", [1e-50, 1e300])
def test_evaluate_scores_a_float64_map_file_as_its_order_says(tiny_model, tmp_path, scale):
    images = _photos(tmp_path / "images", 0, size=16)
    sal = np.random.RandomState(1).rand(8, 8)  # upsampled to 16 x 16 as the authors' maps are
    results = []
    for factor in (1.0, scale):
        np.savez(tmp_path / "tiny_x.npz", **{"p0.png": sal * factor})
        results.append(evaluation.evaluate(tiny_model, images, [tmp_path / "tiny_x.npz"], tmp_path / f"o{factor}",
                                           n_steps=8, progress=False)[0])
    for key in ("insertion", "deletion"):
        assert results[1][key] == pytest.approx(results[0][key], abs=1e-7)


# ----- image names that clash with the npz writer's own names ----------------------------------------
@pytest.mark.parametrize("name", ["allow_pickle", "file"])
def test_generate_keeps_the_map_of_an_image_named_like_a_savez_argument(tiny_model, tmp_path, name):
    images = _photos(tmp_path / "images", 0)
    (images / "p0.png").rename(images / name)  # a PNG without a suffix, listed by name
    (tmp_path / "list.txt").write_text(f"{name}\n")
    [path] = evaluation.generate(tiny_model, images, ["pcam+"], tmp_path / "out", list_file=tmp_path / "list.txt",
                                 progress=False)
    maps, meta = evaluation.read_maps(path)
    assert list(maps) == [name] and maps[name].shape == (16, 16) and meta["images"] == 1


def test_an_image_named_like_the_metadata_key_is_refused(tmp_path):
    from polycam_explorer import runs

    images = _photos(tmp_path / "images", 0)
    (images / "p0.png").rename(images / evaluation.META_KEY)
    (tmp_path / "list.txt").write_text(f"{evaluation.META_KEY}\n")
    with pytest.raises(ValueError, match="__polycam_explorer__.*reserved"):
        runs.list_images(images, tmp_path / "list.txt")


# ----- explain --class -----------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["²", "¹²"])
def test_a_class_given_as_superscript_digits_is_named_not_an_int_error(tiny_model, tiny_x, spec):
    from polycam_explorer.explain import _class_index

    with pytest.raises(ValueError, match=r"--class .* is neither a class index \(0\.\.4\) nor a class name"):
        _class_index(tiny_model, tiny_x, spec)
    assert _class_index(tiny_model, tiny_x, " 3 ") == 3


# ----- MapSet.load onto a device that cannot hold it ---------------------------------------------------
@pytest.mark.parametrize("device, message", [
    ("meta", r"meta device holds no values"),
    ("xla", r"device 'xla' is not available here"),
])
def test_load_refuses_devices_that_cannot_hold_the_maps(ms, tmp_path, device, message):
    import polycam_explorer as pe

    ms.save(tmp_path / "a.mapset.npz")
    with pytest.raises(ValueError, match=message):
        pe.MapSet.load(tmp_path / "a.mapset.npz", device=device)


def test_load_refuses_a_gpu_this_machine_does_not_have(ms, tmp_path):
    import torch

    import polycam_explorer as pe

    ms.save(tmp_path / "a.mapset.npz")
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 on a machine without one)
    with pytest.raises(ValueError, match=rf"device '{missing}' is not available here"):
        pe.MapSet.load(tmp_path / "a.mapset.npz", device=missing)
