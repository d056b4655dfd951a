"""Dataset-scale evaluation in the authors' file layout: ``generate`` saliency npz files, then
``evaluate`` insertion and deletion (the paper's protocol, Section 4 and Table 4).

Files (the authors' layout, so their npz files and ours interchange):
- ``{out}/{model}_{method}.npz``: one map per image, keyed by the image's file name (PCAM methods
  use the authors' names ``pcamp``, ``pcamm``, ``pcampm``; with ``all_depths`` also
  ``{model}_{method}{n}.npz``, n = 0 .. L-1, n = L-1 being the full depth, as their code writes).
- ``{out}/ins_auc_{model}_{method}.csv``, ``del_auc_...``, ``ins_details_...``, ``del_details_...``
  and ``summary.md`` / ``summary.csv`` (mean Ins, Del, Ins-Del per method, like Table 4).

Both steps resume: each image's results are written atomically under ``{out}/.parts/``, one part
file per image and output (every method, every depth, the map set), named by a readable stem of
the image name and a hash of the name, the image file's bytes and every setting that changes the
numbers (model weights, size, batch sizes, layers; for ``evaluate`` also the map itself), so two
images never share a part and a part of other settings or an older map is never reused. A rerun
does only what is missing and gives the same bytes as an uninterrupted run; temporary files of
an interrupted write are removed. A run removes the earlier results it replaces (the summary
first) only when its own are ready to be written (:func:`runs.remove_results`): OUT never holds a
mix. A run holds OUT (:func:`runs.claimed`): a second run into it waits for the first to end. The
model's name is made safe for file names (:func:`runs.file_label`), and list entries must stay
inside the image folder (symbolic links inside it are followed). ``evaluate`` refuses maps whose
metadata says they were made at another input size or from other files of the same names
(:func:`runs.check_made_from`), metadata that is not what ``generate`` writes, maps over
:data:`runs.MAX_MAP_BYTES`, and files without metadata whose name is not ``{model}_{method}.npz``
(``vgg16_bn_gradcam.npz`` is not a ``vgg16`` file). Both steps run under ``torchrun
--nproc-per-node N``: each rank takes every N-th image, writes its own part files, and rank 0 merges
them after a barrier.
When the map sets have an atlas index (``generate --save-mapsets`` keeps one in ``OUT/mapsets``),
``evaluate`` records each image's Ins-Del of the full-depth PCAM+, PCAM- and PCAM± maps in it.
"""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import runs
from .files import atomic_write
from .layers import module_device
from .compute import compute_mapset
from .metrics import exact_dtype, faithfulness_curves
from .identity import model_fingerprint
from .images import load_image
from .models import Classifier, find_target_layers, probabilities

VARIANT_OF = {"pcamp": "+", "pcamm": "-", "pcampm": "+-"}
META_KEY = runs.META_KEY


def method_file_name(method: str) -> str:
    """The authors' name of a method (``pcam+-`` -> ``pcampm``); other names are kept, lowercased."""
    name = method.strip().lower()
    return {"pcam+": "pcamp", "pcam-": "pcamm", "pcam+-": "pcampm", "pcam±": "pcampm"}.get(name, name)


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _methods_to_run(methods: Sequence[str]) -> list[str]:
    from .baselines import METHODS

    if isinstance(methods, str):
        raise TypeError(f"methods must be a list of method names, got the string {methods!r}")
    names = [method_file_name(m) for m in methods if m.strip()]
    unknown = [n for n in names if n not in VARIANT_OF and n not in METHODS]
    if unknown or not names:
        what = f"unknown method(s) {unknown}" if unknown else f"no method named in {list(methods)}"
        raise ValueError(f"{what}; accepted: pcam+, pcam-, pcam+- (or pcamp, pcamm, pcampm) and {sorted(METHODS)}")
    return list(dict.fromkeys(names))


