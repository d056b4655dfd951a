"""Saving and loading map sets as one ``.npz`` file: plain arrays and a JSON header, no pickle.

Written to a temporary file beside the target, then renamed, so no half-written file is left.

Format version 2 (written now):

- ``header``: JSON text ``{format, version, layers, class_names, model_name, model_id, mean, std,
  probed, stats, dtype}``.
- ``image`` ``[1, C, H, W]`` and ``s0`` ``[N]``: always float32, so they round-trip exactly.
- ``act_l`` ``[K, h, w]``, ``splus_l`` ``[K, N]`` and ``sminus_l`` ``[K, N]`` (fp32 files) or
  ``dminus_l = s0 - S-`` (fp16 files: the PCAM- weights ``ReLU(s0 - S-)`` are often far smaller
  than the rounding step of ``S-`` near ``s0``).
- With ``fp16``, each of those arrays ``X`` is stored as float16 mantissas (array ``X``) plus int16
  exponents ``X_exp``, one per channel for activations and one per class for scores, and for
  activations a float32 offset ``X_off`` per channel (its minimum): ``X = X_off + X * 2 ** X_exp``.
  Each slice's largest magnitude (after the offset) lands in ``[2**14, 2**15)``, so nothing
  overflows fp16's 65504 and every value down to ``2**-29`` of its slice's largest stays a normal
  fp16 number (relative error <= ``2**-11``): huge activations, tiny activations and probabilities
  near 0 all keep their maps. The offset keeps channels that vary little around a large level
  (whose normalised maps would magnify fp16's rounding) exact to ``2**-12`` of their range; scores
  get none, so a zero weight stays exactly zero. (Plain fp16 casts turned values above 65504 into
  inf, hence NaN maps, and flushed values below 6.1e-5 to zero.) An array whose encoding would
  not come back finite is stored in float32 instead. Map sets holding NaN or inf are refused
  when saving.

Version 1 files (fp16 stored as plain casts, no exponents) are still read: fp32 ones exactly, fp16
ones with a ``RuntimeWarning`` (values beyond fp16's range may have been lost when written), and
any that hold inf or NaN are refused as corrupt. The disk cache (:mod:`polycam_explorer.cache`)
reads only the current version, so its maps never depend on which version wrote an entry.

Loading checks the header against one schema (types, lengths) and every array's dtype and shape
(none empty; ``s0``, ``S+`` and ``S-`` are probabilities, in [0, 1]) before building the map set; any fault is a ``ValueError`` naming the file: "not a
polycam-explorer map-set file" for other files, "corrupt map-set file" for damaged or edited ones,
and a refusal that says loading could run code for files holding pickled objects. An array whose
header claims more data than the file holds is corrupt before any memory is taken for it; a file
whose arrays would take more than an eighth of the memory available once decompressed (a zip bomb:
a small file inflating to gigabytes) is refused before any is read, and a file too large for the
memory is a ``ValueError`` too, not a ``MemoryError``. Saving runs the
same checks first, so a file that loading would refuse is never written.
"""
from __future__ import annotations

import json
import math
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import fp16_codec as codec
from . import mapset_schema as schema
from .files import atomic_write
from .probes import LayerScores

FORMAT = "polycam-explorer/mapset"
VERSION = 2
READS = (1, 2)  # format versions this code reads
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


