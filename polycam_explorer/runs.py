"""A dataset run's files and processes, shared by ``generate`` and ``evaluate``: the image list,
injective part names that carry a hash of every setting, atomic part writes, clean-up of what an
interrupted run left, and this process's rank in a ``torchrun`` job."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
META_KEY = "__polycam_explorer__"  # the metadata's key in a saliency npz: no image may have this name


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


def file_label(name: str) -> str:
    """A model name as it appears in file names: every character but letters, digits, ``.``, ``_``
    and ``-`` becomes ``_`` and leading dots go (``hf-hub:org/model`` -> ``hf-hub_org_model``,
    ``../x`` -> ``_x``), so a name never leads a path out of the output folder."""
    label = re.sub(r"[^A-Za-z0-9._-]", "_", str(name)).lstrip(".")[:100]
    return label or "model"


def writable_folder(path: str | os.PathLike, what: str = "out") -> Path:
    """``path`` as a folder that exists (created if needed) and can be written, checked before any work.

    Raises:
        ValueError: ``path`` (or a folder above it) is a file, or it cannot be created or written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file, not a folder: give a folder to write the results into")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".polycam-explorer-write-check.", suffix=".tmp", dir=path)
        os.close(fd)
        Path(probe).unlink(missing_ok=True)  # another rank's clean-up may have removed it
    except OSError as exc:
        raise ValueError(f"{what} {str(path)!r} cannot be written to ({exc.strerror or exc}): give a folder "
                         "that can be created and written") from None
    return path


def list_images(folder: str | os.PathLike, list_file: str | os.PathLike | None = None) -> list[str]:
    """Image file names (relative to ``folder``): the first word of each line of ``list_file``
    (the authors' ``images.txt``; a name listed twice counts once), or every image file in
    ``folder``, sorted.

    Raises:
        ValueError: a missing folder, list or listed file, a list that is not UTF-8 text (a byte-order
            mark is allowed), a listed name that leaves ``folder``
            (absolute, or with a ``..`` part), or no images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder {str(folder)!r} does not exist")
    if list_file is not None:
        if not Path(list_file).is_file():
            raise ValueError(f"image list {str(list_file)!r} does not exist")
        try:  # UTF-8, with or without the byte-order mark some editors write
            text = Path(list_file).read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(f"image list {str(list_file)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}): "
                             "save it as UTF-8, one image name per line") from None
        names = [line.split()[0] for line in text.splitlines() if line.strip()]
        outside = [n for n in names if os.path.isabs(n) or ".." in re.split(r"[/\\]", n)]
        if outside:
            raise ValueError(f"{len(outside)} entries of {str(list_file)!r} leave the image folder, e.g. "
                             f"{outside[:3]}: list paths relative to {str(folder)!r}, without '..'")
        names = list(dict.fromkeys(names))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ValueError(f"{len(missing)} listed images are not in {str(folder)!r}, e.g. {missing[:3]}")
    else:
        names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not names:
        raise ValueError(f"no images in {str(folder)!r} (accepted: {sorted(IMAGE_SUFFIXES)})")
    if META_KEY in names:
        raise ValueError(f"an image may not be named {META_KEY!r}: that name is reserved for the metadata of "
                         "the saliency npz files; rename it")
    return names


def digest(value: object) -> str:
    return hashlib.sha256(value if isinstance(value, bytes) else json.dumps(value).encode()).hexdigest()


def array_digest(array: np.ndarray) -> str:
    return digest(json.dumps([str(array.dtype), list(array.shape)]).encode() + np.ascontiguousarray(array).tobytes())


def input_size(size: object, model_size: tuple[int, int]) -> list[int] | int:
    """The size a run resizes its images to, as its metadata records it: ``[H, W]`` (``None``: the
    model's input size ``model_size``; an int ``n``: ``[n, n]``), or 0 for each image's own size."""
    if size is None:
        return [int(v) for v in model_size]
    if isinstance(size, (int, np.integer)):
        return 0 if size == 0 else [int(size)] * 2
    return [int(v) for v in size]


def check_made_from(meta: dict, what: str, size: object, model_size: tuple[int, int],
                    digests: dict[str, str]) -> None:
    """Refuse maps (metadata ``meta`` of the file ``what``) made at another input size than ``size``
    (both as :func:`input_size` reads them) or from other files than these images (``digests``: name
    -> :func:`image_digest`): scored here, they would be scored for a prediction they do not explain.

    Raises:
        ValueError: naming the file, the sizes or the images, and what to do.
    """
    made, run = input_size(meta.get("size"), model_size), input_size(size, model_size)
    if "size" in meta and made != run:
        raise ValueError(f"{what} holds maps made at input size {made}, but this run resizes the images to {run} "
                         "(0: their own size): give the size the maps were generated at (--size)")
    shas = meta.get("image_sha256") or {}
    other = [n for n, d in digests.items() if shas.get(n, d) != d]
    if other:
        raise ValueError(f"{what}: the maps of {len(other)} images, e.g. {other[:3]}, were made from other files of "
                         "those names, not the image files given here: generate the maps of these images again")


def image_digest(folder: str | os.PathLike, name: str) -> str:
    """The SHA-256 of an image file's bytes (recorded per image in a run's metadata)."""
    return digest((Path(folder) / name).read_bytes())


def _readable(image: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", image.replace("/", "__")).lstrip(".")[:80] or "image"


def part_path(out: Path, stem: str, image: str, key: str, suffix: str) -> Path:
    """One image's result: a readable stem and a hash of the image name and ``key`` (injective)."""
    return out / ".parts" / stem / f"{_readable(image)}-{digest([image, key])[:20]}{suffix}"


def mapset_file(out: str | os.PathLike, image: str) -> Path:
    """Where ``generate(save_mapsets=True)`` puts an image's map set (also listed in mapsets/index.json)."""
    return Path(out) / "mapsets" / f"{_readable(image)}-{digest(image)[:12]}.mapset.npz"


def remove_temporary(out: Path) -> None:
    """Remove what interrupted atomic writes left (``.NAME.XXXX.tmp``); never a finished file."""
    for folder in [out, out / "mapsets"] + [d for d in (out / ".parts").glob("*") if d.is_dir()]:
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def write_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()  # numpy's own file writes report a full disk as a bare "short write"
    np.save(buffer, array, allow_pickle=False)
    with atomic_write(path) as f:
        f.write(buffer.getvalue())


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A compressed npz of ``arrays`` under any names, written atomically (``np.savez_compressed``
    takes them as keyword arguments: an image named ``file`` clashed with its own argument, one
    named ``allow_pickle`` was silently taken as it)."""
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, array in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def progress_bar(total: int, desc: str, dist: Dist, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled or dist.rank != 0, unit="img")


def start_run(out: str | os.PathLike, dist: Dist) -> Path:
    out = writable_folder(out)
    if dist.rank == 0:
        remove_temporary(out)
    dist.barrier()  # no rank writes before rank 0 has cleaned up
    return out
