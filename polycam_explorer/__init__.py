"""polycam-explorer: Poly-CAM (Englebert et al., ICPR 2022) maps for every class, variant and
depth from one probe sweep, and an interactive explorer for them."""
from .cache import mapset_for
from .cancel import Cancelled
from .layers import LayerInfo, describe_layers
from .compute import compute_mapset, iter_mapset
from .mapset import MapSet
from .metrics import deletion, insertion
from .identity import model_fingerprint
from .images import load_image
from .models import Classifier, as_classifier, find_target_layers, load_model
from .probes import SweepCancelled

__version__ = "0.1.0"


def __getattr__(name: str):
    """``pe.Explorer``, ``pe.explore`` and ``pe.Atlas`` need the widget extra; import them on first use."""
    if name == "Explorer":
        from .explorer import Explorer
        return Explorer
    if name == "Atlas":  # the dataset atlas widget
        from .atlas.widget import Atlas
        return Atlas
    if name == "explore":
        from .explorer.explore import explore
        return explore
    if name == "atlas":  # the dataset index (SQLite), imported on first use
        import importlib

        return importlib.import_module(".atlas", __name__)
    raise AttributeError(f"module 'polycam_explorer' has no attribute {name!r}")


__all__ = [
    "Atlas", "Cancelled", "Classifier", "Explorer", "LayerInfo", "MapSet", "SweepCancelled", "as_classifier", "atlas",
    "compute_mapset", "deletion", "describe_layers", "explore", "find_target_layers", "insertion", "iter_mapset",
    "load_image", "load_model", "mapset_for", "model_fingerprint",
]
