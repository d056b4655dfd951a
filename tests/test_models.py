"""Loading models: the embedded EfficientNet-Lite0, torchvision and timm names, local checkpoints
and torchvision weights from a torch hub cache the test fills itself (nothing is downloaded)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torchvision

import polycam_explorer as pe


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to download fails loudly (a ValueError from our code must come first)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"attempted download: {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _x(size: int = 64) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def _resnet18(num_classes: int = 1000, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes).eval()


def _load(*args, **kwargs) -> pe.Classifier:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "randomly initialised"
        return pe.load_model(*args, **kwargs)


# ----- the embedded default -----------------------------------------------------------------
def test_default_model_is_efficientnet_lite0(default_model) -> None:
    assert isinstance(default_model, pe.Classifier)
    assert default_model.name == "efficientnet_lite0"
    assert type(default_model.net).__name__ == "EfficientNet"
    assert default_model.mean == (0.5, 0.5, 0.5) and default_model.std == (0.5, 0.5, 0.5)
    assert default_model.input_size == (224, 224)
    assert len(default_model.class_names) == 1000
    assert default_model.class_names[285] == "Egyptian cat"
    assert default_model.class_names[967] == "espresso"
    assert not default_model.training


@pytest.mark.parametrize("image, index, name", [("chelsea", 285, "Egyptian cat"), ("coffee", 967, "espresso")])
def test_default_model_predicts_samples(default_model, sample, image, index, name) -> None:
    x = pe.load_image(sample(image), default_model)
    assert tuple(x.shape) == (1, 3, 224, 224)
    with torch.no_grad():
        probs = torch.softmax(default_model(x), dim=1)[0]
    assert int(probs.argmax()) == index
    assert default_model.class_name(index) == name
    assert float(probs[index]) > 0.5


def test_default_model_refuses_weights() -> None:
    with pytest.raises(ValueError, match="weights"):
        pe.load_model(None, weights="IMAGENET1K_V1")


# ----- torchvision with a local checkpoint -------------------------------------------------------
def test_torchvision_checkpoint_path(tmp_path) -> None:
    ref = _resnet18(seed=5)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    clf = pe.load_model("resnet18", weights=path)
    assert isinstance(clf, pe.Classifier) and clf.name == "resnet18"
    assert clf.weights_id == "r18.pth"
    assert len(clf.class_names) == 1000 and clf.class_names[285] == "Egyptian cat"
    clf_str = pe.load_model("resnet18", weights=str(path))
    x = _x()
    with torch.no_grad():
        expected = ref(x)
        assert torch.equal(clf(x), expected)
        assert torch.equal(clf_str(x), expected)
    assert pe.model_fingerprint(clf) == pe.model_fingerprint(ref)


def test_wrapped_checkpoint(tmp_path) -> None:
    """``{"state_dict": ...}`` with DataParallel's ``module.`` prefixes is unwrapped."""
    ref = _resnet18(seed=6)
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}, path)
    clf = pe.load_model("resnet18", weights=path)
    with torch.no_grad():
        assert torch.equal(clf(_x()), ref(_x()))


@pytest.mark.parametrize("n_classes", [2, 1])
def test_checkpoint_with_other_head(tmp_path, n_classes) -> None:
    ref = _resnet18(num_classes=n_classes, seed=7)
    path = tmp_path / "head.pth"
    torch.save(ref.state_dict(), path)
    clf = pe.load_model("resnet18", weights=path)
    assert clf.net.fc.out_features == n_classes
    with torch.no_grad():
        out = clf(_x())
        assert tuple(out.shape) == (1, n_classes)
        assert torch.equal(out, ref(_x()))
    assert clf.class_names is None and clf.class_name(0) == "class 0"
    named = pe.load_model("resnet18", weights=path, class_names=[f"k{i}" for i in range(n_classes)])
    assert named.class_name(0) == "k0"
    with pytest.raises(ValueError, match="class_names"):
        pe.load_model("resnet18", weights=path, class_names=["a", "b", "c"])


def test_checkpoint_that_does_not_fit(tmp_path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(_resnet18().state_dict(), path)
    with pytest.raises(ValueError, match="does not fit"):
        pe.load_model("resnet34", weights=path)


@pytest.mark.parametrize("content", [b"not a checkpoint", b""])
def test_unreadable_checkpoint(tmp_path, content) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="junk.pth"):
        pe.load_model("resnet18", weights=path)


