"""Every YAML under experiments/ loads with the loader its kind takes and resolves (plans) without
error: a shipped experiment that a refactor broke fails here, not in a user's hands. Nothing is
simulated (fast); the experiments' results are in the README and docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdsim.config.load import load_experiment_file
from pdsim.sim.plan import plan_deployments

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))


def _kind(path: Path) -> str:
    text = path.read_text()
    if "\nsearch:" in text:
        return "search"
    if "\nmode:" in text:  # pdsim validate files say colocated or disaggregated
        return "validate"
    return "run"


def test_every_kind_is_present():
    kinds = {_kind(p) for p in EXPERIMENTS}
    assert {"run", "search", "validate"} <= kinds and len(EXPERIMENTS) >= 10


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_shipped_experiment_loads_and_plans(path):
    match _kind(path):
        case "search":
            from pdsim.search.config import load_search_file

            loaded = load_search_file(path)
            assert loaded.config.search.inventory
        case "validate":
            from pdsim.live.validate_experiment import load_validation_experiment

            exp = load_validation_experiment(path)
            assert exp.mode in ("colocated", "disaggregated")
        case _:
            exp = load_experiment_file(path)
            plans = plan_deployments(exp)
            assert len(plans) == len(exp.config.deployments) >= 1
            for plan in plans:
                assert plan.gpus >= 1 and plan.usd_per_hour > 0
                assert all(p.capacity_blocks >= 1 for p in plan.pools)