def generate(model: Classifier, images: str | os.PathLike, methods: Sequence[str], out: str | os.PathLike, *,
             list_file: str | os.PathLike | None = None, size: int | None = None, batch_size: int = 16,
             all_depths: bool = False, save_mapsets: bool = False, progress: bool = True,
             backend: str = "auto") -> list[Path]:
    """Saliency maps of every image for every method, explaining the model's predicted class.

    The three PCAM variants (and every depth) come from one sweep per image, always computed
    here in fp32 (the explorer's fp16 disk cache is never read, so the maps do not depend on what
    was explored before). Resumes a stopped run (module docstring). Returns the npz files written
    (on rank 0; other ranks return an empty list).

    Raises:
        ValueError / TypeError: bad images, list, methods, batch size or output folder.
    """
    _positive("batch_size", batch_size)
    dist = runs.distributed()
    names = runs.list_images(images, list_file)
    methods = _methods_to_run(methods)
    label = runs.file_label(model.name)
    with runs.start_run(out, dist) as out:
        pcam = [m for m in methods if m in VARIANT_OF]
        device = module_device(model)
        settings = {"model_id": model_fingerprint(model), "size": size, "batch_size": batch_size,
                    "layer_rule": getattr(model, "layer_rule", None)}
        layers_of: dict[tuple, list[str]] = {}
        digests: dict[str, str] = {}  # each image file's SHA-256, read once
        with runs.progress_bar(len(names[dist.rank::dist.world]), f"generate ({label})", dist, progress) as bar:
            for name in names[dist.rank::dist.world]:
                x = load_image(Path(images) / name, model, size=size)
                shape = tuple(x.shape[-2:])
                if shape not in layers_of:
                    layers_of[shape] = find_target_layers(model, shape)
                digests[name] = runs.image_digest(images, name)
                parts = _generate_parts(out, label, methods, name, _image_key(settings, digests[name]),
                                        len(layers_of[shape]), all_depths, save_mapsets)
                todo = {k: p for k, p in parts.items() if not p.is_file()}
                if todo:
                    with torch.no_grad():
                        class_idx = int(probabilities(model(x.to(device))).argmax())
                    if any(k[0] in VARIANT_OF or k[0] == "mapset" for k in todo):
                        ms = compute_mapset(model, x, layers_of[shape], batch_size=batch_size, progress=False,
                                            backend=backend)
                        for (m, depth), path in todo.items():
                            if m == "mapset":
                                ms.save(path, fp16=True)
                            elif m in VARIANT_OF:
                                sal = ms.saliency(class_idx, VARIANT_OF[m], depth)
                                runs.write_npy(path, sal.cpu().numpy().astype(np.float32))
                    for (m, _), path in todo.items():
                        if m not in VARIANT_OF and m != "mapset":
                            from .baselines import saliency as baseline_saliency

                            sal = baseline_saliency(m, model, x.to(device), class_idx)
                            runs.write_npy(path, sal.detach().float().cpu().numpy())
                bar.update(1)
        dist.barrier()
        if dist.rank != 0:
            return []
        digests = {n: digests.get(n) or runs.image_digest(images, n) for n in names}  # other ranks' images too
        meta = {"model": model.name, "model_id": settings["model_id"],
                "size": runs.input_size(size, model.input_size), "images": len(names), "image_sha256": digests}
        keys = {n: _image_key(settings, digests[n]) for n in names}
        if all_depths and pcam and not layers_of:  # this rank had no image
            shape = tuple(load_image(Path(images) / names[0], model, size=size).shape[-2:])
            layers_of[shape] = find_target_layers(model, shape)
        n_depths = {len(v) for v in layers_of.values()}
        if all_depths and pcam and len(n_depths) > 1:
            raise ValueError(f"the images have different sizes and so different numbers of layers "
                             f"{sorted(n_depths)}: give a size for --all-depths")
        stems = [(m, None) for m in methods]
        if all_depths:
            stems += [(m, d) for m in pcam for d in range(1, max(n_depths, default=0) + 1)]
        runs.remove_results(out, _generated_files(label, methods, all_depths, save_mapsets))
        written = []
        for m, depth in stems:
            stem = f"{label}_{m}" if depth is None else f"{label}_{m}{depth - 1}"
            paths = {n: runs.part_path(out, stem, n, keys[n], ".npy") for n in names}
            written.append(_merge_maps(out, stem, paths, dict(meta, method=stem[len(label) + 1:])))
        if save_mapsets:
            runs.publish_mapsets(out, {n: runs.part_path(out, "mapsets", n, keys[n], ".mapset.npz") for n in names})
            from .atlas import build_index  # keep the dataset atlas's index of OUT/mapsets current

            build_index(out / "mapsets", progress=False).close()
        return written


