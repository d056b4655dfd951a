"""Command line: ``polycam-explorer explain|generate|evaluate|index|serve``: parsing, and errors
printed as one line with exit status 2."""
from __future__ import annotations

import argparse
import glob
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

import torch

from . import render
from .cache import default_batch_size
from .explain import explain
from .layers import LAYER_RULES
from .models import load_model
from .kernels import MAX_KERNELS
from .serve import CULL_AFTER_S, serve

SAMPLES = Path(__file__).parent / "data"


def _say(line: str) -> None:
    """A line printed above a running progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(line)


class UsageError(ValueError):
    """A command line the parser refuses; :func:`main` prints it and returns 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would exit; main() reports it as any other error
        raise UsageError(f"{message} (see {self.prog} --help)")


def _int_at_least(low: int, high: int | None = None):
    """An argparse type: an int in ``low..high``, refused with the accepted range otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            accepted = f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}")
        return value
    parse.__name__ = "integer"
    return parse


def _text(text: str) -> str:
    """An argparse type: a name or path that is not empty (``--out "$UNSET"`` would be the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must not be empty, got {text!r}")
    return text

POSITIVE = _int_at_least(1)
SIZE = _int_at_least(8)  # load_image's smallest size
PORT = _int_at_least(1, 65535)


def _backend_argument(p: argparse.ArgumentParser) -> None:
    from .backends import BACKENDS

    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="how forward passes run: auto (fastest exact path), eager, channels_last, compile, "
                        "onnxruntime (needs the fast extra); every choice gives the same maps")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="polycam-explorer", description="Poly-CAM saliency maps (ICPR 2022).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("explain", help="top classes and a Poly-CAM overlay per variant and depth")
    p.add_argument("image", nargs="?", default=str(SAMPLES / "chelsea.jpg"), type=_text,
                   help="image file (jpg, png, ...); default: the bundled sample cat")
    p.add_argument("--out", required=True, type=_text, help="output folder")
    p.add_argument("--class", dest="class_spec", type=_text,
                   help="class index or name (default: the top prediction)")
    p.add_argument("--variant", choices=["+", "-", "+-", "±", "all"], default="all",
                   help="PCAM+, PCAM-, PCAM± or all three (default)")
    p.add_argument("--model", type=_text,
                   help="torchvision or timm model name (default: embedded EfficientNet-Lite0)")
    p.add_argument("--weights", type=_text,
                   help="local checkpoint path, or a torchvision weights name in the hub cache")
    p.add_argument("--layers", type=_text, help="comma-separated target layer names (default: discovered)")
    _layer_rule_argument(p)
    _backend_argument(p)
    p.add_argument("--batch-size", type=POSITIVE, help="images per forward pass (default: 64 on a GPU, 16 on a CPU)")
    p.add_argument("--size", type=SIZE, help="resize the image to SIZE x SIZE (default: the model's input size)")
    p.add_argument("--cmap", default="turbo", choices=render.COLORMAPS,
                   help="colour map of the overlays (default: turbo)")
    p.add_argument("--save-mapset", action="store_true", help="also write the map set (.npz, fp16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-preview", action="store_true",
                   help="no first picture: by default IMAGE_preview.png shows an estimate of depth 1 within "
                        "seconds, refreshed as the sweep goes on, and is removed when the exact maps are written")
    g = sub.add_parser("generate", help="saliency npz files for a folder of images (the authors' layout)")
    _dataset_arguments(g)
    g.add_argument("--methods", default="pcam+,pcam-,pcam+-",
                   help="comma-separated: pcam+, pcam-, pcam+- and the baselines (gradcam, scorecam, rise, ...)")
    g.add_argument("--all-depths", action="store_true", help="also one npz per PCAM depth (name suffix 0..L-1)")
    g.add_argument("--save-mapsets", action="store_true", help="also keep each image's map set (fp16 npz)")
    e = sub.add_parser("evaluate", help="insertion / deletion of saliency npz files, csv per method, summary")
    _dataset_arguments(e)
    e.add_argument("--npz", nargs="+", type=_text, help="npz files or folders (default: OUT/<model>_*.npz)")
    e.add_argument("--n-steps", type=POSITIVE, default=224, help="insertion / deletion steps")
    e.add_argument("--images-per-batch", type=POSITIVE, default=4, help="images whose samples share forward batches")
    s = sub.add_parser("serve", help="open the interactive explorer in the browser (Voila)")
    s.add_argument("images", nargs="*", type=_text, help="image files (default: the bundled samples)")
    s.add_argument("--model", type=_text,
                   help="torchvision or timm model name (default: embedded EfficientNet-Lite0)")
    s.add_argument("--weights", type=_text,
                   help="local checkpoint path, or a torchvision weights name in the hub cache")
    s.add_argument("--port", type=PORT, default=8866, help="port on 127.0.0.1 (the next free one if taken)")
    s.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    s.add_argument("--idle-kernel-timeout", type=POSITIVE, default=CULL_AFTER_S, metavar="SECONDS",
                   help="shut down a closed page's kernel (and its work) after SECONDS (default: 120)")
    s.add_argument("--max-kernels", type=POSITIVE, default=MAX_KERNELS, metavar="N",
                   help=f"serve at most N pages (kernels) at once; a closed page's kernel makes room "
                        f"(default: {MAX_KERNELS})")
    s.add_argument("--atlas", metavar="DIR", type=_text,
                   help="serve the dataset atlas of DIR's map sets instead (DIR is indexed first when it has no "
                        "index; --model: their model)")
    s.add_argument("--compare", metavar="DIR2", type=_text,
                   help="with --atlas: another model's map sets of the same images, side by side, sorted by how "
                        "much the maps disagree")
    _backend_argument(s)
    _index_arguments(sub)
    return parser


