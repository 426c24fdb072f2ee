"""Python API for notebooks and scripts.

    from pdsim import load_experiment, run_experiment
    exp = load_experiment("experiments/tiny.yaml", overrides=["workloads.chat.rate_scale=2"])
    result = run_experiment(exp, seed=7)
    result.summary.head()
"""

from __future__ import annotations

from pathlib import Path

from pdsim.config.load import LoadedExperiment, load_experiment_file
from pdsim.sim.runner import RunResult
from pdsim.sim.runner import run_experiment as _run


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> LoadedExperiment:
    """Load and validate an experiment YAML (``overrides`` as ``key.path=value`` strings)."""
    return load_experiment_file(path, overrides)


def run_experiment(exp: LoadedExperiment | str | Path, *, seed: int | None = None, jobs: int = 1) -> RunResult:
    """Simulate every deployment x workload pair; returns DataFrames (see ``RunResult``)."""
    if not isinstance(exp, LoadedExperiment):
        exp = load_experiment_file(exp)
    return _run(exp, seed=seed, jobs=jobs)