def _generated_files(label: str, methods: Sequence[str], all_depths: bool, save_mapsets: bool) -> list[str]:
    """The files in OUT a ``generate`` run writes (glob patterns), removed before its merge."""
    files = [glob.escape(f"{label}_{m}.npz") for m in methods]
    if all_depths:
        files += [glob.escape(f"{label}_{m}") + "[0-9]*.npz" for m in methods if m in VARIANT_OF]
    return files + (["mapsets/index.json"] if save_mapsets else [])


def _image_key(settings: dict, image_sha256: str) -> str:
    """The key of an image's part files: the run's settings and the image file's SHA-256."""
    return runs.digest([settings, image_sha256])


def _generate_parts(out: Path, label: str, methods: Sequence[str], name: str, key: str, n_layers: int,
                    all_depths: bool, save_mapsets: bool) -> dict[tuple, Path]:
    """Every part file one image needs: ``{(method, depth): path}`` (depth None: the full depth)."""
    parts = {(m, None): runs.part_path(out, f"{label}_{m}", name, key, ".npy") for m in methods}
    if all_depths:
        for m in (m for m in methods if m in VARIANT_OF):
            parts.update({(m, d): runs.part_path(out, f"{label}_{m}{d - 1}", name, key, ".npy") for d in range(1, n_layers + 1)})
    if save_mapsets:
        parts[("mapset", None)] = runs.part_path(out, "mapsets", name, key, ".mapset.npz")
    return parts


def _merge_maps(out: Path, stem: str, parts: dict[str, Path], meta: dict) -> Path:
    arrays = {}
    for name, part in parts.items():
        if not part.is_file():
            raise RuntimeError(f"no map of {name!r} for {stem}: a rank did not finish")
        arrays[name] = np.load(part, allow_pickle=False)
    arrays[META_KEY] = np.array(json.dumps(meta))
    runs.write_npz(out / f"{stem}.npz", arrays)
    return out / f"{stem}.npz"


