"""Optional libraries of the ``[eval]`` extra (torchcam, Captum, SciPy, scikit-image), imported on
first use with one clear message when they are missing."""
from __future__ import annotations

import importlib

EVAL_HINT = "pip install polycam-explorer[eval]"


def require(module: str, what: str):
    """``module`` imported, or an ImportError saying that ``what`` needs its library and how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs {module.split('.')[0]}, which is not installed: {EVAL_HINT}") from exc
