"""``polycam-explorer explain IMAGE --out DIR``: top classes, an overlay PNG per variant and depth,
a summary grid and a JSON report for one image."""
from __future__ import annotations

import glob
import json
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from . import render
from .cache import default_batch_size
from .compute import iter_mapset
from .files import atomic_write
from .images import load_image
from .layers import module_device
from .mapset import MapSet
from .models import load_model, probabilities

VARIANT_FILE_NAMES = {"+": "pcam+", "-": "pcam-", "+-": "pcam+-"}


def _class_index(model, x: torch.Tensor, spec: str | None) -> int | None:
    """``None`` -> None (the top-1, known after the sweep); an index; or a class name
    (case-insensitive) that names one class. Checked against the model's outputs (one forward
    pass) before any sweep.

    Raises:
        ValueError: an index out of range, an unknown name or one several classes share (ImageNet's
            "cardigan": the corgi and the sweater), saying what is accepted.
    """
    if spec is None:
        return None
    with torch.no_grad():
        n_classes = probabilities(model(x.to(module_device(model)))).shape[1]
    if spec.strip().isdecimal():  # what int() reads ("²" is a digit, not a decimal)
        if int(spec) >= n_classes:
            raise ValueError(f"--class {spec} is out of range: this model has {n_classes} classes, "
                             f"indices 0..{n_classes - 1} (or give a class name)")
        return int(spec)
    matches = [i for i in range(n_classes) if model.class_name(i).lower() == spec.strip().lower()]
    if not matches:
        raise ValueError(f"--class {spec!r} is neither a class index (0..{n_classes - 1}) nor a class "
                         "name of this model")
    if len(matches) > 1:
        raise ValueError(f"--class {spec!r} names {len(matches)} classes of this model, indices {matches}: "
                         "give the index of the one to explain")
    return matches[0]


OVERLAY_MAX = 1024  # the longest side of explain's overlays (the original's when smaller)


def explain(image: str, out: str, *, class_spec: str | None = None, variants: Sequence[str] = ("+", "-", "+-"),
            model_name: str | None = None, weights: str | None = None, layers: Sequence[str] | None = None,
            batch_size: int | None = None, size: int | None = None, cmap: str = "turbo", save_mapset: bool = False,
            progress: bool = True, layer_rule: str | None = None, backend: str = "auto",
            preview: Callable[[str], None] | None = None) -> dict:
    """Explain one image: top classes, an overlay PNG per variant and depth, and a summary grid.

    The maps are computed at the model's input size (the whole image resized) and laid back onto
    the photo's own frame: overlays keep the original aspect ratio, longest side the original's
    capped at :data:`OVERLAY_MAX` (the summary's tiles: the model's input size as longest side).
    The output folder and the class are checked before the sweep (ValueError naming them).

    ``preview``: a first picture within seconds. The sweep runs progressively
    (:func:`~polycam_explorer.iter_mapset`): ``STEM_preview.png``, the depth-1 map of the last
    variant asked for, is written from the first estimate on and refreshed as channels come in,
    and ``preview`` gets a line saying where it is and how many channels are in. The preview is an
    estimate: it is removed once the exact maps are written (and when the sweep stops early).
    """
    from .runs import claimed, writable_folder

    out_dir = writable_folder(out)
    with claimed(out_dir):  # another run writing into out waits: explanations are never mixed
        model = load_model(model_name, weights, layer_rule=layer_rule)
        x = load_image(image, model, size=size)
        device = module_device(model)
        c = _class_index(model, x, class_spec)
        stem = Path(image).stem
        image_sha256 = _check_not_another_image(out_dir, stem, image)
        original = render.image_uint8(load_image(image, size=0), (0.5,) * 3, (0.5,) * 3)  # the photo, as read
        frame = render.fitted_size(original.shape[:2], min(OVERLAY_MAX, max(original.shape[:2])))
        picture = render.fit_picture(original, frame)
        sweep = iter_mapset(model, x, layers, batch_size=batch_size or default_batch_size(device), progress=progress,
                            backend=backend, progressive=preview is not None)
        if preview is None:
            *_, ms = sweep
        else:
            ms = _sweep_with_preview(sweep, out_dir / f"{stem}_preview.png", picture, c, variants[-1], cmap, preview)
        if c is None:
            c = ms.topk(1)[0][0]
        earlier = _start_explanation(out_dir, stem)  # the sweep succeeded: the earlier files give way
        ms.frame = original.shape[:2]  # saved with the map set: its maps are drawn back onto the photo
        thumb = render.fitted_size(original.shape[:2], max(ms.size))
        small = render.fit_picture(original, thumb)
        rows, files = [], []
        for variant in variants:
            row = []
            for depth, layer in enumerate(reversed(ms.layers), start=1):
                saliency = ms.saliency(c, variant, depth)
                tile = render.overlay(picture, render.resize_map(saliency, frame), cmap)
                path = out_dir / f"{stem}_{VARIANT_FILE_NAMES[variant]}_depth{depth}_{layer}.png"
                render.save_png(tile, path)
                files.append(str(path))
                row.append(render.overlay(small, render.resize_map(saliency, thumb), cmap))
            rows.append(row)
        labels = [f"{l} ({ms.activations[i].shape[-2]}x{ms.activations[i].shape[-1]})"
                  for i, l in reversed(list(enumerate(ms.layers)))]
        summary = render.grid([[small] + r for r in rows],
                              row_labels=[VARIANT_FILE_NAMES[v].upper() for v in variants],
                              col_labels=["image"] + [f"d{d}: {lab}" for d, lab in enumerate(labels, 1)])
        render.save_png(summary, out_dir / f"{stem}_summary.png")
        if save_mapset:
            ms.save(out_dir / f"{stem}.mapset.npz", fp16=True)
        files += [str(out_dir / f"{stem}_summary.png")]
        files += [str(out_dir / f"{stem}.mapset.npz")] if save_mapset else []
        for name in earlier - {Path(f).name for f in files}:  # an earlier explanation's, not rewritten
            (out_dir / name).unlink(missing_ok=True)
        report = {"image": image, "image_sha256": image_sha256, "model": ms.model_name, "layers": ms.layers,
                  "explained_class": c, "explained_name": ms.class_names[c], "frame": list(original.shape[:2]),
                  "overlay_size": list(frame),
                  "top5": [{"index": i, "name": n, "probability": p} for i, n, p in ms.topk(5)],
                  "forward_passes": ms.stats.get("forward_passes"), "naive_passes": ms.stats.get("naive_passes"),
                  "files": files}
        with atomic_write(out_dir / f"{stem}_explain.json") as f:
            f.write(json.dumps(report, indent=2).encode())
        return report