def read_maps(path: str | os.PathLike, model: Classifier | None = None, names: Sequence[str] | None = None
              ) -> tuple[dict[str, np.ndarray], dict]:
    """The maps of a saliency npz (ours or the authors'; only those of ``names`` when given) and its
    metadata (empty for theirs). Nothing in it is run (no pickles) and no map is read whose size the
    file's directory gives as over :data:`runs.MAX_MAP_BYTES`.

    Raises:
        ValueError: an unreadable file, a map too large, metadata that is not what ``generate``
            writes (:func:`runs.read_metadata`), or a file made with another model than ``model``.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            wanted = None if names is None else {*names, META_KEY}
            keys = [k for k in data.files if wanted is None or k in wanted]
            runs.check_member_sizes(data.zip, keys, str(path))
            maps = {k: data[k] for k in keys}
    except runs.Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure: not a readable npz
        raise ValueError(f"{str(path)!r} is not a readable saliency npz: {exc}") from exc
    meta = runs.read_metadata(maps.pop(META_KEY), str(path)) if META_KEY in maps else {}
    if model is not None and meta and meta.get("model_id") != model_fingerprint(model):
        raise ValueError(f"{str(path)!r} holds maps of model {meta.get('model')!r} ({meta.get('model_id')}), "
                         f"not of the given {model.name!r} ({model_fingerprint(model)}): evaluate it with "
                         "the model that generated it")
    return maps, meta


def names_model(stem: str, label: str) -> bool:
    """Whether a file stem is ``{label}_{method}`` (a method name has no ``_``: ``vgg16_bn_pcampm`` is
    a file of ``vgg16_bn``, not a method ``bn_pcampm`` of ``vgg16``)."""
    method = stem[len(label) + 1:] if stem.startswith(f"{label}_") else ""
    return bool(method) and "_" not in method


def check_map(sal: np.ndarray, where: str) -> None:
    """A saliency map to score: real numbers, ``H x W`` (or ``1 x 1 x H x W``), finite.

    Raises:
        ValueError: naming ``where`` (file and image), what was wrong and what is accepted.
    """
    if sal.dtype.kind not in "biuf":
        raise ValueError(f"{where} has dtype {sal.dtype}; accepted: real numbers")
    if sal.ndim < 2 or any(d != 1 for d in sal.shape[:-2]) or min(sal.shape[-2:]) < 1:
        raise ValueError(f"{where} has shape {sal.shape}; accepted: one value per pixel, H x W (or 1 x 1 x H x W "
                         "as the authors' files), not a 1-D array nor a C x H x W colour map")
    bad = int(sal.size - np.isfinite(sal).sum())
    if bad:
        raise ValueError(f"{where} has {bad} non-finite values (NaN or inf); saliency maps must be finite")


def evaluate(model: Classifier, images: str | os.PathLike, npz_files: Sequence[str | os.PathLike],
             out: str | os.PathLike, *, list_file: str | os.PathLike | None = None, size: int | None = None,
             n_steps: int = 224, batch_size: int = 32, images_per_batch: int = 4, progress: bool = True,
             backend: str = "auto"
             ) -> Optional[list[dict]]:
    """Insertion and deletion of every map of every npz file; per-image csv files in the authors'
    format and a summary table. The samples of ``images_per_batch`` images share forward batches.
    Resumes a stopped run (a group of images is redone whole, so the numbers are those of an
    uninterrupted run). Returns the summary rows on rank 0 (None on other ranks).

    Raises:
        ValueError: bad arguments, npz files (another model's, missing images, maps that are not
            finite ``H x W`` arrays: the file and image are named) or output folder.
    """
    for arg, value in (("n_steps", n_steps), ("batch_size", batch_size), ("images_per_batch", images_per_batch)):
        _positive(arg, value)
    dist = runs.distributed()
    names = runs.list_images(images, list_file)
    files = [Path(f) for f in npz_files]
    if not files:
        raise ValueError("npz_files is empty: give at least one saliency npz file")
    label = runs.file_label(model.name)
    loaded, digests = [], {}
    for f in files:
        maps, meta = read_maps(f, model, names)
        if meta.get("image_sha256") and not digests:
            digests = {n: runs.image_digest(images, n) for n in names}
        runs.check_made_from(meta, f.name, size, model.input_size, digests)
        if not meta and not names_model(f.stem, label):
            raise ValueError(f"{f.name} does not name the model {label!r} ({label}_<method>.npz, a method name having "
                             "no '_') and has no metadata: is it a map file of another model?")
        missing = [n for n in names if n not in maps]
        if missing:
            raise ValueError(f"{f.name} has no map for {len(missing)} images, e.g. {missing[:3]}")
        for n in names:
            check_map(maps[n], f"{f.name}: the map of {n!r}")
        loaded.append((f.stem, {n: maps[n] for n in names}))
    stems = [stem for stem, _ in loaded]
    if len(set(stems)) < len(stems):
        raise ValueError(f"two npz files have one name ({sorted(s for s in stems if stems.count(s) > 1)}): "
                         "their results would share a file; rename one")
    with runs.start_run(out, dist) as out:
        settings = {"model_id": model_fingerprint(model), "size": size, "n_steps": n_steps, "batch_size": batch_size,
                    "images_per_batch": images_per_batch}
        keys: dict[str, str] = {}

        def part(stem: str, maps: dict, name: str) -> Path:
            if name not in keys:
                keys[name] = _image_key(settings, digests.get(name) or runs.image_digest(images, name))
            return runs.part_path(out, stem, name, runs.digest([keys[name], runs.array_digest(maps[name])]), ".json")

        mine = names[dist.rank::dist.world]
        with runs.progress_bar(len(mine) * len(loaded), f"evaluate ({label})", dist, progress) as bar:
            for first in range(0, len(mine), images_per_batch):
                group = mine[first:first + images_per_batch]
                # a group's images share forward batches: redo it whole unless all of it is done
                todo = {stem: {n: part(stem, maps, n) for n in group} for stem, maps in loaded}
                todo = {stem: paths for stem, paths in todo.items() if not all(p.is_file() for p in paths.values())}
                needed = list(dict.fromkeys(n for paths in todo.values() for n in paths))
                xs = {n: load_image(Path(images) / n, model, size=size).to(module_device(model)) for n in needed}
                with torch.no_grad():
                    classes = {n: int(probabilities(model(x)).argmax()) for n, x in xs.items()}
                for stem, maps in loaded:
                    if stem in todo:
                        _score_group(model, todo[stem], maps, xs, classes, n_steps, batch_size, backend)
                    bar.update(len(group))
        dist.barrier()
        if dist.rank != 0:
            return None
        runs.remove_results(out, [*runs.SUMMARY_FILES, *(glob.escape(file) for stem in stems
                                                          for file in _score_files(stem).values())])
        merged = [_merge_scores(out, stem, {n: part(stem, maps, n) for n in names}) for stem, maps in loaded]
        rows = [dict(summary, model=model.name, method=stem[len(label) + 1:] if stem.startswith(f"{label}_") else stem)
                for (stem, _), (summary, _) in zip(loaded, merged)]
        runs.write_summary(out, rows)
        _record_in_atlas([out / "mapsets", *(f.parent / "mapsets" for f in files)], settings["model_id"],
                         {r["method"]: (records, maps) for r, (_, records), (_, maps) in zip(rows, merged, loaded)})
        return rows


def _record_in_atlas(folders: list[Path], model_id: str, results: dict[str, tuple[dict, dict]]) -> None:
    """Each image's Ins-Del of its full-depth PCAM maps into the atlas index of its map sets, where
    there is one (``generate --save-mapsets`` keeps it in ``OUT/mapsets``). ``results``: method ->
    (part records, maps) by image name."""
    from .atlas.evaluated import Score, record_insdel

    scores = {VARIANT_OF[method]: {n: Score(r["class"], maps[n].shape[-2:], r["ins_auc"] - r["del_auc"])
                                   for n, r in records.items()}
              for method, (records, maps) in results.items() if method in VARIANT_OF}
    if scores:
        record_insdel(folders, model_id, scores)


def _score_group(model: Classifier, parts: dict[str, Path], maps: dict, xs: dict, classes: dict, n_steps: int,
                 batch_size: int, backend: str = "auto") -> None:
    """Insertion and deletion of a group of images in shared forward batches; one part file each."""
    names = list(parts)
    sals = []
    for name in names:
        sal = torch.as_tensor(maps[name])  # the authors' maps may be 1 x 1 x h x w
        sal = sal.to(exact_dtype(sal.dtype)).reshape(1, 1, *sal.shape[-2:])  # float64 maps keep their order
        sals.append(F.interpolate(sal, xs[name].shape[-2:], mode="bilinear", align_corners=False)[0, 0])
    results = faithfulness_curves(model, [xs[n] for n in names], sals, [classes[n] for n in names], n_steps,
                                  batch_size=batch_size, backend=backend)
    for name, result in zip(names, results):
        (ins_auc, ins), (del_auc, dele) = result["insertion"], result["deletion"]
        record = {"class": classes[name], "ins_auc": ins_auc, "del_auc": del_auc,
                  "ins": ins.tolist(), "del": dele.tolist()}
        with atomic_write(parts[name]) as f:
            f.write(json.dumps(record).encode())


def _score_files(stem: str) -> dict[tuple[str, str], str]:
    """The csv files of one npz file's scores (the authors' names): ``(ins|del, auc|details) -> name``."""
    return {(kind, what): f"{kind}_{what}_{stem}.csv" for kind in ("ins", "del") for what in ("auc", "details")}


def _merge_scores(out: Path, stem: str, parts: dict[str, Path]) -> tuple[dict, dict]:
    """The csv files of one npz file; returns its summary row and each image's part record."""
    records = {}
    for name, part in parts.items():
        if not part.is_file():
            raise RuntimeError(f"no scores of {name!r} for {stem}: a rank did not finish")
        records[name] = json.loads(part.read_text())
    files = _score_files(stem)
    for kind in ("ins", "del"):
        with atomic_write(out / files[kind, "auc"]) as f:
            f.write(runs.csv_text({n: [r[f"{kind}_auc"]] for n, r in records.items()}))
        with atomic_write(out / files[kind, "details"]) as f:
            f.write(runs.csv_text({n: r[kind] for n, r in records.items()}))
    ins = float(np.mean([r["ins_auc"] for r in records.values()]))
    dele = float(np.mean([r["del_auc"] for r in records.values()]))
    return {"file": stem, "images": len(records), "insertion": ins, "deletion": dele, "ins_del": ins - dele}, records
