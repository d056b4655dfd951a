"""Dataset-scale evaluation in the authors' file layout: ``generate`` saliency npz files, then
``evaluate`` insertion and deletion (the paper's protocol, Section 4 and Table 4).

Files (the authors' layout, so their npz files and ours interchange):
- ``{out}/{model}_{method}.npz``: one map per image, keyed by the image's file name (PCAM methods
  use the authors' names ``pcamp``, ``pcamm``, ``pcampm``; with ``all_depths`` also
  ``{model}_{method}{n}.npz``, n = 0 .. L-1, n = L-1 being the full depth, as their code writes).
- ``{out}/ins_auc_{model}_{method}.csv``, ``del_auc_...``, ``ins_details_...``, ``del_details_...``
  and ``summary.md`` / ``summary.csv`` (mean Ins, Del, Ins-Del per method, like Table 4).

Both steps resume (an image already done is skipped: each image's result is written atomically
under ``{out}/.parts/``) and run under ``torchrun --nproc-per-node N``: each rank takes every N-th
image, writes its own part files, and rank 0 merges them after a barrier.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import cache
from .files import atomic_write
from .layers import module_device
from .mapset import compute_mapset
from .metrics import faithfulness_curves
from .models import Classifier, load_image, model_fingerprint, probabilities

VARIANT_OF = {"pcamp": "+", "pcamm": "-", "pcampm": "+-"}
META_KEY = "__polycam_explorer__"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def distributed() -> Dist:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size())


def method_file_name(method: str) -> str:
    """The authors' name of a method (``pcam+-`` -> ``pcampm``); other names are kept, lowercased."""
    name = method.strip().lower()
    return {"pcam+": "pcamp", "pcam-": "pcamm", "pcam+-": "pcampm", "pcam±": "pcampm"}.get(name, name)


