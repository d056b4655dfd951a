"""Issue 9, nothing silently wrong: model identity, image inputs, non-tensor model outputs, model
dtypes, discovery through wrappers, uploads."""
from __future__ import annotations

import collections
import io
import types

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import polycam_explorer as pe
from polycam_explorer.explorer.explore import upload_to_image
from polycam_explorer.models import probabilities

from conftest import TinyNet

fp = pe.model_fingerprint


# ----- 1. model identity -------------------------------------------------------------------------
def _swap(net: nn.Module, index: int, module: nn.Module) -> nn.Module:
    net.features[index] = module
    return net


@pytest.mark.parametrize("old, new", [
    (nn.ReLU(inplace=True), nn.GELU()),
    (nn.ReLU(inplace=True), nn.LeakyReLU(0.1)),
    (nn.LeakyReLU(0.1), nn.LeakyReLU(0.2)),
    (nn.ReLU(), nn.ReLU(inplace=True)),
    (nn.ReLU(), nn.ReLU6()),
    (nn.ELU(alpha=1.0), nn.ELU(alpha=0.5)),
])
def test_another_activation_is_another_model(old, new) -> None:
    a, b = _swap(TinyNet(), 1, old), _swap(TinyNet(), 1, new)
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert fp(a) != fp(b)


def test_other_layer_settings_are_another_model() -> None:
    base = TinyNet()
    for change in (lambda n: setattr(n.features[2], "stride", (1, 1)),
                   lambda n: setattr(n.features[2], "padding", (2, 2)),
                   lambda n: setattr(n.features[2], "dilation", (2, 2)),
                   lambda n: setattr(n, "pool", nn.AdaptiveMaxPool2d(1))):
        other = TinyNet()
        change(other)
        assert fp(other) != fp(base)


