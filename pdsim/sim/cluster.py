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

With ``topology:`` (``plan.topology``, docs/interconnect.md) the ports are those of the route
(``pdsim.hardware.topology.TransferCost.resources``: intra-node link ports of the two instances, NICs
of their nodes, host links), each a capacity-1 resource, acquired in one global order; the transfer
holds them for the path's time (after the prefill, only the layer-wise tail when ``layerwise``). The
``kv_link`` model is the one-hop case of the same transfer process (egress, then ingress).

With ``plan.mixed_pool`` and ``decode_on_prefill``, a prefilled request that no decode instance has
room for stays on its prefill instance, which decodes it (``Request.decoded_on_prefill``).

Routing (docs/routing.md): each pool's router (``pdsim.routing.routers``) picks the instance of a new
request (first pool) and of a prefilled one (decode pool). With ``plan.mixed_pool`` (Splitwise's mixed
pool) a new request that finds every prefill instance overloaded goes to a decode instance instead,
which prefills and decodes it (no KV transfer; ``Request.mixed_pool``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import simpy

from pdsim.core.kv import KVBlockManager
from pdsim.hardware.topology import TransferCost
from pdsim.core.request import Phase, Request
from pdsim.errors import InvariantViolation
from pdsim.routing.routers import Router, make_router
from pdsim.scheduling.batch import (
    ColocatedScheduler,
    Completion,
    DecodeOnlyScheduler,
    PrefillOnlyScheduler,
    SchedulerLimits,
    SwapSpace,
)
from pdsim.sim.arrivals import ClosedLoopArrivals
from pdsim.sim.instance import DecodeInstance, Instance
from pdsim.sim.plan import DeploymentPlan, PoolPlan
from pdsim.workload.closed_loop import ClosedLoopRequests


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
    sc = pool.scheduler
    # Prefix caching serves prompts: colocated and prefill instances (a decode instance receives the
    # whole KV by transfer and caches nothing).
    unit = sc.prefix_unit_tokens if sc.enable_prefix_caching and pool.role != "decode" else 0
    kv = KVBlockManager(pool.capacity_blocks, sc.block_size, pool.watermark_blocks, unit)
    limits = SchedulerLimits(sc.max_num_batched_tokens, sc.max_num_seqs, sc.enable_chunked_prefill,
                             sc.long_prefill_token_threshold)
    swap = None
    if sc.preemption_mode == "swap":
        block_bytes = pool.kv_bytes_per_token_per_gpu * sc.block_size
        link_gbps = sc.swap_link_gbps if sc.swap_link_gbps is not None else pool.gpu.host_link_gbps
        swap = SwapSpace(int(sc.swap_space_gib * 1024**3) // block_bytes, block_bytes, link_gbps * 1e9 / 8.0)
    match pool.role:
        case "colocated":
            scheduler = ColocatedScheduler(kv, limits, swap)
        case "prefill":
            scheduler = PrefillOnlyScheduler(kv, limits, swap)
        case "decode":
            scheduler = DecodeOnlyScheduler(kv, limits, swap)
        case _:
            raise ValueError(pool.role)
    scheduler.token_times = token_times
    return scheduler


def _router_for(pool: PoolPlan, seed: np.random.SeedSequence, pool_index: int) -> Router:
    """The pool's router; a random one draws from stream ``pool_index`` of ``seed`` (derived without
    ``spawn``, which would change the caller's SeedSequence)."""
    spec = pool.config.router  # a router name, or ``{kind: prefix_aware, ...}`` with parameters
    params = {} if isinstance(spec, str) else spec.model_dump(exclude={"kind"}, exclude_none=True)
    params.setdefault("balance_abs_tokens", pool.scheduler.max_num_batched_tokens)
    stream = np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, pool_index))
    name = spec if isinstance(spec, str) else spec.kind
    return make_router(name, rng=np.random.default_rng(stream), **params)


