"""Architecture adapters and offline loaders."""
from sparselm.models.adapters import (ModelAdapter, UnsupportedModelError, block_linears, get_adapter,
                                      register_adapter, supported_model_types)
from sparselm.models.loaders import ModelNotFoundError, bundled_names, load_model, register_loader
from sparselm.models.weights import is_prunable, set_weight_2d, weight_2d

__all__ = ["ModelAdapter", "UnsupportedModelError", "block_linears", "get_adapter", "register_adapter",
           "supported_model_types", "ModelNotFoundError", "bundled_names", "load_model", "register_loader",
           "is_prunable", "set_weight_2d", "weight_2d"]