def _check_not_another_image(out_dir: Path, stem: str, image: str) -> str:
    """The SHA-256 of ``image``'s bytes, after checking that ``out_dir`` holds no explanation of
    another image of the same stem (``scans/a/xray.png`` and ``scans/b/xray.png`` both write
    ``xray_*``): explaining it there would overwrite that image's files.

    Raises:
        ValueError: naming both images and what to do.
    """
    from .runs import digest

    sha = digest(Path(image).read_bytes())
    try:
        previous = json.loads((out_dir / f"{stem}_explain.json").read_text())
    except (OSError, ValueError):  # none there (or unreadable: nothing to keep)
        return sha
    recorded = previous.get("image_sha256") if isinstance(previous, dict) else None
    if recorded is not None and recorded != sha:
        raise ValueError(f"{str(out_dir)!r} already holds the explanation of another image named {stem!r} "
                         f"({previous.get('image')!r}); explaining {image!r} there would overwrite its "
                         f"{stem}_* files: give another --out")
    return sha


def _start_explanation(out_dir: Path, stem: str) -> set[str]:
    """Begin a new explanation of ``stem`` in ``out_dir`` (held by this run): remove what an
    interrupted or killed run left (temporary files, the preview) and the earlier report, so that a
    report is only ever beside a complete set of its own files. Returns the names of the earlier
    explanation's files (its report's list and every ``STEM_pcam*_depth*`` overlay), which the new
    explanation removes where it does not rewrite them (another model, size, layers or variants)."""
    earlier = {f.name for v in VARIANT_FILE_NAMES.values()
               for f in out_dir.glob(f"{glob.escape(f'{stem}_{v}_depth')}[0-9]*.png")}
    report = out_dir / f"{stem}_explain.json"
    try:
        listed = json.loads(report.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):  # none, or not a report: nothing listed
        listed = []
    own = {f"{stem}_summary.png", f"{stem}.mapset.npz"}
    earlier |= {Path(f).name for f in listed if isinstance(f, str) and Path(f).name in own}
    for leftover in [*out_dir.glob(f".{glob.escape(stem)}[_.]*.tmp"), out_dir / f"{stem}_preview.png", report]:
        leftover.unlink(missing_ok=True)
    return earlier


PREVIEW_EVERY_S = 1.0  # how often the preview file is rewritten while estimates come in


def _sweep_with_preview(sweep: Iterator[MapSet], path: Path, picture, class_index: int | None, variant: str,
                        cmap: str, tell: Callable[[str], None]) -> MapSet:
    """Run ``sweep`` (progressive) to its end, keeping ``path`` a labelled estimate of depth 1
    meanwhile; the preview is removed at the end, whatever the end."""
    started, written = time.monotonic(), None
    try:
        for ms in sweep:
            if ms.estimate and (written is None or time.monotonic() - written >= PREVIEW_EVERY_S):
                c = class_index if class_index is not None else ms.topk(1)[0][0]
                render.save_png(render.overlay(picture, render.resize_map(ms.saliency(c, variant, 1), picture.shape[:2]),
                                               cmap), path)
                if written is None:
                    tell(f"first picture after {time.monotonic() - started:.1f} s: {path} (an estimate of depth 1, "
                         f"{ms.channels_done}/{ms.channels_total} channels of {ms.layers[-1]}; the exact maps follow)")
                written = time.monotonic()
        return ms
    finally:
        path.unlink(missing_ok=True)
