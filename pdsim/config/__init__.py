"""Experiment configuration (edge ring): pydantic schema, YAML loading, ``--set`` overrides."""

from pdsim.config.load import LoadedExperiment, apply_overrides, load_experiment_file
from pdsim.config.schema import Experiment

__all__ = ["Experiment", "LoadedExperiment", "apply_overrides", "load_experiment_file"]
