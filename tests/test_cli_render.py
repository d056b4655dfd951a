"""The explain command end to end on the embedded model, and the pixel helpers."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from polycam_explorer import cli, render


def test_explain_writes_top_classes_and_an_overlay_per_variant_and_depth(tmp_path, sample, capsys):
    rc = cli.main(["explain", str(sample("coffee")), "--out", str(tmp_path), "--size", "64",
                   "--layers", "blocks.1,blocks.2", "--no-progress", "--save-mapset"])
    assert rc == 0
    report = json.loads((tmp_path / "coffee_explain.json").read_text())
    assert len(report["top5"]) == 5 and report["explained_class"] == report["top5"][0]["index"]
    names = sorted(p.name for p in tmp_path.glob("coffee_pcam*.png"))
    assert len(names) == 6 and "coffee_pcam+-_depth2_blocks.1.png" in names
    # computed at 64 x 64, laid back onto the photo's own 400 x 267 frame
    assert Image.open(tmp_path / "coffee_pcam-_depth1_blocks.2.png").size == (400, 267)
    assert report["frame"] == [267, 400] and report["overlay_size"] == [267, 400]
    assert (tmp_path / "coffee_summary.png").is_file() and (tmp_path / "coffee.mapset.npz").is_file()
    assert not list(tmp_path.glob(".*tmp"))
    assert report["top5"][0]["name"] in capsys.readouterr().out


def test_explain_by_class_name_and_single_variant(tmp_path, sample):
    rc = cli.main(["explain", str(sample("chelsea")), "--out", str(tmp_path), "--size", "64", "--class", "tabby",
                   "--variant", "±", "--layers", "blocks.2", "--no-progress"])
    assert rc == 0
    report = json.loads((tmp_path / "chelsea_explain.json").read_text())
    assert report["explained_name"] == "tabby" and report["explained_class"] == 281
    assert [p.name for p in tmp_path.glob("*.png") if "pcam" in p.name] == ["chelsea_pcam+-_depth1_blocks.2.png"]


@pytest.mark.parametrize("args, message", [
    (["--class", "unicorn"], "--class 'unicorn'"),
    (["--layers", "nope"], "unknown layer"),
])
def test_explain_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, sample, capsys, args, message):
    out = tmp_path / "out"
    rc = cli.main(["explain", str(sample("chelsea")), "--out", str(out), "--size", "32", "--no-progress",
                   "--layers", "blocks.2"] + args)
    assert rc == 2 and message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_explain_missing_image(tmp_path, capsys):
    assert cli.main(["explain", str(tmp_path / "none.jpg"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_colormap_luts_and_heatmap_ends():
    for name in render.COLORMAPS:
        assert render.colormap(name).shape == (256, 3)
    s = torch.tensor([[0.0, 1.0]])
    hm = render.heatmap(s, "gray")
    assert hm[0, 0].tolist() == [0, 0, 0] and hm[0, 1].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="colormap must be a matplotlib colormap"):
        render.colormap("rainbowish")


def test_overlay_masked_and_image_roundtrip():
    x = torch.zeros(1, 3, 2, 2)  # normalised 0 with mean 0.5, std 0.5 -> grey 128
    img = render.image_uint8(x, (0.5,) * 3, (0.5,) * 3)
    assert img.shape == (2, 2, 3) and int(img[0, 0, 0]) == 128
    s = np.array([[0.0, 1.0], [0.5, 0.25]], dtype=np.float32)
    assert render.masked(img, s)[:, :, 0].tolist() == [[0, 128], [64, 32]]
    assert np.array_equal(render.overlay(img, s, alpha=0.0), img)
    assert np.array_equal(render.overlay(img, s, "gray", alpha=1.0), render.heatmap(s, "gray"))
    gray = render.image_uint8(torch.zeros(1, 1, 2, 2), (0.5,), (0.5,))
    assert gray.shape == (2, 2, 3)


@pytest.mark.parametrize("rule, first", [("main-path", "blocks.0"), ("activations", "blocks.1.0.bn1")])
def test_explain_layer_rule_chooses_the_discovered_layers(tmp_path, sample, rule, first):
    rc = cli.main(["explain", str(sample("coffee")), "--out", str(tmp_path), "--size", "64", "--variant", "+",
                   "--layer-rule", rule, "--no-progress"])
    assert rc == 0
    finest = sorted(p.name for p in tmp_path.glob("coffee_pcam+_depth5_*.png"))
    assert finest == [f"coffee_pcam+_depth5_{first}.png"]


def test_explain_shows_a_labelled_first_picture_then_exactly_the_plain_outputs(tmp_path, sample, capsys):
    from polycam_explorer.explain import explain

    seen = []

    def told(line: str) -> None:  # called as the first estimate is on disk
        preview = tmp_path / "fast" / "coffee_preview.png"
        seen.append((line, preview.is_file() and Image.open(preview).size))

    kwargs = dict(layers=["blocks.1", "blocks.2"], size=64, progress=False, batch_size=2)
    explain(str(sample("coffee")), str(tmp_path / "fast"), preview=told, **kwargs)
    explain(str(sample("coffee")), str(tmp_path / "plain"), **kwargs)
    assert len(seen) == 1
    line, size = seen[0]
    assert "estimate of depth 1" in line and "channels of blocks.2" in line and size == (400, 267)
    fast = sorted(p.name for p in (tmp_path / "fast").iterdir())
    assert "coffee_preview.png" not in fast  # an estimate is not left among the results
    assert fast == sorted(p.name for p in (tmp_path / "plain").iterdir())
    for name in fast:
        if name.endswith(".png"):
            assert (tmp_path / "fast" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    assert cli.main(["explain", str(sample("coffee")), "--out", str(tmp_path / "cli"), "--size", "64",
                     "--layers", "blocks.2", "--no-progress"]) == 0
    assert "first picture after" in capsys.readouterr().out


def test_every_subcommand_and_option_has_help_text():
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helped = {c.dest for c in sub._choices_actions if c.help}
    assert helped == set(sub.choices), set(sub.choices) - helped
    for name, command in sub.choices.items():
        bare = [a.option_strings or a.dest for a in command._actions if not a.help]
        assert not bare, f"{name}: {bare} have no help text"