class Sigmoided(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(super().forward(x))


class Scaled2(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2.0


class Scaled3(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 3.0


class Tanhed(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(x))


def _named_like(cls: type, like: type) -> type:
    """``cls`` under ``like``'s name: the same class with its code edited (a notebook cell run again)."""
    cls.__name__, cls.__qualname__, cls.__module__ = like.__name__, like.__qualname__, like.__module__
    return cls


def test_another_forward_is_another_model() -> None:
    prints = {fp(cls()) for cls in (TinyNet, Sigmoided, Scaled2, Scaled3, Tanhed)}
    assert len(prints) == 5
    edited = [_named_like(type("Edited", (cls,), {"forward": cls.forward}), Scaled2)
              for cls in (Sigmoided, Scaled2, Scaled3, Tanhed)]
    assert len({fp(cls()) for cls in edited}) == 4  # same name: the code tells them apart


def test_a_forward_patched_on_the_instance_is_identity() -> None:
    net, ref = TinyNet(), TinyNet()
    net.forward = types.MethodType(Sigmoided.forward, net)
    assert fp(net) != fp(ref)


def _helper_a(x):
    return x + 1


def _helper_b(x):
    return x - 1


class WithHelper(nn.Module):
    def __init__(self, use_b: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.use_b = use_b

    def forward(self, x):
        return self.step(self.conv(x))

    def step(self, x):
        return _helper_a(x)


class WithOtherStep(WithHelper):
    def step(self, x):  # the forward is inherited; a method it calls differs
        return _helper_b(x)


def test_a_method_called_by_forward_and_plain_settings_are_identity() -> None:
    torch.manual_seed(0)
    a = WithHelper()
    torch.manual_seed(0)
    b = _named_like(WithOtherStep, WithHelper)()
    assert fp(a) != fp(b)
    torch.manual_seed(0)
    c = WithHelper(use_b=True)  # a plain attribute (no extra_repr) that forward could read
    assert fp(a) != fp(c)


def test_one_weight_or_buffer_anywhere_changes_the_fingerprint() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3))
    net.eval()
    base = fp(net)
    weight = net[3].weight  # 36864 values: most lie outside any sample
    for index in (1001, 5003, 20011, weight.numel() // 2 + 7):
        with torch.no_grad():
            old = weight.view(-1)[index].item()
            weight.view(-1)[index] = old + 1e-3
        assert fp(net) != base, index
        with torch.no_grad():
            weight.view(-1)[index] = old
        assert fp(net) == base
    with torch.no_grad():
        net[1].running_var[33] += 1e-4
    assert fp(net) != base


def test_a_change_in_any_chunk_of_a_large_tensor_counts() -> None:
    """Tensors over 8 MiB are hashed in chunks, in threads: every chunk counts, and the value
    does not depend on the machine."""
    net = nn.Linear(1500, 2000)  # 12 MB of weights: two chunks
    base = fp(net)
    assert fp(net) == base
    for index in (3, net.weight.numel() - 5):
        old = net.weight.view(-1)[index].item()
        with torch.no_grad():
            net.weight.view(-1)[index] = old + 1.0
        assert fp(net) != base
        with torch.no_grad():
            net.weight.view(-1)[index] = old
        assert fp(net) == base


class SetInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.names = {"alpha", "beta", "gamma", "delta"}

    def forward(self, x, mode: str = "alpha"):
        return self.conv(x) * (2.0 if mode in {"beta", "gamma", "delta", "epsilon"} else 1.0)


def test_the_fingerprint_is_the_same_in_every_process() -> None:
    """No addresses, no set order (which follows the interpreter's hash seed) in the identity."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, torch; sys.path[:0] = [{tests!r}]; import polycam_explorer as pe; "
            "from test_identity_inputs import SetInForward, TinyNet; torch.manual_seed(0); "
            "print(pe.model_fingerprint(SetInForward()), pe.model_fingerprint(TinyNet()))"
            ).format(tests=str(Path(__file__).parent))
    seen = set()
    for seed in ("1", "2"):
        env = {**__import__("os").environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                             timeout=300, check=True)
        seen.add(out.stdout.strip())
    torch.manual_seed(0)
    assert seen == {f"{fp(SetInForward())} {fp(TinyNet())}"}


def test_non_persistent_buffers_and_plain_tensors_count() -> None:
    class Masked(nn.Module):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("scale", torch.full((4,), value), persistent=False)

        def forward(self, x):
            return self.conv(x) * self.scale[:, None, None]

    torch.manual_seed(0)
    a = Masked(1.0)
    torch.manual_seed(0)
    b = Masked(2.0)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert fp(a) != fp(b)


def test_rebuilt_models_keep_their_fingerprint_and_flags_are_not_identity() -> None:
    a, b = TinyNet(seed=3), TinyNet(seed=3)
    assert fp(a) == fp(b)
    a.train()
    assert fp(a) == fp(b)
    for p in a.parameters():
        p.requires_grad_(False)
    assert fp(a) == fp(b)
    assert fp(TinyNet(seed=4)) != fp(b)
    assert fp(a.double()) != fp(b)  # another dtype computes another function
    resnet = lambda: torchvision.models.resnet18(weights=None)  # noqa: E731
    torch.manual_seed(0)
    r1 = resnet()
    torch.manual_seed(0)
    r2 = resnet().train()
    assert fp(r1) == fp(r2)


def test_fingerprint_is_a_short_hex_string_and_ignores_labels() -> None:
    net = TinyNet()
    value = fp(net)
    assert isinstance(value, str) and len(value) == 16 and int(value, 16) >= 0
    clf = pe.Classifier(net, name="x", mean=(0.5,) * 3, std=(0.5,) * 3, class_names=list("abcde"),
                        layer_rule="activations", weights_id="w")
    clf2 = pe.Classifier(net, name="y", mean=(0.5,) * 3, std=(0.5,) * 3, layer_rule="main-path")
    assert fp(clf) == fp(clf2) == fp(net)


def test_a_forward_hook_on_the_model_is_identity() -> None:
    net, ref = TinyNet(), TinyNet()
    handle = net.fc.register_forward_hook(lambda _m, _i, out: out * 0)
    try:
        assert fp(net) != fp(ref)
    finally:
        handle.remove()
    assert fp(net) == fp(ref)


def test_a_map_set_of_a_model_with_another_activation_is_refused(tmp_path) -> None:
    def classifier(act: nn.Module) -> pe.Classifier:
        return pe.Classifier(_swap(TinyNet().eval(), 1, act), name="tiny", mean=(0.5,) * 3,
                             std=(0.5,) * 3, input_size=(16, 16))

    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ms = pe.compute_mapset(classifier(nn.ReLU()), x, progress=False)
    path = tmp_path / "relu.npz"
    ms.save(path)
    assert pe.MapSet.load(path, model=classifier(nn.ReLU())).model_id == ms.model_id
    with pytest.raises(ValueError, match="model"):
        pe.MapSet.load(path, model=classifier(nn.GELU()))
    with pytest.raises(ValueError, match="model"):
        pe.MapSet.load(path, model=classifier(nn.LeakyReLU(0.1)))


# ----- 2. image inputs ---------------------------------------------------------------------------
def _pixels(x: torch.Tensor) -> torch.Tensor:
    """Undo the default model's normalisation (mean = std = 0.5): values in [0, 1]."""
    return x * 0.5 + 0.5


def _gradient16(h: int = 24, w: int = 40) -> np.ndarray:
    row = np.linspace(0, 65535, w).round().astype(np.uint16)
    ramp = np.tile(row, (h, 1))
    ramp[: h // 2] = ramp[: h // 2, ::-1]  # asymmetric
    return ramp


@pytest.mark.parametrize("how", ["png", "pil_i16", "pil_i", "array"])
def test_16_bit_images_are_scaled_by_their_depth(tmp_path, how) -> None:
    arr16 = _gradient16()
    as8 = (arr16.astype(np.float64) / 257.0).round().astype(np.uint8)
    if how == "png":
        source = tmp_path / "ramp16.png"
        Image.fromarray(arr16).save(source)
        assert Image.open(source).mode in ("I;16", "I")
    elif how == "pil_i16":
        source = Image.fromarray(arr16)
    elif how == "pil_i":
        source = Image.fromarray(arr16.astype(np.int32))
        assert source.mode == "I"
    else:
        source = arr16
    x = pe.load_image(source, size=0)
    ref = pe.load_image(as8, size=0)
    assert x.shape == ref.shape == (1, 3, 24, 40)
    assert float((_pixels(x) - _pixels(ref)).abs().max()) <= 1 / 255 + 1e-6
    assert 0.4 < float(_pixels(x).mean()) < 0.6  # not clipped to white


def test_16_bit_image_for_a_grayscale_model() -> None:
    gray = pe.Classifier(TinyNet(in_channels=1), mean=(0.5,), std=(0.5,), input_size=(16, 16))
    arr16 = _gradient16()
    x = pe.load_image(Image.fromarray(arr16), gray, size=0)
    assert x.shape == (1, 1, 24, 40)
    expected = torch.from_numpy(arr16.astype(np.float32) / 65535)
    assert torch.allclose(_pixels(x[0, 0]), expected, atol=1e-6)


@pytest.mark.parametrize("values", [np.array([[-1, 5], [6, 7]]), np.array([[0, 70000], [6, 7]])])
def test_32_bit_integer_images_outside_16_bits_are_refused(values) -> None:
    image = Image.fromarray(np.kron(values, np.ones((8, 8))).astype(np.int32))
    assert image.mode == "I"
    with pytest.raises(ValueError, match="65535"):
        pe.load_image(image)


def test_float_images_must_be_in_0_1() -> None:
    rng = np.random.default_rng(0)
    unit = rng.random((20, 30, 3)).astype(np.float32)
    x = pe.load_image(unit, size=0)
    assert torch.allclose(_pixels(x[0]), torch.from_numpy(unit).permute(2, 0, 1), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\].*255"):
        pe.load_image(unit * 255)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pe.load_image(unit - 0.5)
    plane = rng.random((20, 30)).astype(np.float32)
    x = pe.load_image(Image.fromarray(plane, mode="F"), size=0)
    assert torch.allclose(_pixels(x[0, 1]), torch.from_numpy(plane), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\].*255"):
        pe.load_image(Image.fromarray(plane * 255, mode="F"))
    with pytest.raises(ValueError, match="NaN"):
        pe.load_image(np.full((20, 30), np.nan, np.float32))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.bool_,
                                   np.complex64])
def test_other_array_dtypes_are_refused(dtype) -> None:
    arr = np.ones((20, 30, 3)).astype(dtype)
    with pytest.raises(ValueError, match="uint8.*uint16.*float"):
        pe.load_image(arr)


def test_palette_la_cmyk_and_bilevel_images() -> None:
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    pal = rgb.quantize(16)
    assert pal.mode == "P"
    assert torch.equal(pe.load_image(pal, size=0), pe.load_image(pal.convert("RGB"), size=0))
    pal_t = pal.copy()
    pal_t.info["transparency"] = 0
    assert torch.equal(pe.load_image(pal_t, size=0), pe.load_image(pal.convert("RGB"), size=0))
    la = rgb.convert("LA")
    assert torch.equal(pe.load_image(la, size=0), pe.load_image(rgb.convert("L"), size=0))
    cmyk = rgb.convert("CMYK")
    assert torch.equal(pe.load_image(cmyk, size=0), pe.load_image(cmyk.convert("RGB"), size=0))
    bilevel = rgb.convert("1")
    x = _pixels(pe.load_image(bilevel, size=0))
    assert set(torch.unique(x.round(decimals=4)).tolist()) <= {0.0, 1.0}
    assert 0.2 < float(x.mean()) < 0.8


def _pattern() -> np.ndarray:
    """32 wide x 16 high: a white block at the top-left only (JPEG-proof, asymmetric)."""
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:8, :8] = 255
    arr[8:, 16:24] = 128
    return arr


@pytest.mark.parametrize("orientation, turns", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied(tmp_path, orientation, turns) -> None:
    arr = _pattern()
    path = tmp_path / "rotated.jpg"
    image = Image.fromarray(arr)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, quality=95, exif=exif)
    expected = pe.load_image(np.ascontiguousarray(np.rot90(arr, k=turns)), size=0)
    for source in (path, str(path), Image.open(path)):
        x = pe.load_image(source, size=0)
        assert x.shape == expected.shape, source
        assert float((_pixels(x) - _pixels(expected)).abs().mean()) < 0.02
    upright = pe.load_image(arr, size=0)
    if upright.shape == expected.shape:
        assert float((_pixels(pe.load_image(path, size=0)) - _pixels(upright)).abs().mean()) > 0.1


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 10), (10, 0, 3), (0, 0)])
def test_empty_images_are_refused(shape) -> None:
    with pytest.raises(ValueError, match="empty"):
        pe.load_image(np.zeros(shape, np.uint8))