def list_images(folder: str | os.PathLike, list_file: str | os.PathLike | None = None) -> list[str]:
    """Image file names (relative to ``folder``): the first word of each line of ``list_file``
    (the authors' ``images.txt``), or every image file in ``folder``, sorted.

    Raises:
        ValueError: a missing folder, list or listed file, or no images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder {str(folder)!r} does not exist")
    if list_file is not None:
        if not Path(list_file).is_file():
            raise ValueError(f"image list {str(list_file)!r} does not exist")
        names = [line.split()[0] for line in Path(list_file).read_text().splitlines() if line.strip()]
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ValueError(f"{len(missing)} listed images are not in {str(folder)!r}, e.g. {missing[:3]}")
    else:
        names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise ValueError(f"no images in {str(folder)!r} (accepted: {sorted(IMAGE_SUFFIXES)})")
    return names


def _part(out: Path, stem: str, image: str, suffix: str) -> Path:
    return out / ".parts" / stem / (image.replace("/", "__") + suffix)


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as f:
        np.save(f, array, allow_pickle=False)


def _methods_to_run(methods: Sequence[str]) -> list[str]:
    names = [method_file_name(m) for m in methods if m.strip()]
    others = [n for n in names if n not in VARIANT_OF]
    if others:
        from .baselines import METHODS
    unknown = [n for n in others if n not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {unknown or methods}; accepted: pcam+, pcam-, pcam+- "
                         f"(or pcamp, pcamm, pcampm) and {sorted(METHODS)}")
    return list(dict.fromkeys(names))


def _progress(total: int, desc: str, dist: Dist, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled or dist.rank != 0, unit="img")


def generate(model: Classifier, images: str | os.PathLike, methods: Sequence[str], out: str | os.PathLike, *,
             list_file: str | os.PathLike | None = None, size: int | None = None, batch_size: int = 16,
             all_depths: bool = False, save_mapsets: bool = False, progress: bool = True) -> list[Path]:
    """Saliency maps of every image for every method, explaining the model's predicted class.

    The three PCAM variants (and every depth) come from one sweep per image (or from the map set
    in the disk cache, :mod:`polycam_explorer.cache`, when the explorer already made it). Returns
    the npz files written (on rank 0; other ranks return an empty list).
    """
    dist = distributed()
    out = Path(out)
    names = list_images(images, list_file)
    methods = _methods_to_run(methods)
    label = model.name
    pcam = [m for m in methods if m in VARIANT_OF]
    mine = names[dist.rank::dist.world]
    with _progress(len(mine), f"generate ({label})", dist, progress) as bar:
        for name in mine:
            stems = [f"{label}_{m}" for m in methods]
            if all(_part(out, s, name, ".npy").is_file() for s in stems):
                bar.update(1)
                continue
            x = load_image(Path(images) / name, model, size=size)
            if pcam:  # a map set already in the explorer's disk cache is reused
                ms = cache.cached(model, None, x, device=module_device(model)) or compute_mapset(
                    model, x, batch_size=batch_size, progress=False)
                class_idx = int(ms.probs.argmax())  # the sweep's s0: the predicted class
                for m in pcam:
                    variant = VARIANT_OF[m]
                    _write_npy(_part(out, f"{label}_{m}", name, ".npy"),
                               ms.saliency(class_idx, variant).cpu().numpy().astype(np.float32))
                    if all_depths:
                        for d in range(1, len(ms.layers) + 1):
                            _write_npy(_part(out, f"{label}_{m}{d - 1}", name, ".npy"),
                                       ms.saliency(class_idx, variant, d).cpu().numpy().astype(np.float32))
                if save_mapsets:
                    ms.save(out / "mapsets" / f"{name.replace('/', '__')}.mapset.npz", fp16=True)
            else:
                with torch.no_grad():
                    class_idx = int(probabilities(model.net(x.to(module_device(model)))).argmax())
            for m in methods:
                if m in VARIANT_OF:
                    continue
                from .baselines import saliency as baseline_saliency

                sal = baseline_saliency(m, model, x.to(module_device(model)), class_idx)
                _write_npy(_part(out, f"{label}_{m}", name, ".npy"), sal.detach().float().cpu().numpy())
            bar.update(1)
    dist.barrier()
    if dist.rank != 0:
        return []
    written = []
    meta = {"model": label, "model_id": model_fingerprint(model), "size": size, "images": len(names)}
    stems = [f"{label}_{m}" for m in methods]
    if all_depths and pcam:
        n_depths = _depth_files(out, label, pcam)
        stems += [f"{label}_{m}{d}" for m in pcam for d in range(n_depths)]
    for stem in stems:
        written.append(_merge_maps(out, stem, names, dict(meta, method=stem[len(label) + 1:])))
    return written


def _depth_files(out: Path, label: str, pcam: Sequence[str]) -> int:
    d = 0
    while (out / ".parts" / f"{label}_{pcam[0]}{d}").is_dir():
        d += 1
    return d


def _merge_maps(out: Path, stem: str, names: Sequence[str], meta: dict) -> Path:
    arrays = {}
    for name in names:
        part = _part(out, stem, name, ".npy")
        if not part.is_file():
            raise RuntimeError(f"no map of {name!r} for {stem}: a rank did not finish")
        arrays[name] = np.load(part, allow_pickle=False)
    arrays[META_KEY] = np.array(json.dumps(meta))
    path = out / f"{stem}.npz"
    with atomic_write(path) as f:
        np.savez_compressed(f, **arrays)
    return path


def read_maps(path: str | os.PathLike, model: Classifier | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """The maps of a saliency npz (ours or the authors') and its metadata (empty for theirs).

    Raises:
        ValueError: an unreadable file, or one made with another model than ``model``.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            maps = {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - any failure: not a readable npz
        raise ValueError(f"{str(path)!r} is not a readable saliency npz: {exc}") from exc
    meta = json.loads(str(maps.pop(META_KEY))) if META_KEY in maps else {}
    if model is not None and meta and meta.get("model_id") != model_fingerprint(model):
        raise ValueError(f"{str(path)!r} holds maps of model {meta.get('model')!r} ({meta.get('model_id')}), "
                         f"not of the given {model.name!r} ({model_fingerprint(model)}): evaluate it with "
                         "the model that generated it")
    return maps, meta


def evaluate(model: Classifier, images: str | os.PathLike, npz_files: Sequence[str | os.PathLike],
             out: str | os.PathLike, *, list_file: str | os.PathLike | None = None, size: int | None = None,
             n_steps: int = 224, batch_size: int = 32, images_per_batch: int = 4, progress: bool = True
             ) -> Optional[list[dict]]:
    """Insertion and deletion of every map of every npz file; per-image csv files in the authors'
    format and a summary table. The samples of ``images_per_batch`` images share forward batches.
    Returns the summary rows on rank 0 (None on other ranks)."""
    dist = distributed()
    out = Path(out)
    names = list_images(images, list_file)
    files = [Path(f) for f in npz_files]
    label = model.name
    loaded = []
    for f in files:
        maps, meta = read_maps(f, model)
        if not meta and not f.stem.startswith(f"{label}_"):
            raise ValueError(f"{f.name} does not name the model {label!r} ({label}_<method>.npz) and has no "
                             "metadata: is it a map file of another model?")
        missing = [n for n in names if n not in maps]
        if missing:
            raise ValueError(f"{f.name} has no map for {len(missing)} images, e.g. {missing[:3]}")
        loaded.append((f.stem, maps))
    mine = names[dist.rank::dist.world]
    with _progress(len(mine) * len(loaded), f"evaluate ({label})", dist, progress) as bar:
        for first in range(0, len(mine), images_per_batch):
            group = mine[first:first + images_per_batch]
            todo = {stem: [n for n in group if not _part(out, stem, n, ".json").is_file()] for stem, _ in loaded}
            needed = list(dict.fromkeys(n for names_todo in todo.values() for n in names_todo))
            xs = {n: load_image(Path(images) / n, model, size=size).to(module_device(model)) for n in needed}
            with torch.no_grad():
                classes = {n: int(probabilities(model.net(x)).argmax()) for n, x in xs.items()}
            for stem, maps in loaded:
                if todo[stem]:
                    _score_group(model, out, stem, todo[stem], maps, xs, classes, n_steps, batch_size)
                bar.update(len(group))
    dist.barrier()
    if dist.rank != 0:
        return None
    rows = [dict(_merge_scores(out, stem, names), model=label,
                 method=stem[len(label) + 1:] if stem.startswith(f"{label}_") else stem) for stem, _ in loaded]
    _write_summary(out, rows)
    return rows


def _score_group(model: Classifier, out: Path, stem: str, names: Sequence[str], maps: dict, xs: dict,
                 classes: dict, n_steps: int, batch_size: int) -> None:
    """Insertion and deletion of a group of images in shared forward batches; one part file each."""
    sals = []
    for name in names:
        sal = torch.as_tensor(maps[name], dtype=torch.float32)  # the authors' maps may be 1 x 1 x h x w
        sals.append(F.interpolate(sal.reshape(1, 1, *sal.shape[-2:]), xs[name].shape[-2:], mode="bilinear",
                                  align_corners=False)[0, 0])
    results = faithfulness_curves(model, [xs[n] for n in names], sals, [classes[n] for n in names], n_steps,
                                  batch_size=batch_size)
    for name, result in zip(names, results):
        (ins_auc, ins), (del_auc, dele) = result["insertion"], result["deletion"]
        record = {"class": classes[name], "ins_auc": ins_auc, "del_auc": del_auc,
                  "ins": ins.tolist(), "del": dele.tolist()}
        with atomic_write(_part(out, stem, name, ".json")) as f:
            f.write(json.dumps(record).encode())


def _csv_text(rows: dict[str, Sequence[float]]) -> bytes:
    """pandas' ``DataFrame.from_dict(rows, orient='index').to_csv()`` layout, as the authors write."""
    width = len(next(iter(rows.values())))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([""] + list(range(width)))
    for name, values in rows.items():
        writer.writerow([name] + [str(np.float32(v)) for v in values])
    return buffer.getvalue().encode()


def _merge_scores(out: Path, stem: str, names: Sequence[str]) -> dict:
    records = {}
    for name in names:
        part = _part(out, stem, name, ".json")
        if not part.is_file():
            raise RuntimeError(f"no scores of {name!r} for {stem}: a rank did not finish")
        records[name] = json.loads(part.read_text())
    for kind in ("ins", "del"):
        with atomic_write(out / f"{kind}_auc_{stem}.csv") as f:
            f.write(_csv_text({n: [r[f"{kind}_auc"]] for n, r in records.items()}))
        with atomic_write(out / f"{kind}_details_{stem}.csv") as f:
            f.write(_csv_text({n: r[kind] for n, r in records.items()}))
    ins = float(np.mean([r["ins_auc"] for r in records.values()]))
    dele = float(np.mean([r["del_auc"] for r in records.values()]))
    return {"file": stem, "images": len(records), "insertion": ins, "deletion": dele, "ins_del": ins - dele}


def _write_summary(out: Path, rows: Sequence[dict]) -> None:
    lines = ["| model | method | images | Ins | Del | Ins-Del |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['method']} | {r['images']} | {r['insertion']:.4f} | {r['deletion']:.4f} | {r['ins_del']:.4f} |"
              for r in rows]
    with atomic_write(out / "summary.md") as f:
        f.write(("\n".join(lines) + "\n").encode())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["model", "method", "file", "images", "insertion", "deletion", "ins_del"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(out / "summary.csv") as f:
        f.write(buffer.getvalue().encode())