# ----- saving ---------------------------------------------------------------------------------
def save_mapset(ms, path: str | os.PathLike, *, fp16: bool = False) -> None:
    """Write ``ms`` to ``path`` (compressed npz). ``fp16`` halves activations and scores (scaled per
    channel / per class, see the module docstring).

    Raises:
        ValueError: ``path`` does not end in ``.npz``; the map set holds NaN or infinite values, or
            names, statistics or normalisation that the file's header cannot hold (nothing is
            written: a file that loading would refuse is never written).
        OSError: the file cannot be written (nothing is left at ``path`` then).
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"map-set files end in .npz, got {str(path)!r}")

    header = {
        "format": FORMAT, "version": VERSION, "layers": ms.layers, "class_names": ms.class_names,
        "model_name": ms.model_name, "model_id": ms.model_id, "mean": list(ms.mean), "std": list(ms.std),
        "probed": ms.probed, "stats": ms.stats, "frame": list(ms.frame) if ms.frame is not None else None,
        "dtype": "float16" if fp16 else "float32",
    }
    try:  # never write a file that loading would refuse
        text = json.dumps(header, default=_plain)
        schema.check_header(json.loads(text))
    except (schema.Corrupt, TypeError, ValueError) as exc:
        raise ValueError(f"cannot save the map set to {str(path)!r}: {exc}") from None

    def f32(t: torch.Tensor, what: str) -> np.ndarray:
        x = t.detach().float().cpu().numpy()
        if not np.isfinite(x).all():
            raise ValueError(f"cannot save the map set to {str(path)!r}: {what} holds NaN or infinite "
                             "values, which would give wrong maps when loaded")
        return x

    arrays = {"image": f32(ms.image, "the image"), "s0": f32(ms.probs, "the probabilities s0")}
    s0 = arrays["s0"].astype(np.float64)
    stored = []
    for i, (layer, act) in enumerate(zip(ms.layers, ms.activations)):
        stored.append((f"act_{i}", f32(act, f"the activations of layer {layer!r}"), 0))
        if ms.probed[i]:
            s_plus, s_minus = ms.scores(i)
            expected = (act.shape[0] if act.dim() else 0, arrays["s0"].shape[0] if arrays["s0"].ndim else 0)
            shapes = (tuple(s_plus.shape), tuple(s_minus.shape))
            if shapes != (expected, expected):
                raise ValueError(f"cannot save the map set to {str(path)!r}: the scores (S+, S-) of layer "
                                 f"{layer!r} have shapes {shapes}, expected {expected} (channels, classes)")
            stored.append((f"splus_{i}", f32(s_plus, f"S+ of layer {layer!r}"), 1))
            minus = f32(s_minus, f"S- of layer {layer!r}")
            if fp16:
                stored.append((f"dminus_{i}", s0[None] - minus, 1))
            else:
                stored.append((f"sminus_{i}", minus, 1))
    for name, x, axis in stored:
        if fp16:
            offsets = codec.offsets_of(x) if name.startswith("act_") else None
            mantissas, exps = codec.encode(x, axis, offsets)
            if np.isfinite(codec.decode(mantissas, exps, axis, offsets)).all():
                arrays[name], arrays[f"{name}_exp"] = mantissas, exps
                if offsets is not None:
                    arrays[f"{name}_off"] = offsets
                continue
        arrays[name] = x.astype(np.float32)
    try:  # the arrays as loading will check them (shapes, dtypes, decoded values)
        _build(json.loads(text), arrays, VERSION)
    except schema.Corrupt as exc:
        raise ValueError(f"cannot save the map set to {str(path)!r}: {exc}") from None
    arrays["header"] = np.array(text)
    with atomic_write(path) as f:
        np.savez_compressed(f, **arrays)


def _plain(value):
    """JSON for NumPy and one-element torch scalars in the header (``stats`` may hold them)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"a {type(value).__name__} ({schema.short(value)}) cannot be stored in a map-set header")


# ----- loading --------------------------------------------------------------------------------
@dataclass
class Stored:
    """A map-set file's checked contents: :class:`MapSet`'s keyword arguments and each layer's
    scores (None for a layer not probed)."""

    fields: dict
    scores: list[LayerScores | None]