class _Runtime:
    """Live state of one simulated deployment."""

    def __init__(self, env: simpy.Environment, plan: DeploymentPlan, on_end: Callable[[Request], None],
                 token_times: dict[int, list[float]] | None = None,
                 seed: np.random.SeedSequence | None = None):
        self.env = env
        self.plan = plan
        self.on_end = on_end
        self.latencies = []
        self.pools: list[list[Instance]] = []
        self.routers = []
        seed = np.random.SeedSequence(0) if seed is None else seed
        self.mixed_pool = plan.mixed_pool
        for pool_index, pool in enumerate(plan.pools):
            latency = pool.build_latency()
            self.latencies.append((pool.role, latency))
            members: list[Instance] = []
            for i in range(pool.instances):
                common = dict(
                    env=env, name=f"{pool.role}/{i}", index=i, scheduler=_scheduler_for(pool, token_times),
                    latency=latency, max_window=pool.scheduler.max_window_iterations,
                    on_completion=self._on_completion, stages=pool.pp,
                )
                if pool.role == "decode":
                    members.append(DecodeInstance(start_transfer=self._start_transfer, **common))
                else:
                    members.append(Instance(**common))
            self.pools.append(members)
            self.routers.append(_router_for(pool, seed, pool_index))
        self.kv_ports: dict[tuple[int, int, int], simpy.Resource] = {}  # KV ports, made on first use

    # -- arrivals ------------------------------------------------------------------------------
    def submit(self, req: Request) -> None:
        reason = self.plan.reject_reason(req.prompt_tokens, req.output_tokens)
        if reason:
            req.phase = Phase.REJECTED
            req.reject_reason = reason
            self.on_end(req)
            return
        pool = self.pools[0]
        if self.mixed_pool is not None:
            borrowed = self.mixed_pool.borrow(pool, self.pools[1], self.env.now, req)
            if borrowed is not None:  # a decode instance prefills and decodes it (no KV transfer)
                inst = self.pools[1][borrowed]
                req.mixed_pool = True
                req.decode_instance = inst.index
                inst.enqueue(req)
                return
        inst = pool[self.routers[0].choose(pool, self.env.now, req)]
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
                if self.mixed_pool is not None and self.mixed_pool.keep_on_prefill(decode_pool, inst, req):
                    req.decoded_on_prefill = True
                    inst.keep_for_decode(req)
                    continue
                req.decoded_on_prefill = False
                target = decode_pool[router.choose(decode_pool, t_s, req)]
                req.decode_instance = target.index
                req._ready_s = t_s  # prefill end: start of the wait for decode blocks
                target.offer(req)

    def _start_transfer(self, dst: DecodeInstance, req: Request) -> None:
        req.kv_transfer_wait_s = self.env.now - req._ready_s
        self.env.process(self._transfer(dst, req))

    def _route(self, src: Instance, dst: DecodeInstance, req: Request) -> tuple[TransferCost, float]:
        """The transfer's cost and ports, and the time it holds them after the prefill ended."""
        plan = self.plan
        nbytes = plan.kv_transfer_bytes(req.kv_tokens)
        if plan.topology is None:  # ``kv_link``: the prefill instance's egress port, the decode one's ingress
            link = plan.link
            wire_s = link.transfer_s(nbytes)
            cost = TransferCost(link.kind, nbytes, nbytes, 0.0, wire_s, 0.0, 0.0, 0.0,
                                ((-1, 0, src.index), (-1, 1, dst.index)))
            return cost, wire_s
        cost = plan.topology.cost(src.index, dst.index, nbytes)
        return cost, plan.topology.visible_s(cost.total_s, req.first_token_s - req.prefill_start_s)

    def _transfer(self, dst: DecodeInstance, req: Request):
        """KV transfer: wait for every port of the route (in its order), hold them for the path time
        (the layer-wise tail when streaming), then hand the request to the decode instance."""
        env = self.env
        src = self.pools[0][req.prefill_instance]
        start = env.now
        cost, hold_s = self._route(src, dst, req)
        held = []
        for key in cost.resources:
            port = self.kv_ports.get(key)
            if port is None:
                port = self.kv_ports[key] = simpy.Resource(env, capacity=1)
            claim = port.request()
            held.append((port, claim))
            yield claim
        req.kv_transfer_queue_s = env.now - start
        yield env.timeout(hold_s)
        for port, claim in held:
            port.release(claim)
        req.kv_transfer_s = env.now - start
        req.kv_transfer_bytes, req.kv_transfer_path = cost.wire_bytes, cost.path
        req.kv_transfer_d2h_s, req.kv_transfer_network_s, req.kv_transfer_h2d_s = cost.d2h_s, cost.network_s, cost.h2d_s
        req.kv_convert_s, req.kv_compress_s = cost.convert_s, cost.compress_s
        req.kv_transfer_hidden_s = cost.total_s - hold_s
        src.scheduler.release(req)  # type: ignore[attr-defined]
        src.poke()
        dst.accept(req)


def _open_loop_arrivals(env: simpy.Environment, workload: pd.DataFrame, submit: Callable[[Request], None],
                        requests: list[Request]):
    """Open loop: submit each request of the frame at its ``arrival_s`` (the frame is in arrival order)."""
    ids = workload["request_id"].to_numpy(dtype=np.int64)
    arrivals = workload["arrival_s"].to_numpy(dtype=np.float64)
    prompts = workload["prompt_tokens"].to_numpy(dtype=np.int64)
    outputs = workload["output_tokens"].to_numpy(dtype=np.int64)
    hashes = workload["hash_ids"].tolist() if "hash_ids" in workload.columns else None
    for i, (rid, t, p, o) in enumerate(zip(ids.tolist(), arrivals.tolist(), prompts.tolist(), outputs.tolist())):
        if t > env.now:
            yield env.timeout(t - env.now)
        req = Request(rid, t, p, o)
        if hashes is not None and hashes[i] is not None:
            req.hash_ids = tuple(hashes[i])
        requests.append(req)
        submit(req)


