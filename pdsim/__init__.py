"""pdsim: a discrete-event simulator of LLM inference serving clusters.

Public API (see README):

    from pdsim import load_experiment, run_experiment
    exp = load_experiment("experiments/tiny.yaml")
    result = run_experiment(exp)
    result.requests   # pandas DataFrame, one row per request per deployment x workload
    result.summary    # pandas DataFrame, one row per deployment x workload
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_experiment", "run_experiment"]


def __getattr__(name: str):  # lazy, so `import pdsim` stays cheap
    if name in ("load_experiment", "run_experiment"):
        from pdsim import api

        return getattr(api, name)
    raise AttributeError(name)