def check_device(device) -> torch.device:
    """``device`` as a torch.device (the CPU for None), or a ValueError saying what is accepted: a
    malformed name, the meta device, or one this machine does not have (checked before any reading)."""
    try:
        target = torch.device(device) if device is not None else torch.device("cpu")
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be a torch.device or a name like 'cpu' or 'cuda:0', got {device!r}") from exc
    if target.type == "meta":
        raise ValueError("device 'meta' cannot hold a map set: the meta device holds no values; give 'cpu' or a GPU")
    try:
        torch.empty(0, device=target)
    except (RuntimeError, AssertionError) as exc:  # no driver, no such GPU, a backend torch was built without
        raise ValueError(f"device {str(device)!r} is not available here ({str(exc).splitlines()[0]}); give 'cpu' "
                         f"or one of this machine's GPUs ({torch.cuda.device_count()} CUDA)") from None
    return target


def read_mapset(path: str | os.PathLike, *, model: nn.Module | None = None,
                layers: Sequence[str] | None = None, current_version_only: bool = False) -> Stored:
    """Read a map-set file; refuse files that are not ours, damaged, or made with another model.

    ``current_version_only`` refuses files of older format versions (the cache uses it).

    Raises:
        ValueError: unreadable, truncated, foreign, pickled or corrupt file; an unreadable format
            version; model or layers that do not match.
    """
    from .identity import model_fingerprint
    from .models import Classifier, as_classifier

    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise ValueError(f"{name!r} is a folder, not a map-set file")
    if not path.is_file():
        raise ValueError(f"map-set file {name!r} does not exist")
    arrays = _read_arrays(path)
    header = _read_header(path, arrays)
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in READS:
        raise ValueError(f"{name!r} has map-set format version {version!r}; this polycam-explorer reads "
                         f"version {' and '.join(map(str, READS))}")
    if current_version_only and version != VERSION:
        raise ValueError(f"{name!r} has the older map-set format version {version}; only version "
                         f"{VERSION} is accepted here")
    try:
        schema.check_header(header)
    except schema.Corrupt as exc:
        raise ValueError(f"corrupt map-set file {name!r}: {exc}") from None
    if model is not None:
        clf = as_classifier(model)
        if model_fingerprint(clf) != header["model_id"]:
            raise ValueError(f"{name!r} was made with model {header['model_name']!r} "
                             f"({header['model_id']}), not with the given {clf.name!r} "
                             f"({model_fingerprint(clf)}): recompute it with pe.compute_mapset")
        # the fingerprint covers the network; the preprocessing is the Classifier's (a bare network
        # has only guessed defaults, so it is compared only when a Classifier was given)
        if isinstance(model, Classifier) and not np.allclose(
                [*clf.mean, *clf.std], [*header["mean"], *header["std"]], rtol=0, atol=1e-6):
            raise ValueError(f"{name!r} was made with the normalisation mean={header['mean']}, "
                             f"std={header['std']}, not with the given model's mean={list(clf.mean)}, "
                             f"std={list(clf.std)}: recompute it with pe.compute_mapset")
    if layers is not None and list(layers) != header["layers"]:
        raise ValueError(f"{name!r} was made for layers {header['layers']}, not {list(layers)}")
    try:
        stored = _build(header, arrays, version)
    except schema.Corrupt as exc:
        raise ValueError(f"corrupt map-set file {name!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - anything else the contents provoke is corruption too
        raise ValueError(f"corrupt map-set file {name!r}: {type(exc).__name__}: {exc}") from exc
    if version == 1 and header["dtype"] == "float16":
        warnings.warn(f"{name!r} was written in map-set format version 1, whose fp16 storage lost values "
                      "beyond fp16's range (below 6.1e-5, above 65504); its maps may differ from the "
                      "computed ones: recompute it with pe.compute_mapset and save it again",
                      RuntimeWarning, stacklevel=3)
    return stored


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz file, refusing non-npz files and pickled objects before reading any."""
    name = str(path)
    not_ours = f"{name!r} is not a polycam-explorer map-set file"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ValueError(f"map-set file {name!r} cannot be read: {exc.strerror or exc}") from exc
    if not head:
        raise ValueError(f"{not_ours}: it is empty")
    if head.startswith(b"\x93NUMPY"):
        raise ValueError(f"{not_ours}: it holds a single NumPy array (.npy), not a map set (.npz)")
    if not head.startswith(b"PK"):
        raise ValueError(f"{not_ours}: it is not an .npz (zip) archive")
    try:
        with zipfile.ZipFile(path) as zf:
            members = {m[:-4] if m.endswith(".npy") else m: m for m in zf.namelist()}
            pickled, foreign, total = [], [], 0
            for key, member in members.items():
                with zf.open(member) as f:
                    try:
                        version = np.lib.format.read_magic(f)
                        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                  else np.lib.format.read_array_header_2_0)
                        shape, _, dtype = reader(f)
                    except ValueError:
                        foreign.append(key)
                        continue
                    held = zf.getinfo(member).file_size - f.tell()
                size = math.prod(shape) * dtype.itemsize
                if dtype.hasobject:
                    pickled.append(key)
                elif size > held:  # checked before any memory is taken
                    raise ValueError(f"corrupt map-set file {name!r}: the array {key!r} claims shape {shape} "
                                     f"({size} bytes) but its file holds {held} bytes")
                total += size
            if foreign:
                raise ValueError(f"{not_ours}: it is a zip archive whose members {foreign[:5]} are not "
                                 "NumPy arrays")
            if pickled:
                raise ValueError(f"{name!r} is refused: it holds pickled Python objects (arrays "
                                 f"{pickled[:5]}), and loading it could run code; polycam-explorer "
                                 "map-set files hold plain arrays only")
            budget = schema.memory_budget()  # a zip bomb: a small file whose arrays inflate to gigabytes
            if total > budget:
                raise MemoryError(f"its arrays take {total} bytes once decompressed; a map set may take at "
                                  f"most {budget} bytes here, an eighth of the memory available")
            if "header" not in members:
                listed = ", ".join(sorted(members)[:8]) or "none"
                raise ValueError(f"{not_ours}: it has no map-set header (its arrays: {listed})")
            arrays = {}
            for key, member in members.items():
                with zf.open(member) as f:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
            return arrays
    except MemoryError as exc:
        raise ValueError(f"map-set file {name!r} is too large to load in this memory ({exc})") from None
    except ValueError as exc:
        if str(exc).startswith((not_ours, f"{name!r} is refused", f"corrupt map-set file {name!r}")):
            raise
        raise ValueError(f"{name!r} is not a readable map-set file (truncated or damaged?): {exc}") from exc
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise ValueError(f"{name!r} is not a readable map-set file (truncated or damaged?): {exc}") from exc


def _read_header(path: Path, arrays: dict[str, np.ndarray]) -> dict:
    """The parsed header if the file is ours; which kind of error if not."""
    name = str(path)
    ours = {"s0", "image"} <= set(arrays)  # where the header cannot say, the arrays do
    raw = arrays.pop("header")
    problem = None
    if raw.dtype.kind != "U" or raw.ndim != 0:
        problem = f"its header is not text (an array of dtype {raw.dtype}, shape {raw.shape})"
    else:
        try:
            header = json.loads(str(raw))
        except (ValueError, RecursionError) as exc:
            problem = f"its header is not valid JSON ({type(exc).__name__}: {str(exc)[:80]})"
        else:
            if isinstance(header, dict):
                if header.get("format") != FORMAT:
                    raise ValueError(f"{name!r} is not a polycam-explorer map-set file (its header names "
                                     f"the format {schema.short(header.get('format'))})")
                return header
            problem = f"its header is a JSON {type(header).__name__}, not an object"
    if ours:
        raise ValueError(f"corrupt map-set file {name!r}: {problem}")
    raise ValueError(f"{name!r} is not a polycam-explorer map-set file: {problem}")


def _array(arrays: dict, name: str, ndim: int, axis: int | None, version: int) -> np.ndarray:
    """One stored array as float32, decoded from fp16 mantissas and exponents where so stored."""
    schema.need(name in arrays, f"the array {name!r} is missing: the file is incomplete")
    x = arrays[name]
    schema.need(x.dtype in _FLOATS, f"the array {name!r} has dtype {x.dtype}; map-set arrays are float16 or float32")
    schema.need(x.ndim == ndim, f"the array {name!r} has shape {x.shape}; expected {ndim} dimensions")
    if x.dtype == np.float16 and version >= 2 and axis is not None:
        exps = arrays.get(f"{name}_exp")
        schema.need(exps is not None, f"the fp16 array {name!r} lacks its exponents {name + '_exp'!r}")
        schema.need(exps.dtype.kind in "iu" and exps.shape == (x.shape[axis],),
              f"the exponents {name + '_exp'!r} must be {x.shape[axis]} integers, got dtype {exps.dtype}, "
              f"shape {exps.shape}")
        schema.need(exps.size == 0 or (codec.EXP_RANGE[0] <= exps.min() and exps.max() <= codec.EXP_RANGE[1]),
              f"the exponents {name + '_exp'!r} are out of range")
        offsets = arrays.get(f"{name}_off")
        schema.need(offsets is None or (offsets.dtype in _FLOATS and offsets.shape == (x.shape[axis],)),
              f"the offsets {name + '_off'!r} must be {x.shape[axis]} floats, got dtype "
              f"{getattr(offsets, 'dtype', None)}, shape {getattr(offsets, 'shape', None)}")
        x = codec.decode(x, exps, axis, offsets)
    else:
        x = x.astype(np.float32)
    schema.need(bool(np.isfinite(x).all()), f"the array {name!r} holds NaN or infinite values")
    return x


def _build(h: dict, arrays: dict, version: int) -> Stored:
    """The contents (on the CPU) of a header that passed the schema and arrays checked here."""

    image = _array(arrays, "image", 4, None, version)
    schema.check_image(image.shape, len(h["mean"]))
    s0 = _array(arrays, "s0", 1, None, version)
    n = len(h["class_names"])
    schema.need(s0.shape == (n,), f"s0 has {s0.shape[0]} probabilities for {n} class names")
    schema.check_probabilities("s0", s0)
    acts = [_array(arrays, f"act_{i}", 3, 0, version) for i in range(len(h["layers"]))]
    for i, act in enumerate(acts):
        schema.check_activations(f"act_{i}", act.shape)
    stored = Stored(fields=dict(image=torch.from_numpy(image), layers=h["layers"],
                                activations=[torch.from_numpy(a) for a in acts], s0=torch.from_numpy(s0),
                                class_names=h["class_names"], model_name=h["model_name"],
                                model_id=h["model_id"], mean=h["mean"], std=h["std"], stats=h["stats"],
                                frame=tuple(h["frame"]) if h.get("frame") else None),
                    scores=[None] * len(h["layers"]))
    for i, probed in enumerate(h["probed"]):
        if not probed:
            continue
        expected = (acts[i].shape[0], n)
        plus = _array(arrays, f"splus_{i}", 2, 1, version)
        if f"dminus_{i}" in arrays:  # fp16 files: s0 - S-
            minus = s0[None] - _array(arrays, f"dminus_{i}", 2, 1, version)
        else:
            minus = _array(arrays, f"sminus_{i}", 2, 1, version)
        for key, scores in (("S+", plus), ("S-", minus)):
            schema.need(scores.shape == expected, f"{key} of layer {h['layers'][i]!r} has shape {scores.shape}, "
                                            f"expected {expected} (channels, classes)")
            schema.check_probabilities(f"{key} of layer {h['layers'][i]!r}", scores)
        stored.scores[i] = LayerScores(torch.from_numpy(plus), torch.from_numpy(np.ascontiguousarray(minus)))
    return stored