def _index_arguments(sub) -> None:
    i = sub.add_parser("index", help="index a folder of map sets for the atlas (incremental)")
    i.add_argument("folder", type=_text, help="folder of *.mapset.npz files (searched recursively)")
    i.add_argument("--labels", type=_text, help="csv of image,label rows, or 'folders' for class-named subfolders "
                                    "(default: the labels of the previous build)")
    i.add_argument("--report", metavar="FILE.html", type=_text,
                   help="then write a self-contained HTML report of every indexed map set (to share)")
    i.add_argument("--no-progress", action="store_true", help="no progress bar")


def _index(args: argparse.Namespace) -> None:
    from .atlas import build_index

    index = build_index(args.folder, labels=args.labels, progress=not args.no_progress)
    report = index.last_build
    print(f"{args.folder}: {report.summary()}")
    for file, reason in report.skipped_files.items():
        print(f"  skipped {file}: {reason}")
    with index:
        for model_id, name, count in index.models():
            print(f"  model {name} ({model_id}): {count} map sets")
        if args.report:
            from tqdm.auto import tqdm

            from .atlas.report import write_report

            rows = index.rows()
            with tqdm(total=len(rows), desc="atlas report", unit="image", disable=args.no_progress) as bar:
                path = write_report(index, rows, args.report, progress=lambda done, _total: bar.update(done - bar.n))
            print(f"report: {path}")


def _layer_rule_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer-rule", choices=LAYER_RULES,
                   help="how layers are discovered (default: the model's; main-path is ALGORITHM.md's rule)")