def test_checkpoint_that_needs_pickle_is_refused(tmp_path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"model": torchvision.models.resnet18(weights=None)}, path)  # a whole module
    with pytest.raises(ValueError, match="pickled.pth"):
        pe.load_model("resnet18", weights=path)


def test_checkpoint_without_tensors(tmp_path) -> None:
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ValueError, match="meta.pth"):
        pe.load_model("resnet18", weights=path)


# ----- torchvision weights enums from a local hub cache -----------------------------------------
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache of our own, used instead of the user's."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert torch.hub.get_dir() == str(tmp_path / "torch" / "hub")
    return tmp_path / "torch" / "hub"


@pytest.mark.parametrize("weights", ["IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1",
                                     torchvision.models.ResNet18_Weights.IMAGENET1K_V1])
def test_weights_enum_from_hub_cache(hub, weights) -> None:
    ref = _resnet18(seed=8)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    checkpoints = hub / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(ref.state_dict(), checkpoints / url.rsplit("/", 1)[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # trained weights: no "randomly initialised"
        clf = pe.load_model("resnet18", weights=weights)
    assert "IMAGENET1K_V1" in clf.weights_id
    assert clf.mean == pytest.approx((0.485, 0.456, 0.406)) and clf.std == pytest.approx((0.229, 0.224, 0.225))
    assert clf.input_size == (224, 224)
    assert len(clf.class_names) == 1000
    with torch.no_grad():
        assert torch.equal(clf(_x()), ref(_x()))


def test_weights_enum_missing_from_cache(hub) -> None:
    with pytest.raises(ValueError, match="IMAGENET1K_V1.*hub cache"):
        pe.load_model("resnet18", weights="IMAGENET1K_V1")


def test_unknown_weights_enum_name(hub) -> None:
    with pytest.raises(ValueError, match="IMAGENET9K.*IMAGENET1K_V1"):
        pe.load_model("resnet18", weights="IMAGENET9K")


def test_missing_checkpoint_path(hub, tmp_path) -> None:
    with pytest.raises(ValueError, match="nope.pth"):
        pe.load_model("resnet18", weights=str(tmp_path / "nope.pth"))


def test_bad_weights_type(hub) -> None:
    with pytest.raises(TypeError, match="weights"):
        pe.load_model("resnet18", weights=3)


# ----- timm names -------------------------------------------------------------------------------
def test_timm_model_without_weights() -> None:
    import timm

    name = "resnet10t"
    assert timm.is_model(name) and name not in torchvision.models.list_models()
    with pytest.warns(UserWarning, match="randomly initialised"):
        clf = pe.load_model(name, weights=None)
    assert isinstance(clf, pe.Classifier) and clf.name == name
    assert type(clf.net).__module__.startswith("timm.")
    assert len(clf.class_names) == 1000
    assert len(clf.mean) == 3 and len(clf.std) == 3
    with torch.no_grad():
        assert tuple(clf(_x(32)).shape) == (1, 1000)
    layers = pe.find_target_layers(clf, input_size=(64, 64))
    assert len(layers) >= 3


def test_timm_checkpoint_with_other_head(tmp_path) -> None:
    import timm

    torch.manual_seed(9)
    ref = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    path = tmp_path / "timm.pth"
    torch.save(ref.state_dict(), path)
    clf = pe.load_model("resnet10t", weights=path)
    with torch.no_grad():
        assert torch.equal(clf(_x(32)), ref(_x(32)))
    with pytest.raises(ValueError, match="timm"):
        pe.load_model("resnet10t", weights="IMAGENET1K_V1")


# ----- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["not_a_model_xyz", "ResNet50", "vgg"])
def test_unknown_model_name(name) -> None:
    with pytest.raises(ValueError, match=name):
        pe.load_model(name)


def test_model_name_type() -> None:
    with pytest.raises(TypeError, match="name"):
        pe.load_model(50)


def test_random_torchvision_model_warns() -> None:
    with pytest.warns(UserWarning, match="randomly initialised"):
        clf = pe.load_model("resnet18")
    assert clf.class_names is not None and len(clf.class_names) == 1000
    assert not clf.training
