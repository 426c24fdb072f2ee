"""Model architectures (pure domain ring): shapes, parameter counts, KV bytes per token."""

from pdsim.models.arch import ModelSpec, load_model_catalog, model_from_hf_config

__all__ = ["ModelSpec", "load_model_catalog", "model_from_hf_config"]
