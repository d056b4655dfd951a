"""``polycam-explorer serve``: the explorer app (or, with ``--atlas``, the dataset atlas) in Voila,
on 127.0.0.1, offline; a closed page's kernel is shut down, the URL printed is the one served."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

from .kernels import MAX_KERNELS, voila_arguments


def app_notebook(images: Sequence[str], folder: Path, *, model_name: str | None = None,
                 weights: str | None = None, backend: str = "auto") -> Path:
    """Write the notebook that Voila serves: the explorer on ``images`` (the samples if none).

    Raises:
        ValueError: an image that is missing, a folder, or not an image file (naming it and the
            formats accepted), before anything is served.
    """
    from .images import open_image

    for image in images:
        open_image(image)  # decoded here once: a bad file is refused now, not in the served page
    paths = [str(Path(i).resolve()) for i in images] or None
    return _one_cell(folder, f"explorer = pe.explore({paths!r}, model={_model_code(model_name, weights)}, "
                             f"backend={backend!r})\nexplorer")


def atlas_notebook(atlas: str, folder: Path, *, compare: str | None = None, model_name: str | None = None,
                   weights: str | None = None) -> Path:
    """Write the notebook that Voila serves for ``serve --atlas``: ``pe.Atlas`` on the folder
    (and ``compare``'s), the model given to its explorer only when named."""
    a = str(Path(atlas).resolve())
    b = None if compare is None else str(Path(compare).resolve())
    return _one_cell(folder, f"atlas = pe.Atlas({a!r}, compare={b!r}, model={_model_code(model_name, weights)})"
                             "\natlas")


def _model_code(model_name: str | None, weights: str | None) -> str:
    return "None" if model_name is None else f"pe.load_model({model_name!r}, weights={weights!r})"


def _one_cell(folder: Path, code: str) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import polycam_explorer as pe\n" + code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "polycam_explorer_app.ipynb"
    nbformat.write(nb, path)
    return path


def index_atlas_folders(folders: dict[str, str | None]) -> None:
    """Open each atlas folder's index (option name -> folder; None skipped), building it first,
    with a progress bar and a summary printed, when the folder has none.

    Raises:
        ValueError: a folder that does not exist, or holds no map set.
    """
    from .atlas.selection import open_or_build

    for option, folder in folders.items():
        if folder is None:
            continue
        if not Path(folder).is_dir():
            raise ValueError(f"{option} {folder!r} is not a folder of map sets (*.mapset.npz)")
        index = open_or_build(folder, progress=True)
        try:
            if index.last_build is not None:
                print(f"polycam-explorer: indexed {folder}: {index.last_build.summary()}", flush=True)
            else:
                print(f"polycam-explorer: {folder}: {len(index)} map sets in its index (`polycam-explorer index "
                      f"{folder}` brings it up to date)", flush=True)
            if len(index) == 0:
                raise ValueError(f"{option} {folder!r} holds no map set (*.mapset.npz): make some with "
                                 "`polycam-explorer generate --save-mapsets`")
        finally:
            index.close()


CULL_AFTER_S = 120  # seconds a page's kernel outlives the page
# the lab extensions the app's page loads: its widgets' own; any other installed (notebook 7's,
# a user's) stays out of the page, where it can fail (notebook 7's does, in Voila's page)
PAGE_EXTENSIONS = ("@voila-dashboards/widgets-manager8", "@jupyter-widgets/jupyterlab-manager",
                   "bqplot", "bqscales", "ipycanvas", "jupyterlab_pygments")


def serve(images: Sequence[str], *, model_name: str | None = None, weights: str | None = None,
          port: int = 8866, open_browser: bool = True, backend: str = "auto",
          idle_kernel_timeout: int = CULL_AFTER_S, max_kernels: int = MAX_KERNELS, atlas: str | None = None,
          compare: str | None = None) -> int:
    """Open the explorer app in Voila (blocks until Voila stops); with ``atlas`` (a folder of map
    sets, indexed first if it has no index) the dataset atlas instead, two models' side by side
    with ``compare``. The kernel of a page that is closed or reloaded is shut down, with its work,
    ``idle_kernel_timeout`` seconds after its last connection went, and at most ``max_kernels``
    pages (kernels) live at once (:mod:`polycam_explorer.kernels`); the next free port from
    ``port`` on is used and printed."""
    import signal
    import subprocess
    import tempfile

    if atlas is None and compare is not None:
        raise ValueError("--compare needs --atlas DIR (the first model's map sets)")
    if atlas is not None:
        if images:
            raise ValueError("give image files or --atlas DIR, not both")
        if compare is not None and model_name is not None:
            raise ValueError("--model is for one atlas folder: comparing two models, the explorer computes no curves")
        index_atlas_folders({"--atlas": atlas, "--compare": compare})
    port = free_port(port)
    # exports land where the user started serve, not in the served notebook's temporary folder
    env = dict(os.environ)
    env.setdefault("POLYCAM_EXPLORER_EXPORTS", str(Path.cwd().resolve() / "polycam_exports"))
    # our Voila template (jupyter/voila/templates/polycam): the lab page without CDN requests
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent / "jupyter"),
                                                        env.get("JUPYTER_PATH")]))
    with tempfile.TemporaryDirectory(prefix="polycam-explorer-") as folder:
        if atlas is None:
            notebook = app_notebook(images, Path(folder), model_name=model_name, weights=weights, backend=backend)
        else:
            notebook = atlas_notebook(atlas, Path(folder), compare=compare, model_name=model_name, weights=weights)
        command = [sys.executable, "-m", "voila", str(notebook), f"--port={port}", "--Voila.ip=127.0.0.1",
                   "--Voila.port_retries=0", "--template=polycam",
                   *voila_arguments(max_kernels, idle_kernel_timeout),
                   *(f"--VoilaConfiguration.extension_allowlist={name}" for name in PAGE_EXTENSIONS)]
        if not open_browser:
            command.append("--no-browser")
        print(f"polycam-explorer: serving the {'explorer' if atlas is None else 'atlas'} at "
              f"http://127.0.0.1:{port}/ (Ctrl-C stops it); "
              f"exports go to {env['POLYCAM_EXPLORER_EXPORTS']}", flush=True)
        voila = subprocess.Popen(command, env=env)
        # a SIGTERM to this process stops Voila (and its kernels) too, as Ctrl-C does
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return voila.wait()
        except KeyboardInterrupt:
            voila.terminate()
            try:
                return voila.wait(timeout=20)
            except subprocess.TimeoutExpired:
                voila.kill()
                return voila.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)


def free_port(port: int, tries: int = 50) -> int:
    """``port`` if nothing listens on it on 127.0.0.1, else the next free one (the URL printed is
    the one served).

    Raises:
        ValueError: none of ``tries`` ports from ``port`` on is free.
    """
    import socket

    for candidate in range(port, min(port + tries, 65536)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise ValueError(f"ports {port}..{port + tries - 1} on 127.0.0.1 are all taken: give another --port")


def _interrupt(*_) -> None:
    raise KeyboardInterrupt
