"""Wiring a deployment into SimPy: pools of instances, routers, KV links, the arrival process.

``simulate(plan, workload)`` runs one deployment under one workload and returns every request with
its timestamps, plus per-instance statistics. Every request ends either finished or rejected with a
reason; anything else raises ``InvariantViolation``.

KV transfer (disaggregated): when a prefill ends, the decode router picks a decode instance; that
instance reserves KV blocks for the prompt (first come, first served, when blocks are free: the
prefill instance keeps its blocks meanwhile, which back-pressures prefill admission), then the KV
moves over the prefill instance's egress port and the decode instance's ingress port, each a SimPy
resource of capacity 1 (transfers through one port are serialised, FIFO). Transfer time =
``link.latency_s + bytes / link bandwidth``. When it ends the prefill instance frees its blocks and the
request joins the decode batch. TTFT does not include the transfer: the prefill instance emits the
first token when prefill ends (as in Splitwise and DistServe); the transfer delays the second token
and so shows in TPOT, and is reported in its own column ``kv_transfer_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import simpy

from pdsim.core.kv import KVBlockManager
from pdsim.core.request import Phase, Request
from pdsim.errors import InvariantViolation
from pdsim.routing.routers import make_router
from pdsim.scheduling.batch import (
    ColocatedScheduler,
    Completion,
    DecodeOnlyScheduler,
    PrefillOnlyScheduler,
    SchedulerLimits,
)
from pdsim.sim.instance import DecodeInstance, Instance
from pdsim.sim.plan import DeploymentPlan, PoolPlan


@dataclass
class SimResult:
    """Output of one simulation.

    Attributes:
        requests: every request of the workload, in arrival order.
        instances: one row per instance (pool, role, iterations, busy time, peak KV blocks...).
        latency_stats: lookups and out-of-range lookups per pool.
        end_s: simulated time when the last request ended.
    """

    requests: list[Request]
    instances: pd.DataFrame
    latency_stats: dict
    end_s: float


def _scheduler_for(pool: PoolPlan, token_times: dict[int, list[float]] | None = None):
    kv = KVBlockManager(pool.capacity_blocks, pool.scheduler.block_size, pool.watermark_blocks)
    limits = SchedulerLimits(pool.scheduler.max_num_batched_tokens, pool.scheduler.max_num_seqs)
    match pool.role:
        case "colocated":
            scheduler = ColocatedScheduler(kv, limits)
        case "prefill":
            scheduler = PrefillOnlyScheduler(kv, limits)
        case "decode":
            scheduler = DecodeOnlyScheduler(kv, limits)
        case _:
            raise ValueError(pool.role)
    scheduler.token_times = token_times
    return scheduler


class _Runtime:
    """Live state of one simulated deployment."""

    def __init__(self, env: simpy.Environment, plan: DeploymentPlan, on_end: Callable[[Request], None],
                 token_times: dict[int, list[float]] | None = None):
        self.env = env
        self.plan = plan
        self.on_end = on_end
        self.latencies = []
        self.pools: list[list[Instance]] = []
        self.routers = []
        for pool in plan.pools:
            latency = pool.build_latency()
            self.latencies.append((pool.role, latency))
            members: list[Instance] = []
            for i in range(pool.instances):
                common = dict(
                    env=env, name=f"{pool.role}/{i}", index=i, scheduler=_scheduler_for(pool, token_times),
                    latency=latency, max_window=pool.scheduler.max_window_iterations,
                    on_completion=self._on_completion,
                )
                if pool.role == "decode":
                    members.append(DecodeInstance(start_transfer=self._start_transfer, **common))
                else:
                    members.append(Instance(**common))
            self.pools.append(members)
            self.routers.append(make_router(pool.config.router))
        if plan.link is not None:
            self.egress = [simpy.Resource(env, capacity=1) for _ in self.pools[0]]
            self.ingress = [simpy.Resource(env, capacity=1) for _ in self.pools[1]]

    # -- arrivals ------------------------------------------------------------------------------
    def submit(self, req: Request) -> None:
        reason = self.plan.reject_reason(req.prompt_tokens, req.output_tokens)
        if reason:
            req.phase = Phase.REJECTED
            req.reject_reason = reason
            self.on_end(req)
            return
        pool = self.pools[0]
        inst = pool[self.routers[0].choose(pool, self.env.now)]
        req.prefill_instance = inst.index
        if self.plan.kind == "colocated":
            req.decode_instance = inst.index
        inst.enqueue(req)

    # -- completions ---------------------------------------------------------------------------
    def _on_completion(self, inst: Instance, done: Completion, t_s: float) -> None:
        for req in done.finished:
            self.on_end(req)
        if done.handed_off:
            decode_pool = self.pools[1]
            router = self.routers[1]
            for req in done.handed_off:
                target = decode_pool[router.choose(decode_pool, t_s)]
                req.decode_instance = target.index
                req._ready_s = t_s  # prefill end: start of the wait for decode blocks
                target.offer(req)

    def _start_transfer(self, dst: DecodeInstance, req: Request) -> None:
        req.kv_transfer_wait_s = self.env.now - req._ready_s
        self.env.process(self._transfer(dst, req))

    def _transfer(self, dst: DecodeInstance, req: Request):
        env = self.env
        src = self.pools[0][req.prefill_instance]
        start = env.now
        nbytes = self.plan.kv_transfer_bytes(req.kv_tokens)
        with self.egress[src.index].request() as out_port:
            yield out_port
            with self.ingress[dst.index].request() as in_port:
                yield in_port
                yield env.timeout(self.plan.link.transfer_s(nbytes))
        req.kv_transfer_s = env.now - start
        src.scheduler.release(req)  # type: ignore[attr-defined]
        src.poke()
        dst.accept(req)


def simulate(
    plan: DeploymentPlan,
    workload: pd.DataFrame,
    on_request_end: Callable[[Request], None] | None = None,
    token_times: dict[int, list[float]] | None = None,
) -> SimResult:
    """Simulate ``plan`` serving ``workload`` (columns request_id, arrival_s, prompt_tokens, output_tokens).

    ``token_times``, when given, is filled with request id -> the time (s) of every token the request
    received, in order (after a preemption, the re-prefill gives the next token);
    per-token ITL percentiles come from it. Results are the same with or without it.

    Raises:
        InvariantViolation: a request neither finished nor was rejected, or KV accounting broke.
    """
    env = simpy.Environment()
    ids = workload["request_id"].to_numpy(dtype=np.int64)
    arrivals = workload["arrival_s"].to_numpy(dtype=np.float64)
    prompts = workload["prompt_tokens"].to_numpy(dtype=np.int64)
    outputs = workload["output_tokens"].to_numpy(dtype=np.int64)
    requests: list[Request] = []
    ended = [0]
    callback = on_request_end

    def on_end(req: Request) -> None:
        ended[0] += 1
        if callback is not None:
            callback(req)

    runtime = _Runtime(env, plan, on_end, token_times)

    def arrival_process():
        submit = runtime.submit
        for rid, t, p, o in zip(ids.tolist(), arrivals.tolist(), prompts.tolist(), outputs.tolist()):
            if t > env.now:
                yield env.timeout(t - env.now)
            req = Request(rid, t, p, o)
            requests.append(req)
            submit(req)

    env.process(arrival_process())
    env.run()

    # -- invariants ----------------------------------------------------------------------------
    if len(requests) != len(workload) or ended[0] != len(requests):
        raise InvariantViolation(f"{plan.name}: {len(requests)} requests, {ended[0]} ended, {len(workload)} in the workload")
    for req in requests:
        if req.phase not in (Phase.FINISHED, Phase.REJECTED):
            raise InvariantViolation(f"{plan.name}: request {req.id} ended in phase {req.phase.name}")
        if req.phase is Phase.FINISHED and req.generated != req.output_tokens:
            raise InvariantViolation(f"{plan.name}: request {req.id} generated {req.generated} of {req.output_tokens} tokens")
    rows = []
    end_s = max((r.finish_s for r in requests if r.phase is Phase.FINISHED), default=0.0)
    for pool_plan, members in zip(plan.pools, runtime.pools):
        for inst in members:
            kv = inst.scheduler.kv
            if kv.used_blocks != 0 or kv.held:
                raise InvariantViolation(f"{plan.name}: {inst.name} holds {kv.used_blocks} KV blocks after the run")
            rows.append({
                "instance": inst.name, "role": pool_plan.role, "gpu": pool_plan.gpu.name, "index": inst.index,
                "iterations": inst.iterations, "events": inst.windows, "busy_s": inst.busy_s,
                "utilization": inst.busy_s / end_s if end_s > 0 else 0.0,
                "kv_capacity_blocks": kv.capacity_blocks, "kv_peak_blocks": kv.peak_used_blocks,
                "preemptions": inst.scheduler.preemptions,
            })
    stats = {}
    for role, lat in runtime.latencies:
        stats[role] = {"lookups": lat.stats.lookups, "out_of_range": lat.stats.extrapolated, "by_axis": dict(lat.stats.by_axis)}
    return SimResult(requests, pd.DataFrame(rows), stats, end_s)
