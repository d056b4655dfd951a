"""A dataset run's files and processes, shared by ``generate`` and ``evaluate``: the image list,
injective part names that carry a hash of every setting, atomic part writes, clean-up of what an
interrupted run left, and this process's rank in a ``torchrun`` job."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import posixpath
import re
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

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
    (the authors' ``images.txt``; a name is written as ``posixpath.normpath`` writes it, so
    ``./a.png`` and ``a//b.png`` are ``a.png`` and ``a/b.png``, and a file listed twice counts
    once), or every image file in ``folder``, sorted.

    Raises:
        ValueError: a missing folder, list or listed file, a list that is not UTF-8 text (a byte-order
            mark is allowed), a listed name that leaves ``folder``
            (absolute, or with a ``..`` part), a file name that is not UTF-8 (it cannot be a key of
            the npz files nor a csv row), files that do not open as images (all named at once,
            before any work), or no images.
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
        names = list(dict.fromkeys(posixpath.normpath(n) for n in names))  # one file, one name
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ValueError(f"{len(missing)} listed images are not in {str(folder)!r}, e.g. {missing[:3]}")
    else:
        names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not names:
        raise ValueError(f"no images in {str(folder)!r} (accepted: {sorted(IMAGE_SUFFIXES)})")
    undecodable = [n for n in names if re.search("[\udc80-\udcff]", n)]  # not UTF-8: lone surrogates
    if undecodable:
        raise ValueError(f"{len(undecodable)} image file names in {str(folder)!r} are not UTF-8 text, e.g. "
                         f"{[os.fsencode(n) for n in undecodable[:3]]}: rename them (a name is the key of its "
                         "maps in the npz files and its row in the csv files)")
    if META_KEY in names:
        raise ValueError(f"an image may not be named {META_KEY!r}: that name is reserved for the metadata of "
                         "the saliency npz files; rename it")
    unreadable = {n: reason for n in names if (reason := _unreadable(folder / n))}
    if unreadable:
        raise ValueError(f"{len(unreadable)} of the {len(names)} images in {str(folder)!r} cannot be read: "
                         + "; ".join(f"{n!r}: {r}" for n, r in list(unreadable.items())[:5])
                         + " (accepted: files Pillow opens); remove or replace them")
    return names


def _unreadable(path: Path) -> str | None:
    """Why ``path`` does not open as an image (its header: format and size, read without decoding the
    pixels, PIL's decompression-bomb limit included), or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if Image.MAX_IMAGE_PIXELS and im.width * im.height > Image.MAX_IMAGE_PIXELS:
                return f"{im.width} x {im.height} pixels, over PIL's limit of {Image.MAX_IMAGE_PIXELS}"
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, DecompressionBombError...
        return f"{type(exc).__name__}: {exc}" if path.stat().st_size else "an empty file (0 bytes)"
    return None


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


class Refused(ValueError):
    """A saliency npz refused before its maps are read (the message names the file and why)."""


MAX_MAP_BYTES = 2 ** 30  # the largest map read from a saliency npz (a 16384 x 16384 float32 map is 1 GiB)


def check_member_sizes(archive: zipfile.ZipFile, keys: Sequence[str], what: str) -> None:
    """Refuse (:class:`Refused`, naming the file, array and size) an npz whose arrays ``keys`` would each
    decompress to more than :data:`MAX_MAP_BYTES` (as its zip directory says, which bounds the read)."""
    sizes = {info.filename: info.file_size for info in archive.infolist()}
    for key in keys:
        size = sizes.get(f"{key}.npy", sizes.get(key, 0))
        if size > MAX_MAP_BYTES:
            raise Refused(f"{what!r}: the map {key!r} is {size} bytes uncompressed, over the {MAX_MAP_BYTES} bytes "
                          "a saliency map can take (16384 x 16384 float32): not a saliency npz of images")


META_TYPES = {"model": str, "model_id": str, "method": str, "images": int, "image_sha256": dict}


def read_metadata(raw: np.ndarray, what: str) -> dict:
    """The metadata of a saliency npz (its :data:`META_KEY` array: a JSON object as ``generate``
    writes it), checked field by field.

    Raises:
        Refused: naming the file and the field, when it is not JSON, not an object, or a field
            (``model``, ``model_id``, ``method``, ``images``, ``image_sha256``, ``size``) is of another type.
    """
    try:
        meta = json.loads(str(raw)) if raw.ndim == 0 and raw.dtype.kind == "U" else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise Refused(f"{what!r}: its metadata ({META_KEY!r}) is not the JSON object generate writes: the file was "
                      "changed or damaged; generate the maps again")
    wrong = [k for k, kind in META_TYPES.items() if k in meta and (type(meta[k]) is not kind)]
    shas = meta.get("image_sha256", {})
    if isinstance(shas, dict) and not all(isinstance(v, str) for v in shas.values()):
        wrong.append("image_sha256")
    size = meta.get("size", 0)
    if not (size == 0 and type(size) is int or isinstance(size, list) and len(size) == 2
            and all(type(v) is int and v >= 1 for v in size)):
        wrong.append("size")
    if wrong:
        raise Refused(f"{what!r}: its metadata fields {wrong} are not what generate writes (model, model_id, method: "
                      "text; images: an integer; image_sha256: image name -> SHA-256; size: [H, W] or 0): the file "
                      "was changed or damaged; generate the maps again")
    return meta


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


def publish_mapsets(out: Path, parts: dict[str, Path]) -> None:
    """Each image's map set at :func:`mapset_file` (a hard link to its part, or a copy) and an index."""
    import shutil

    index = {}
    for name, part in parts.items():
        if not part.is_file():
            raise RuntimeError(f"no map set of {name!r}: a rank did not finish")
        target = mapset_file(out, name)
        index[name] = target.name
        if target.is_file() and os.path.samefile(part, target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.link.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(part, tmp)
            os.replace(tmp, target)
        except OSError:
            tmp.unlink(missing_ok=True)
            with atomic_write(target) as f, open(part, "rb") as src:
                shutil.copyfileobj(src, f)
    with atomic_write(out / "mapsets" / "index.json") as f:
        f.write(json.dumps(index, indent=1).encode())


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


@contextlib.contextmanager
def claimed(out: Path) -> Iterator[None]:
    """Hold the folder ``out`` for one run: an exclusive ``flock`` on the folder itself (no lock
    file is left behind). Another run writing into ``out`` (``explain``, ``generate``,
    ``evaluate``; another process or thread) waits until this one ends, saying so on stderr, so
    two runs never mix their files nor remove each other's temporary files. Where the file system
    has no locks (or there is no ``fcntl``) runs are not held apart."""
    try:
        import fcntl
    except ImportError:  # not on a POSIX system
        yield
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"polycam-explorer: waiting for another run writing into {out} to finish", file=sys.stderr,
                  flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # no locks on this file system
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def start_run(out: str | os.PathLike, dist: Dist) -> Iterator[Path]:
    """``out`` for a dataset run, held (:func:`claimed`, by rank 0 for the whole job) from before its
    clean-up (what interrupted writes left) to the end of the run; no rank writes before that."""
    out = writable_folder(out)
    with claimed(out) if dist.rank == 0 else contextlib.nullcontext():
        if dist.rank == 0:
            remove_temporary(out)
        dist.barrier()
        yield out


def remove_results(out: Path, patterns: Sequence[str]) -> None:
    """Remove an earlier run's result files (glob patterns in ``out``, the first one first) just before
    this run writes its own: an interruption leaves the earlier run's results whole, or part of this
    run's and none of the earlier's, never a mix (a run that fails before its results keeps them)."""
    for pattern in patterns:
        for file in sorted(out.glob(pattern)):
            file.unlink(missing_ok=True)


def spreadsheet_safe(text: str) -> str:
    """``text`` as a csv cell that a spreadsheet shows as text: a leading ``'`` before one that starts
    with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (an image named ``=HYPERLINK(...).png``
    would otherwise be run as a formula when the csv is opened)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_text(rows: dict[str, Sequence[float]]) -> bytes:
    """pandas' ``DataFrame.from_dict(rows, orient='index').to_csv()`` layout, as the authors write
    (names made :func:`spreadsheet_safe`)."""
    width = len(next(iter(rows.values())))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([""] + list(range(width)))
    for name, values in rows.items():
        writer.writerow([spreadsheet_safe(name)] + [str(np.float32(v)) for v in values])
    return buffer.getvalue().encode()


SUMMARY_FILES = ("summary.md", "summary.csv")


def write_summary(out: Path, rows: Sequence[dict]) -> None:
    """``summary.md`` (a markdown table; ``|`` and line breaks in names escaped) and ``summary.csv``."""
    def cell(text: object) -> str:
        return re.sub(r"[\r\n]+", " ", str(text)).replace("|", "\\|")

    lines = ["| model | method | images | Ins | Del | Ins-Del |", "|---|---|---|---|---|---|"]
    lines += [f"| {cell(r['model'])} | {cell(r['method'])} | {r['images']} | {r['insertion']:.4f} | "
              f"{r['deletion']:.4f} | {r['ins_del']:.4f} |" for r in rows]
    with atomic_write(out / "summary.md") as f:
        f.write(("\n".join(lines) + "\n").encode())
    buffer = io.StringIO()
    fields = ["model", "method", "file", "images", "insertion", "deletion", "ins_del"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: spreadsheet_safe(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows])
    with atomic_write(out / "summary.csv") as f:
        f.write(buffer.getvalue().encode())