def _chain(first: Callable[[Request], None] | None, then: Callable[[Request], None]) -> Callable[[Request], None]:
    if first is None:
        return then

    def both(req: Request) -> None:
        first(req)
        then(req)

    return both


def simulate(
    plan: DeploymentPlan,
    workload: pd.DataFrame | ClosedLoopRequests,
    on_request_end: Callable[[Request], None] | None = None,
    token_times: dict[int, list[float]] | None = None,
    seed: np.random.SeedSequence | int | None = None,
) -> SimResult:
    """Simulate ``plan`` serving ``workload`` (columns request_id, arrival_s, prompt_tokens, output_tokens).

    A frame is replayed open loop (each request submitted at its ``arrival_s``); a
    :class:`~pdsim.workload.closed_loop.ClosedLoopRequests` runs as a closed loop of its clients
    (:class:`~pdsim.sim.arrivals.ClosedLoopArrivals`: each request's ``arrival_s`` is when its client
    submitted it).

    ``token_times``, when given, is filled with request id -> the time (s) of every token the request
    received, in order (after a preemption, the re-prefill gives the next token);
    per-token ITL percentiles come from it. Results are the same with or without it.

    ``seed`` (a ``numpy.random.SeedSequence`` or an int; default ``SeedSequence(0)``) seeds the random
    routers (``power_of_two``): pool i draws from ``SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, i))``,
    so the same plan, workload and seed give identical results in any process
    (``pdsim.sim.runner.pair_seed`` derives one per deployment x workload pair).

    Raises:
        InvariantViolation: a request neither finished nor was rejected, or KV accounting broke.
    """
    env = simpy.Environment()
    requests: list[Request] = []
    ended = [0]
    callback = on_request_end

    def on_end(req: Request) -> None:
        ended[0] += 1
        if callback is not None:
            callback(req)

    if seed is None or isinstance(seed, (int, np.integer)):
        seed = np.random.SeedSequence(0 if seed is None else int(seed))
    runtime = _Runtime(env, plan, on_end, token_times, seed)

    closed = None
    match workload:  # the arrival process: its type follows the workload's
        case ClosedLoopRequests():
            closed = ClosedLoopArrivals(env, workload, runtime.submit, requests, plan.name)
            callback = _chain(on_request_end, closed.request_ended)  # on_end reads ``callback`` when called
        case _:
            env.process(_open_loop_arrivals(env, workload, runtime.submit, requests))
    env.run()

    # -- invariants ----------------------------------------------------------------------------
    expected = len(workload) if closed is None else closed.submitted
    if len(requests) != expected or ended[0] != len(requests):
        raise InvariantViolation(f"{plan.name}: {len(requests)} requests, {ended[0]} ended, {expected} in the workload")
    if closed is not None and (closed.active_clients or closed.outstanding):
        raise InvariantViolation(f"{plan.name}: closed loop ended with {closed.active_clients} clients active, "
                                 f"{closed.outstanding} requests outstanding")
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
            kv.check_drained(f"{plan.name}: {inst.name}")
            sched = inst.scheduler
            if sched.swapped or sched.swap_used_blocks:
                raise InvariantViolation(f"{plan.name}: {inst.name} has {len(sched.swapped)} requests swapped out after the run")
            rows.append({
                "instance": inst.name, "role": pool_plan.role, "gpu": pool_plan.gpu_label, "index": inst.index,
                "iterations": inst.iterations, "events": inst.windows, "busy_s": inst.busy_s,
                "utilization": inst.busy_s / end_s if end_s > 0 else 0.0,
                "kv_capacity_blocks": kv.capacity_blocks, "kv_peak_blocks": kv.peak_used_blocks,
                "preemptions": sched.preemptions, "swaps": sched.swaps, "swapped_blocks": sched.swapped_blocks,
                "prefill_tokens_computed": sched.prefill_tokens_computed, "prefix_hit_tokens": sched.prefix_hit_tokens,
                "prefix_cached_blocks": kv.evictable_blocks, "prefix_evicted_units": kv.evicted_units,
            })
    stats = {}
    for role, lat in runtime.latencies:
        stats[role] = {"lookups": lat.stats.lookups, "out_of_range": lat.stats.extrapolated, "by_axis": dict(lat.stats.by_axis)}
    return SimResult(requests, pd.DataFrame(rows), stats, end_s)