def test_empty_pil_image_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        pe.load_image(Image.new("RGB", (0, 0)))


@pytest.mark.parametrize("size", [-1, (16, 16, 3), 16.5, "16", True, (16, -3), (0, 16), (16,),
                                  (16.5, 16), ("a", 16), (True, 16), 4, None.__class__])
def test_malformed_size_is_refused(size) -> None:
    with pytest.raises((ValueError, TypeError), match="size"):
        pe.load_image(np.zeros((20, 30, 3), np.uint8), size=size)


def test_well_formed_sizes() -> None:
    arr = np.zeros((20, 30, 3), np.uint8)
    assert pe.load_image(arr, size=np.int64(16)).shape == (1, 3, 16, 16)
    assert pe.load_image(arr, size=[12, 20]).shape == (1, 3, 12, 20)
    assert pe.load_image(arr, size=(np.int32(12), 20)).shape == (1, 3, 12, 20)
    assert pe.load_image(arr, size=0).shape == (1, 3, 20, 30)


@pytest.mark.parametrize("side, pixels", [(40, 1600), (50, 2500)])  # warning, then error, in PIL
def test_decompression_bombs_are_refused_clearly(tmp_path, monkeypatch, side, pixels) -> None:
    path = tmp_path / "bomb.png"
    Image.new("RGB", (side, side)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=rf"bomb.png.*too large.*{pixels}"):
        pe.load_image(path)
    with pytest.raises(ValueError, match=rf"too large.*{pixels}"):
        upload_to_image([{"name": "bomb.png", "content": path.read_bytes()}])


