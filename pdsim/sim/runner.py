"""Running an experiment: every deployment x workload pair, serially or in worker processes.

Determinism: one root seed. Each workload's random stream is
``SeedSequence(seed, spawn_key=(crc32(workload name),))``, so a workload's requests do not depend on
the order or number of other workloads, and each pair's simulation is deterministic given its plan,
requests and its own stream ``pair_seed(seed, deployment, workload)`` (random routers); running pairs
in several processes gives identical frames.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from pdsim.config.load import LoadedExperiment
from pdsim.metrics.records import requests_frame
from pdsim.metrics.summary import summarize, summarize_one
from pdsim.sim.cluster import simulate
from pdsim.sim.plan import DeploymentPlan, plan_deployments
from pdsim.workload.build import Workload, build_workload, planned_requests


def workload_seed(seed: int, name: str) -> np.random.SeedSequence:
    """The random stream of workload ``name`` under root ``seed``."""
    return np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()),))


def pair_seed(seed: int, deployment: str, workload: str) -> np.random.SeedSequence:
    """The simulation's random stream (random routers) for one deployment x workload pair.

    ``SeedSequence(seed, spawn_key=(crc32("simulate"), crc32(deployment), crc32(workload)))``: independent
    of the workload streams (different key length and tag) and of the order of the pairs.
    """
    key = tuple(zlib.crc32(s.encode()) for s in ("simulate", deployment, workload))
    return np.random.SeedSequence(seed, spawn_key=key)


@dataclass
class PairResult:
    deployment: str
    workload: str
    requests: pd.DataFrame
    instances: pd.DataFrame
    summary: dict
    latency_stats: dict
    wall_s: float


@dataclass
class RunResult:
    """Results of an experiment run, as DataFrames.

    Attributes:
        requests: ``pdsim.metrics.records.REQUEST_COLUMNS``, all pairs.
        summary: ``pdsim.metrics.summary.SUMMARY_COLUMNS``, one row per pair.
        instances: per-instance statistics of every pair.
        plans: the resolved deployments.
        workloads: the request frames (closed loop: ``ClosedLoopRequests``) by workload name.
        latency_stats: per pair, lookups and out-of-range lookups by role.
    """

    requests: pd.DataFrame
    summary: pd.DataFrame
    instances: pd.DataFrame
    plans: list[DeploymentPlan]
    workloads: dict[str, Workload]
    latency_stats: dict = field(default_factory=dict)
    wall_s: dict = field(default_factory=dict)


def run_pair(plan: DeploymentPlan, workload_name: str, workload: Workload, slo,
             on_request_end: Callable | None = None, seed: int = 0) -> PairResult:
    """Simulate one deployment under one workload and summarise it (random routers draw from
    ``pair_seed(seed, plan.name, workload_name)``)."""
    import time

    t0 = time.perf_counter()
    sim = simulate(plan, workload, on_request_end, seed=pair_seed(seed, plan.name, workload_name))
    wall = time.perf_counter() - t0
    df = requests_frame(sim.requests, plan.name, workload_name)
    out_of_range = sum(s["out_of_range"] for s in sim.latency_stats.values())
    row = {"deployment": plan.name, "workload": workload_name}
    sources = "+".join(sorted({k for pool in plan.pools for k in pool.latency_source_kinds}))
    row.update(summarize_one(df, kind=plan.kind, gpus=plan.gpus, usd_per_hour=plan.usd_per_hour, slo=slo,
                             out_of_range=out_of_range, latency_sources=sources))
    inst = sim.instances.assign(deployment=plan.name, workload=workload_name)
    return PairResult(plan.name, workload_name, df, inst, row, sim.latency_stats, wall)


def _run_pair_job(args):
    plan, name, workload, slo, seed = args
    return run_pair(plan, name, workload, slo, seed=seed)


def build_workloads(exp: LoadedExperiment, seed: int) -> dict[str, Workload]:
    """Request frames of every workload of the experiment."""
    return {
        name: build_workload(spec, exp.base_dir, workload_seed(seed, name))
        for name, spec in exp.config.workloads.items()
    }


def run_experiment(
    exp: LoadedExperiment,
    *,
    seed: int | None = None,
    jobs: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> RunResult:
    """Simulate every deployment x workload pair of ``exp``.

    Args:
        exp: the loaded experiment.
        seed: overrides the experiment's seed.
        jobs: worker processes (1 = in this process; results are identical either way).
        progress: called as ``progress(event, done, total)``; ``event`` is ``"request"`` (serial runs,
            every 500 requests and at the end of a pair) or ``"pair"``; ``total`` of ``"request"`` is
            None when a closed-loop workload is bounded by ``duration_s`` only (its count is an outcome).

    Raises:
        PdsimError: bad config, trace or profile (before anything is simulated).
    """
    seed = exp.config.seed if seed is None else seed
    plans = plan_deployments(exp)
    workloads = build_workloads(exp, seed)
    slo = exp.config.slo
    pairs = [(p, name, wl) for p in plans for name, wl in workloads.items()]
    counts = [planned_requests(wl) for _, _, wl in pairs]
    total_requests = None if None in counts else sum(counts)  # None: a closed loop bounded by duration only
    results: list[PairResult] = []
    if jobs > 1 and len(pairs) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(pairs), os.cpu_count() or 1)) as pool:
            for i, res in enumerate(pool.map(_run_pair_job, [(p, n, wl, slo, seed) for p, n, wl in pairs])):
                results.append(res)
                if progress:
                    progress("pair", i + 1, len(pairs))
    else:
        done = [0]

        def tick(_req):
            done[0] += 1
            if progress and done[0] % 500 == 0:
                progress("request", done[0], total_requests)

        for i, (plan, name, wl) in enumerate(pairs):
            results.append(run_pair(plan, name, wl, slo, tick, seed=seed))
            if progress:
                progress("request", done[0], total_requests)
                progress("pair", i + 1, len(pairs))
    return RunResult(
        requests=pd.concat([r.requests for r in results], ignore_index=True),
        summary=summarize([r.summary for r in results]),
        instances=pd.concat([r.instances for r in results], ignore_index=True),
        plans=plans,
        workloads=workloads,
        latency_stats={f"{r.deployment}|{r.workload}": r.latency_stats for r in results},
        wall_s={f"{r.deployment}|{r.workload}": r.wall_s for r in results},
    )
