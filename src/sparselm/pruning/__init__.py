"""One-shot pruners (one module each, registered by name) and the sequential calibration driver."""
from sparselm.pruning import magnitude, sparsegpt, wanda  # noqa: F401  (registration side effects)
from sparselm.pruning.base import Pruner, get_pruner, pruner_names, register_pruner
from sparselm.pruning.calibration import CalibrationError, calibration_batches, read_text
from sparselm.pruning.driver import prune_model

__all__ = ["Pruner", "get_pruner", "pruner_names", "register_pruner", "CalibrationError", "calibration_batches",
           "read_text", "prune_model"]