def test_a_file_that_is_not_an_image_is_named(tmp_path) -> None:
    path = tmp_path / "data.png"
    path.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="data.png"):
        pe.load_image(path)
    truncated = tmp_path / "cut.png"
    buffer = io.BytesIO()
    Image.fromarray(_pattern()).save(buffer, format="PNG")
    truncated.write_bytes(buffer.getvalue()[:60])
    with pytest.raises(ValueError, match="cut.png"):
        pe.load_image(truncated)


# ----- 5. uploads --------------------------------------------------------------------------------
def test_an_upload_that_is_not_an_image_is_named() -> None:
    with pytest.raises(ValueError, match=r"notes\.txt.*(PNG|JPEG)"):
        upload_to_image([{"name": "notes.txt", "content": memoryview(b"this is not an image")}])


def test_an_empty_upload_is_called_empty_and_no_message_shows_a_memory_address() -> None:
    with pytest.raises(ValueError, match=r"'e\.png' is empty \(0 bytes\)"):
        upload_to_image([{"name": "e.png", "content": b""}])
    with pytest.raises(ValueError) as info:
        upload_to_image([{"name": "e.png", "content": b"not an image"}])
    assert "BytesIO" not in str(info.value) and "0x" not in str(info.value)


def test_uploads_are_read_like_files() -> None:
    buffer = io.BytesIO()
    Image.fromarray(_gradient16()).save(buffer, format="PNG")
    name, image = upload_to_image([{"name": "scan.png", "content": memoryview(buffer.getvalue())}])
    assert name == "scan"
    x = pe.load_image(image, size=0)
    assert 0.4 < float(_pixels(x).mean()) < 0.6
    arr = _pattern()
    source = Image.fromarray(arr)
    exif = source.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", quality=95, exif=exif)
    _, image = upload_to_image([{"name": "photo.jpg", "content": buffer.getvalue()}])
    x = pe.load_image(image, size=0)
    expected = pe.load_image(np.ascontiguousarray(np.rot90(arr, k=-1)), size=0)
    assert x.shape == expected.shape
    assert float((_pixels(x) - _pixels(expected)).abs().mean()) < 0.02


