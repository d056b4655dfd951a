"""``polycam-explorer serve``: the explorer app in Voila, on 127.0.0.1, offline; a closed page's
kernel is shut down, the URL printed is the one served."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence


def app_notebook(images: Sequence[str], folder: Path, *, model_name: str | None = None,
                 weights: str | None = None, backend: str = "auto") -> Path:
    """Write the notebook that Voila serves: the explorer on ``images`` (the samples if none)."""
    import nbformat

    for image in images:
        if not Path(image).is_file():
            raise ValueError(f"image file {image!r} does not exist")
    paths = [str(Path(i).resolve()) for i in images] or None
    model = "None" if model_name is None else f"pe.load_model({model_name!r}, weights={weights!r})"
    code = ("import polycam_explorer as pe\n"
            f"explorer = pe.explore({paths!r}, model={model}, backend={backend!r})\n"
            "explorer")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "polycam_explorer_app.ipynb"
    nbformat.write(nb, path)
    return path


CULL_AFTER_S = 120  # seconds a page's kernel outlives the page


def serve(images: Sequence[str], *, model_name: str | None = None, weights: str | None = None,
          port: int = 8866, open_browser: bool = True, backend: str = "auto",
          idle_kernel_timeout: int = CULL_AFTER_S) -> int:
    """Open the explorer app in Voila (blocks until Voila stops). The kernel of a page that is
    closed or reloaded is shut down, with its work, ``idle_kernel_timeout`` seconds after its last
    connection went; the next free port from ``port`` on is used and printed."""
    import signal
    import subprocess
    import tempfile

    port = free_port(port)
    # exports land where the user started serve, not in the served notebook's temporary folder
    env = dict(os.environ)
    env.setdefault("POLYCAM_EXPLORER_EXPORTS", str(Path.cwd().resolve() / "polycam_exports"))
    # our Voila template (jupyter/voila/templates/polycam): the lab page without CDN requests
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent / "jupyter"),
                                                        env.get("JUPYTER_PATH")]))
    with tempfile.TemporaryDirectory(prefix="polycam-explorer-") as folder:
        notebook = app_notebook(images, Path(folder), model_name=model_name, weights=weights, backend=backend)
        command = [sys.executable, "-m", "voila", str(notebook), f"--port={port}", "--Voila.ip=127.0.0.1",
                   "--Voila.port_retries=0", "--template=polycam",
                   # the kernel of a closed or reloaded page (no connection left) is shut down, with
                   # its sweeps (threads: the kernel itself is idle): it does not run until serve stops
                   f"--MappingKernelManager.cull_idle_timeout={idle_kernel_timeout}",
                   f"--MappingKernelManager.cull_interval={max(1, min(30, idle_kernel_timeout // 2))}",
                   "--MappingKernelManager.cull_connected=False"]
        if not open_browser:
            command.append("--no-browser")
        print(f"polycam-explorer: serving the explorer at http://127.0.0.1:{port}/ (Ctrl-C stops it); "
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
