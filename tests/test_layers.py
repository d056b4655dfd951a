"""Target-layer discovery (ALGORITHM.md, "Target layers"): one layer per resolution, the last
block at each, checked on the two reference networks and on others by their stage tables."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import polycam_explorer as pe
from conftest import TINY_LAYERS


def _strides_ok(table: list[pe.LayerInfo], input_size=(224, 224)) -> None:
    """Strictly increasing stride, one layer per resolution, sizes that divide the input."""
    strides = [info.stride for info in table]
    assert strides == sorted(set(strides)), strides
    sizes = [(info.height, info.width) for info in table]
    assert len(set(sizes)) == len(sizes)
    for info in table:
        assert input_size[0] % info.height == 0 and input_size[1] % info.width == 0
        assert info.stride == input_size[0] // info.height


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    return torchvision.models.resnet50(weights=None).eval()


# ----- the reference networks ----------------------------------------------------------------
def test_vgg16_layers() -> None:
    model = torchvision.models.vgg16(weights=None).eval()
    assert pe.find_target_layers(model) == [
        "features.3", "features.8", "features.15", "features.22", "features.29"]
    table = pe.describe_layers(model)
    assert [(i.height, i.stride) for i in table] == [(224, 1), (112, 2), (56, 4), (28, 8), (14, 16)]


def test_resnet50_layers(resnet50) -> None:
    assert pe.find_target_layers(resnet50) == ["relu", "layer1", "layer2", "layer3", "layer4"]


def test_resnet50_stage_table(resnet50) -> None:
    table = pe.describe_layers(resnet50)
    assert all(isinstance(info, pe.LayerInfo) for info in table)
    assert [(i.name, i.channels, i.height, i.width, i.stride) for i in table] == [
        ("relu", 64, 112, 112, 2),
        ("layer1", 256, 56, 56, 4),
        ("layer2", 512, 28, 28, 8),
        ("layer3", 1024, 14, 14, 16),
        ("layer4", 2048, 7, 7, 32),
    ]


def test_resnet50_rectangular_stage_table(resnet50) -> None:
    table = pe.describe_layers(resnet50, input_size=(224, 160))
    assert [i.name for i in table] == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert [(i.height, i.width) for i in table] == [(112, 80), (56, 40), (28, 20), (14, 10), (7, 5)]
    _strides_ok(table, (224, 160))


def test_discovery_leaves_train_mode_model_untouched() -> None:
    """Discovery runs a forward pass: BatchNorm statistics and flags must not change."""
    model = torchvision.models.resnet18(weights=None).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pe.find_target_layers(model)
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks for m in model.modules())


# ----- other networks: the names returned today, checked by eye --------------------------------
OTHERS = {
    # conv_stem/bn1/blocks.0 at 112; stride-2 blocks 1, 2, 3, 5; bn2 (BatchNormAct) ends the trunk
    "efficientnet_lite0": ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "bn2"],
    # relu0 before pool0; each transition's conv before its pool; `features` ends with norm5
    "densenet121": ["features.relu0", "features.transition1.conv", "features.transition2.conv",
                    "features.transition3.conv", "features"],
    # the last inverted-residual block before each stride-2 block; `features` ends with the 1x1 conv
    "mobilenet_v2": ["features.1", "features.3", "features.6", "features.13", "features"],
    # stride-4 stem; the LayerNorm opening each downsampling step is the last op at a resolution
    "convnext_tiny": ["features.2.0", "features.4.0", "features.6.0", "features"],
}
STRIDES = {
    "efficientnet_lite0": [2, 4, 8, 16, 32], "densenet121": [2, 4, 8, 16, 32],
    "mobilenet_v2": [2, 4, 8, 16, 32], "convnext_tiny": [4, 8, 16, 32],
}


@pytest.mark.parametrize("name", list(OTHERS))
def test_other_networks(name: str, default_model) -> None:
    if name == "efficientnet_lite0":  # through the Classifier, with the main-path rule asked for
        assert pe.find_target_layers(default_model, rule="main-path") == OTHERS[name]
    model = default_model if name == "efficientnet_lite0" else getattr(torchvision.models, name)(weights=None)
    net = pe.as_classifier(model).net
    table = pe.describe_layers(net)
    assert [i.name for i in table] == OTHERS[name]
    assert [i.stride for i in table] == STRIDES[name]
    _strides_ok(table)
    modules = dict(net.named_modules())
    assert all(i.name in modules for i in table)


def test_tiny_net_layers(tiny_model) -> None:
    assert pe.find_target_layers(tiny_model, input_size=(16, 16)) == TINY_LAYERS
    table = pe.describe_layers(tiny_model.net, (16, 16))
    assert [(i.channels, i.height, i.stride) for i in table] == [(4, 16, 1), (6, 8, 2), (8, 4, 4)]


# ----- modules called more than once ---------------------------------------------------------
class SharedNet(nn.Module):
    """``act`` runs five times and ``shared`` twice (at 16 and at 8 pixels) in one forward pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv_in = nn.Conv2d(3, 4, 3, padding=1)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.head = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv_in(x))
        x = self.act(self.shared(x))
        x = self.act(self.down(x))
        x = self.act(self.shared(x))
        x = self.act(self.head(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class SharedSequential(nn.Module):
    """The same ReLU object placed twice in a Sequential (registered once, runs twice)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        relu = nn.ReLU()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), relu,
                                      nn.Conv2d(4, 8, 3, stride=2, padding=1), relu)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_twice_called_module_is_never_picked() -> None:
    model = SharedNet().eval()
    layers = pe.find_target_layers(model, input_size=(16, 16))
    assert layers == ["conv_in", "down", "head"]
    assert "shared" not in layers and "act" not in layers
    ms = pe.compute_mapset(model, torch.randn(1, 3, 16, 16), progress=False)
    assert ms.layers == layers
    sal = ms.saliency(0)
    assert sal.shape == (16, 16) and torch.isfinite(sal).all()


def test_shared_module_in_sequential_is_never_picked() -> None:
    model = SharedSequential().eval()
    layers = pe.find_target_layers(model, input_size=(16, 16))
    assert "features.1" not in layers
    assert layers == ["features.0", "features.2"]


@pytest.mark.parametrize("bad", ["shared", "act"])
def test_explicit_twice_called_layer_is_refused(bad: str) -> None:
    model = SharedNet().eval()
    with pytest.raises(ValueError, match=f"{bad}.*(more than once|2 times|5 times|exactly once)"):
        pe.compute_mapset(model, torch.randn(1, 3, 16, 16), layers=["conv_in", bad], progress=False)
    assert all(not m._forward_hooks for m in model.modules())


# ----- explicit layer names ------------------------------------------------------------------
def test_explicit_layers_are_used(tiny_model, tiny_x) -> None:
    ms = pe.compute_mapset(tiny_model, tiny_x, layers=["features.0", "features.4"], progress=False)
    assert ms.layers == ["features.0", "features.4"]
    assert [tuple(a.shape) for a in ms.activations] == [(4, 16, 16), (8, 4, 4)]


@pytest.mark.parametrize("layers, named", [
    (["features.1", "features.9"], "features.9"),
    (["nope"], "nope"),
    (["features.1", "Features"], "Features"),
])
def test_unknown_layer_name(tiny_model, tiny_x, layers, named) -> None:
    with pytest.raises(ValueError, match=named):
        pe.compute_mapset(tiny_model, tiny_x, layers=layers, progress=False)


@pytest.mark.parametrize("layers", [[], "features.1", ["features.1", "features.1"], [""]])
def test_malformed_layer_lists(tiny_model, tiny_x, layers) -> None:
    with pytest.raises(ValueError, match="layer"):
        pe.compute_mapset(tiny_model, tiny_x, layers=layers, progress=False)


def test_layer_without_spatial_output_is_refused(tiny_model, tiny_x) -> None:
    with pytest.raises(ValueError, match="fc"):
        pe.compute_mapset(tiny_model, tiny_x, layers=["features.1", "fc"], progress=False)


def test_layers_given_coarse_first_are_not_silently_misused(tiny_model, tiny_x) -> None:
    """The recursion runs fine -> coarse; reversed names must be refused or put in order."""
    try:
        ms = pe.compute_mapset(tiny_model, tiny_x, layers=["features", "features.3", "features.1"],
                               progress=False)
    except ValueError as exc:
        assert "features" in str(exc)
        return
    assert ms.layers == ["features.1", "features.3", "features"]
    ref = pe.compute_mapset(tiny_model, tiny_x, layers=["features.1", "features.3", "features"],
                            progress=False)
    assert torch.equal(ms.saliency(0), ref.saliency(0))


# ----- no convolutional activations ----------------------------------------------------------
class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_mlp_has_no_target_layers() -> None:
    with pytest.raises(ValueError, match="4-D"):
        pe.find_target_layers(MLP(), input_size=(16, 16))


def test_mlp_compute_mapset_refused() -> None:
    model = MLP()
    with pytest.raises(ValueError, match="4-D"):
        pe.compute_mapset(model, torch.randn(1, 3, 16, 16), progress=False)
    assert all(not m._forward_hooks for m in model.modules())


# ----- the "activations" rule: the last non-negative output at each main-path resolution -------
ACTIVATIONS = {
    # the expansion (BatchNorm + ReLU6) that opens the next stage, run before its strided conv
    "efficientnet_lite0": ["blocks.1.0.bn1", "blocks.2.0.bn1", "blocks.3.0.bn1", "blocks.5.0.bn1", "bn2"],
    "mobilenet_v2": ["features.2.conv.0", "features.4.conv.0", "features.7.conv.0", "features.14.conv.0",
                     "features"],
    # GELU can be negative: no non-negative output, so the main-path layers stay
    "convnext_tiny": OTHERS["convnext_tiny"],
}


def _network(name: str, default_model) -> nn.Module:
    return default_model.net if name == "efficientnet_lite0" else getattr(torchvision.models, name)(weights=None).eval()


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_both_rules_give_the_papers_layers(name: str) -> None:
    model = getattr(torchvision.models, name)(weights=None).eval()
    assert pe.find_target_layers(model, rule="activations") == pe.find_target_layers(model, rule="main-path")


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activations_rule_picks_non_negative_outputs_at_the_main_path_resolutions(name: str, default_model) -> None:
    net = _network(name, default_model)
    table = pe.describe_layers(net, rule="activations")
    assert [i.name for i in table] == ACTIVATIONS[name]
    assert [i.stride for i in table] == STRIDES[name]  # the same resolutions as the main path
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    _, acts = pe.layers.capture_activations(net, x[:1], [i.name for i in table])
    signs = [bool(acts[i.name].min() >= 0) for i in table]
    assert signs == [name != "convnext_tiny"] * len(table)


def test_the_embedded_model_uses_the_activations_rule_unless_told_otherwise(default_model) -> None:
    assert default_model.layer_rule == "activations"
    assert pe.find_target_layers(default_model) == ACTIVATIONS["efficientnet_lite0"]
    assert pe.find_target_layers(pe.load_model(layer_rule="main-path")) == OTHERS["efficientnet_lite0"]
    with pytest.raises(ValueError, match="rule must be one of"):
        pe.find_target_layers(default_model, rule="relu")
    with pytest.raises(ValueError, match="layer_rule must be one of"):
        pe.load_model(layer_rule="last")