# ----- 3. outputs that are not a logit tensor; model dtypes ----------------------------------------
class Returns(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.net, self.kind = TinyNet(), kind

    def forward(self, x):
        out = self.net(x)
        if self.kind == "tuple":
            return out, out
        if self.kind == "list":
            return [out]
        if self.kind == "dict":
            return {"logits": out}
        if self.kind == "namedtuple":
            return collections.namedtuple("Outputs", "logits aux")(out, out)
        return out.detach().numpy()


@pytest.mark.parametrize("kind, named", [("tuple", "tuple"), ("list", "list"), ("dict", "dict"),
                                         ("namedtuple", "Outputs"), ("array", "ndarray")])
def test_outputs_that_are_not_a_logit_tensor_are_explained(kind, named) -> None:
    model = pe.Classifier(Returns(kind).eval(), mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16))
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(TypeError, match=rf"returned .*{named}.*N x classes.*nn\.Module"):
        probabilities(model(x))
    with pytest.raises(TypeError, match=rf"returned .*{named}.*N x classes"):
        pe.compute_mapset(model, x, progress=False)


def test_a_wrapper_module_is_the_way_out() -> None:
    class Logits(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)["logits"]

    model = pe.Classifier(Logits(Returns("dict")).eval(), mean=(0.5,) * 3, std=(0.5,) * 3,
                          input_size=(16, 16))
    ms = pe.compute_mapset(model, torch.randn(1, 3, 16, 16), progress=False)
    assert ms.layers == ["net.net.features.1", "net.net.features.3", "net.net.features"]


