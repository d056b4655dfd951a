"""polycam-explorer: Poly-CAM (Englebert et al., ICPR 2022) maps for every class, variant and
depth from one probe sweep, and an interactive explorer for them."""
from .layers import LayerInfo, describe_layers, find_target_layers
from .mapset import MapSet, compute_mapset, iter_mapset
from .metrics import deletion, insertion
from .models import Classifier, as_classifier, load_image, load_model, model_fingerprint
from .probes import SweepCancelled

__version__ = "0.1.0"

__all__ = [
    "Classifier", "LayerInfo", "MapSet", "SweepCancelled", "as_classifier", "compute_mapset",
    "deletion", "describe_layers", "find_target_layers", "insertion", "iter_mapset", "load_image", "load_model",
    "model_fingerprint",
]