def _dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=_text,
                   help="torchvision or timm model name (default: embedded EfficientNet-Lite0)")
    p.add_argument("--weights", type=_text,
                   help="local checkpoint path, or a torchvision weights name in the hub cache")
    p.add_argument("--images", required=True, type=_text, help="folder of images")
    p.add_argument("--list", dest="list_file", type=_text, help="file listing the images to use, one per line")
    p.add_argument("--out", required=True, type=_text, help="output folder")
    p.add_argument("--size", type=SIZE, help="resize images to SIZE x SIZE (default: the model's input size)")
    _layer_rule_argument(p)
    _backend_argument(p)
    p.add_argument("--batch-size", type=POSITIVE, help="images per forward pass (default: 64 on a GPU, 16 on a CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _npz_files(args: argparse.Namespace, model_name: str) -> list[Path]:
    from .runs import file_label

    from .evaluation import names_model

    model_name = file_label(model_name)
    if not args.npz:  # vgg16_bn_pcamp.npz is vgg16_bn's, not vgg16's
        files = sorted(f for f in Path(args.out).glob(f"{glob.escape(model_name)}_*.npz")
                       if names_model(f.stem, model_name))
    else:
        files = []
        for item in map(Path, args.npz):
            files += sorted(item.glob("*.npz")) if item.is_dir() else [item]
    if not files:
        raise ValueError(f"no saliency npz files to evaluate (looked for {model_name}_*.npz in {args.out}); "
                         "run polycam-explorer generate first or pass --npz")
    return files


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a job scheduler's stop, a closed terminal), raised where the command is
    so that it stops as Ctrl-C does: temporary files and the preview removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, _frame) -> None:
    raise Stopped(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status: 0, 2 for an error (printed as
    ``polycam-explorer: error: ...``), 130 when interrupted (Ctrl-C), 128 + N when stopped by
    signal N (SIGTERM: 143, SIGHUP: 129), which stops the command as Ctrl-C does."""
    stops = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {}
    try:  # a signal the caller ignores (nohup: SIGHUP) stays ignored
        previous = {s: signal.signal(s, _stop) for s in stops if signal.getsignal(s) == signal.SIG_DFL}
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        return _run(argv)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run(argv: Sequence[str] | None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        if args.command in ("explain", "generate", "evaluate"):
            from .runs import writable_folder

            writable_folder(args.out, "--out")  # before loading the model, before any sweep
        if args.command == "explain":
            variants = ("+", "-", "+-") if args.variant == "all" else ("+-" if args.variant == "±" else args.variant,)
            report = explain(args.image, args.out, class_spec=args.class_spec, variants=variants,
                             model_name=args.model, weights=args.weights,
                             layers=args.layers.split(",") if args.layers else None,
                             batch_size=args.batch_size, size=args.size, cmap=args.cmap,
                             save_mapset=args.save_mapset, progress=not args.no_progress,
                             layer_rule=args.layer_rule, backend=args.backend,
                             preview=None if args.no_preview else _say)
            for entry in report["top5"]:
                print(f"{entry['probability']:.3f}  {entry['index']:>4}  {entry['name']}")
            print(f"explained: {report['explained_name']} -> {args.out}")
        elif args.command in ("generate", "evaluate"):
            from . import evaluation

            model = load_model(args.model, args.weights, layer_rule=args.layer_rule)
            device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
            model.to(device)
            size = (args.size, args.size) if args.size else None
            batch = args.batch_size or default_batch_size(device)
            if args.command == "generate":
                for path in evaluation.generate(model, args.images, args.methods.split(","), args.out,
                                                list_file=args.list_file, size=size, batch_size=batch,
                                                all_depths=args.all_depths, save_mapsets=args.save_mapsets,
                                                progress=not args.no_progress, backend=args.backend):
                    print(path)
            else:
                rows = evaluation.evaluate(model, args.images, _npz_files(args, model.name), args.out,
                                           list_file=args.list_file, size=size, n_steps=args.n_steps,
                                           batch_size=batch,
                                           images_per_batch=args.images_per_batch, progress=not args.no_progress,
                                           backend=args.backend)
                if rows is not None:
                    print((Path(args.out) / "summary.md").read_text())
        elif args.command == "index":
            _index(args)
        elif args.command == "serve":
            return serve(args.images, model_name=args.model, weights=args.weights, port=args.port,
                         open_browser=not args.no_browser, backend=args.backend,
                         idle_kernel_timeout=args.idle_kernel_timeout, max_kernels=args.max_kernels,
                         atlas=args.atlas, compare=args.compare)
    except (ValueError, TypeError) as exc:
        print(f"polycam-explorer: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a folder that became unwritable, ...
        print(f"polycam-explorer: error: {_os_error(exc, args)}{_kept(args)}", file=sys.stderr)
        return 2
    except Stopped as exc:
        print(f"polycam-explorer: stopped by {exc}{_kept(args)}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"polycam-explorer: interrupted{_kept(args)}", file=sys.stderr)
        return 130
    return 0


def _os_error(exc: OSError, args: argparse.Namespace | None) -> str:
    """The error, saying so plainly when the output's disk is full (a short write has no errno)."""
    import errno
    import shutil

    out = getattr(args, "out", None)
    try:
        full = exc.errno == errno.ENOSPC or (out is not None and shutil.disk_usage(out).free < 2 ** 20)
    except OSError:
        full = False
    if full:
        return f"{os.strerror(errno.ENOSPC)} for {out} ({exc}): free some space"
    return str(exc)


def _kept(args: argparse.Namespace | None) -> str:
    """What a stopped command leaves behind (every file is written atomically: none is half-written)."""
    command = getattr(args, "command", None)
    if command in ("generate", "evaluate"):
        return (f"; finished images are kept under {Path(args.out) / '.parts'} and a rerun of the same "
                "command resumes from them")
    if command == "explain":
        return (f"; files already in {args.out} are complete but the set may not be: rerun to "
                "write all of it")
    return ""


if __name__ == "__main__":
    sys.exit(main())