def test_probabilities_refuses_wrong_shapes_clearly() -> None:
    with pytest.raises(ValueError, match="N x classes"):
        probabilities(torch.zeros(5))
    with pytest.raises(ValueError, match="N x classes"):
        probabilities(torch.zeros(1, 5, 2, 2))
    assert torch.allclose(probabilities(torch.zeros(2, 4)), torch.full((2, 4), 0.25))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_models_in_other_float_dtypes_run(dtype) -> None:
    model = pe.Classifier(TinyNet().eval().to(dtype), mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16))
    x = pe.load_image(np.random.default_rng(0).random((16, 16, 3)), model)
    logits = model(x)  # the Classifier casts its input to the parameters' dtype
    assert logits.dtype == dtype and probabilities(logits).dtype == torch.float32
    assert pe.find_target_layers(model, input_size=(16, 16)) == ["features.1", "features.3", "features"]


# ----- 4. discovery through wrappers ---------------------------------------------------------------
class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.model = inner

    def forward(self, x):
        return self.model(x)


class Backbone(nn.Module):
    """A feature extractor returning one 4-D map, with the stages inside it."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.body = resnet
        self.body.fc = nn.Identity()

    def forward(self, x):
        r = self.body
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        return r.layer4(r.layer3(r.layer2(r.layer1(x))))


class WithHead(nn.Module):
    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.backbone = Backbone(resnet)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))

    def forward(self, x):
        return self.head(self.backbone(x))


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def test_discovery_looks_inside_wrappers(resnet18) -> None:
    size = (64, 64)
    bare = pe.describe_layers(resnet18, size)
    names = [i.name for i in bare]
    assert names == ["relu", "layer1", "layer2", "layer3", "layer4"]
    for wrapped, prefix in ((nn.Sequential(resnet18), "0."), (Wrapper(resnet18), "model."),
                            (Wrapper(Wrapper(resnet18)), "model.model."),
                            (nn.Sequential(Wrapper(nn.Sequential(resnet18))), "0.model.0.")):
        table = pe.describe_layers(wrapped.eval(), size)
        assert [i.name for i in table] == [prefix + n for n in names]
        assert [(i.channels, i.height, i.stride) for i in table] == [
            (i.channels, i.height, i.stride) for i in bare]
    for rule in ("main-path", "activations"):
        assert pe.find_target_layers(Wrapper(resnet18), size, rule) == [
            "model." + n for n in pe.find_target_layers(resnet18, size, rule)]


def test_discovery_looks_inside_a_backbone_with_a_4d_output(resnet18) -> None:
    model = WithHead(resnet18).eval()
    names = [i.name for i in pe.describe_layers(model, (64, 64))]
    assert names == ["backbone.body.relu", "backbone.body.layer1", "backbone.body.layer2",
                     "backbone.body.layer3", "backbone"]


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "mobilenet_v3_small", "mnasnet0_5"])
def test_wrapped_networks_give_the_bare_networks_layers(name) -> None:
    torch.manual_seed(0)
    bare = torchvision.models.get_model(name, weights=None).eval()
    for rule in ("main-path", "activations"):
        expected = pe.find_target_layers(bare, (224, 224), rule)
        assert len(expected) >= 4
        assert pe.find_target_layers(Wrapper(bare), (224, 224), rule) == ["model." + n for n in expected]
        assert pe.find_target_layers(nn.Sequential(bare), (224, 224), rule) == ["0." + n for n in expected]


def test_an_ordinary_downsampling_block_is_not_opened() -> None:
    """ShuffleNet's first unit starts at the max-pool's resolution, which no block outputs: its
    inside (a branch) is not the main path, so that resolution stays without a layer."""
    net = torchvision.models.shufflenet_v2_x0_5(weights=None).eval()
    assert pe.find_target_layers(net) == ["conv1", "stage2", "stage3", "conv5"]
