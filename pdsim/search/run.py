"""``pdsim search``: the best deployment per dollar (edge ring: builds configs, runs simulations, writes).

Steps (docs/search.md):

1. **Instance types**: every inventory GPU x ``tp`` x ``pp`` x role (``colocated``, ``prefill``,
   ``decode``). Pruned without simulation when it needs more GPUs than the inventory has or costs more
   than the budget, when the model does not fit its memory (``pdsim.sim.plan.plan_pool`` raises
   ``CapacityError``), when its latency profile cannot serve it, or (``smart`` only) when its analytic
   TTFT / TPOT floor already misses the SLO (``pdsim.search.capacity``).
2. **Analytic capacity** per instance type (``pdsim.search.capacity``), then **instance counts** by the
   integer program of ``pdsim.search.allocate``: for every deployment *shape* (a colocated type, or a
   prefill type x a decode type) the allocation with the best capacity per $/h within inventory and
   budget; and per kind the Pareto front of cost vs capacity.
3. **Finalists** (``smart``): the ``max_finalists`` shapes with the best analytic capacity per $/h (half
   reserved per kind). ``exhaustive``: every allocation that fits (brute force).
4. **Goodput by simulation**: a bisection on the arrival rate per finalist (``pdsim.search.goodput``),
   probes run in rounds on the ``pdsim sweep`` executors (local processes or Ray) and stored under the
   sha256 of their resolved config in ``OUT/points/`` (``pdsim.sweep.core.PointStore``): a rerun reuses
   them, and results do not depend on ``-j`` or the executor.
5. **Target rate** (if ``target_rate_rps``): per simulated shape, the simulated/analytic ratio scales the
   requirement of the cheapest allocation (``min_cost``), confirmed by one simulation at the target
   rate (retried with 15 % more capacity, at most 4 times). The cheapest confirmed deployment wins.

Outputs (``OUT``): ``candidates.csv``, ``probes.csv``, ``best.yaml`` (a ready-to-run experiment),
``search.json``, ``config.resolved.yaml``, ``manifest.json``, ``experiments/`` (one experiment per
simulated deployment), ``points/`` (the probes' run directories) and ``plots/``.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError

from pdsim import __version__
from pdsim.config.load import LoadedExperiment, format_validation_error, load_experiment_file
from pdsim.config.schema import Experiment, PoolConfig
from pdsim.config.workload import TraceWorkload
from pdsim.errors import CapacityError, ConfigError, ProfileError
from pdsim.hardware.links import LINK_DEFAULTS
from pdsim.models.arch import dtype_bytes
from pdsim.search.allocate import (
    ROLES,
    Allocation,
    InstanceType,
    enumerate_allocations,
    max_ratio,
    min_cost,
    pareto_front,
    pareto_mask,
)
from pdsim.search.capacity import (
    InstanceCapacity,
    WorkloadStats,
    instance_capacity,
    workload_stats,
)
from pdsim.search.config import LoadedSearch, SearchConfig, load_search_file
from pdsim.search.goodput import Bisection, round_rate
from pdsim.sweep.core import PointStore, point_hash

__all__ = ["WORKLOAD_NAME", "SearchResult", "run_search"]

WORKLOAD_NAME = "search"
# Search-effort knobs of the target-rate step (no physical meaning): a shape whose calibrated cheapest
# allocation misses the target in simulation is retried with 15 % more required capacity, at most 4 times.
TARGET_RETRIES = 4
TARGET_MARGIN = 1.15


@dataclass(frozen=True)
class TypeInfo:
    """An instance type with its plan facts and analytic bounds (``cap`` None when pruned before)."""

    key: str
    role: str
    gpu: str
    tp: int
    pp: int
    usd_per_hour: float
    inventory_index: int
    kv_capacity_tokens: int | None
    cap: InstanceCapacity | None
    status: str
    reason: str
    latency_sources: str = ""

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def label(self) -> str:
        return f"{self.gpu} tp{self.tp} pp{self.pp}"

    def as_instance_type(self) -> InstanceType:
        return InstanceType(self.key, self.role, self.gpu, self.gpus, self.usd_per_hour,
                            self.cap.rate_rps if self.cap else float("nan"))


@dataclass
class Candidate:
    """A deployment the search estimated, and possibly simulated."""

    alloc: Allocation
    source: str
    name: str = ""
    bisection: Bisection | None = None
    probe_rows: list[dict] = field(default_factory=list)
    error: str = ""
    target_check: bool | None = None

    @property
    def simulated(self) -> bool:
        return bool(self.probe_rows)

    @property
    def goodput_rps(self) -> float:
        return self.bisection.goodput_rps if self.bisection is not None else float("nan")


@dataclass
class SearchResult:
    """What ``run_search`` found and wrote."""

    out: Path
    candidates: pd.DataFrame
    probes: pd.DataFrame
    best: dict
    counts: dict
    wall_s: float
    files: list[Path]
    target_rate_rps: float | None = None


# ---------------------------------------------------------------------------------------------------
# Config building
# ---------------------------------------------------------------------------------------------------


def _dump(model) -> Any:
    """A config section as the user wrote it (fields left to their defaults stay out, ``kind`` stays in)."""
    data = model.model_dump(mode="json", exclude_unset=True)
    return {"kind": data.pop("kind"), **data} if "kind" in data else data


def _rel(path: str, from_dir: Path, to_dir: Path) -> str:
    p = Path(path)
    if p.is_absolute():
        return path
    return os.path.relpath((from_dir / p).resolve(), to_dir.resolve())


def _portable_latency(lat: dict, from_dir: Path, to_dir: Path) -> dict:
    lat = dict(lat)
    if lat.get("kind") == "splitwise_table":
        lat["path"] = _rel(lat["path"], from_dir, to_dir)
    elif lat.get("kind") == "op_level":
        profs = lat["profile"] if isinstance(lat["profile"], list) else [lat["profile"]]
        fixed = [(_rel(p, from_dir, to_dir) if (from_dir / p).is_dir() else p) for p in profs]
        lat["profile"] = fixed if isinstance(lat["profile"], list) else fixed[0]
    return lat


def _portable_workload(wl: dict, from_dir: Path, to_dir: Path) -> dict:
    wl = dict(wl)
    if "path" in wl:
        wl["path"] = _rel(wl["path"], from_dir, to_dir)
    if isinstance(wl.get("lengths"), dict) and "path" in wl["lengths"]:
        wl["lengths"] = dict(wl["lengths"], path=_rel(wl["lengths"]["path"], from_dir, to_dir))
    return wl


class _Builder:
    """Experiment dicts for deployments of the search, with paths valid from a target directory."""

    def __init__(self, loaded: LoadedSearch):
        self.loaded = loaded
        self.cfg: SearchConfig = loaded.config

    def pool(self, t: TypeInfo, instances: int, to_dir: Path) -> dict:
        item = self.cfg.search.inventory[t.inventory_index]
        lat = item.latency if isinstance(item.latency, str) else _portable_latency(_dump(item.latency), self.loaded.base_dir, to_dir)
        pool = {"gpu": item.gpu, "tp": t.tp, "pp": t.pp, "instances": instances, "router": self.cfg.search.router,
                "latency": lat}
        if item.price_usd_per_gpu_hour is not None:
            pool["price_usd_per_gpu_hour"] = item.price_usd_per_gpu_hour
        sched = _dump(item.scheduler)
        if sched:
            pool["scheduler"] = sched
        return pool

    def deployment(self, name: str, alloc: Allocation, types: dict[str, TypeInfo], to_dir: Path) -> dict:
        pools = [(types[k], n) for k, n in alloc.counts]
        if alloc.kind == "colocated":
            (t, n), = pools
            return {"name": name, "kind": "colocated", "pool": self.pool(t, n, to_dir)}
        (tp_, n_p), (td, n_d) = pools
        return {"name": name, "kind": "disaggregated", "prefill": self.pool(tp_, n_p, to_dir),
                "decode": self.pool(td, n_d, to_dir), "kv_link": _dump(self.cfg.search.kv_link)}

    def experiment(self, name: str, deployments: list[dict], to_dir: Path, rate_rps: float | None,
                   native_rate_rps: float, description: str = "") -> dict:
        cfg = self.cfg
        wl = _portable_workload(_dump(cfg.workload), self.loaded.base_dir, to_dir)
        if rate_rps is not None:
            wl.update(self.rate_fields(rate_rps, native_rate_rps))
        lat_names = {d[k]["latency"] for d in deployments for k in ("pool", "prefill", "decode")
                     if k in d and isinstance(d[k]["latency"], str)}
        return {
            "name": name,
            "description": description or cfg.description,
            "seed": cfg.seed,
            "model": _dump(cfg.model),
            "slo": cfg.slo.model_dump(mode="json"),
            "scheduler": _dump(cfg.scheduler),
            "latency_models": {k: _portable_latency(_dump(v), self.loaded.base_dir, to_dir)
                               for k, v in sorted(cfg.latency_models.items()) if k in lat_names},
            "deployments": deployments,
            "workloads": {WORKLOAD_NAME: wl},
        }

    def rate_fields(self, rate_rps: float, native_rate_rps: float) -> dict:
        wl = self.cfg.workload
        if isinstance(wl, TraceWorkload):
            return {"rate_scale": round_rate(wl.rate_scale * rate_rps / native_rate_rps)}
        return {"rate_rps": round_rate(rate_rps)}

    def rate_override(self, rate_rps: float, native_rate_rps: float) -> list[str]:
        return [f"workloads.{WORKLOAD_NAME}.{k}={v!r}" for k, v in self.rate_fields(rate_rps, native_rate_rps).items()]


def _loaded_experiment(data: dict, path: Path) -> LoadedExperiment:
    try:
        return LoadedExperiment(config=Experiment.model_validate(data), path=path, base_dir=path.parent)
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(path), err, data)) from None


# ---------------------------------------------------------------------------------------------------
# Instance types
# ---------------------------------------------------------------------------------------------------


def _instance_types(loaded: LoadedSearch, stats: WorkloadStats, smart: bool) -> list[TypeInfo]:
    from pdsim.hardware.gpus import load_gpu_catalog, lookup_gpu
    from pdsim.sim.plan import plan_pool, resolve_model

    cfg = loaded.config
    sp = cfg.search
    builder = _Builder(loaded)
    roles = sorted({r for k in sp.kinds for r in ROLES[k]}, key=["colocated", "prefill", "decode"].index)
    first = sp.inventory[0]
    base_dep = {"name": "probe", "kind": "colocated",
                "pool": {"gpu": first.gpu, "instances": 1, "latency": first.latency if isinstance(first.latency, str) else _dump(first.latency)}}
    base = _loaded_experiment(builder.experiment("search-base", [base_dep], loaded.base_dir, None, math.nan), loaded.path)
    model = resolve_model(base)
    catalog = load_gpu_catalog()
    link = sp.kv_link
    base_link = LINK_DEFAULTS[link.kind]
    link_bytes_per_s = (link.bandwidth_gbps or base_link.bandwidth_gbps) * 1e9 / 8
    kv_bytes = model.kv_bytes_per_token(dtype_bytes(cfg.model.effective_kv_dtype))
    out: list[TypeInfo] = []
    for idx, item in enumerate(sp.inventory):
        gpu = lookup_gpu(catalog, item.gpu, f"{loaded.path}: search.inventory[{idx}].gpu")
        price = item.price_usd_per_gpu_hour if item.price_usd_per_gpu_hour is not None else gpu.price_usd_per_hour
        if math.isnan(price):
            raise ConfigError(f"{loaded.path}: search.inventory[{idx}].price_usd_per_gpu_hour: the catalog has no price "
                              f"for {gpu.name}; set one")
        latency = cfg.latency_models[item.latency] if isinstance(item.latency, str) else item.latency
        for tp, pp, role in itertools.product(sp.tp, sp.pp, roles):
            t = TypeInfo(f"{gpu.name}/tp{tp}/pp{pp}/{role}", role, gpu.name, tp, pp, tp * pp * float(price), idx,
                         kv_capacity_tokens=None, cap=None, status="pruned", reason="")
            if t.gpus > item.count:
                out.append(replace(t, reason=f"inventory: needs {t.gpus} GPUs, {item.count} available"))
                continue
            if sp.budget_usd_per_hour is not None and t.usd_per_hour > sp.budget_usd_per_hour:
                out.append(replace(t, reason=f"budget: one instance costs {t.usd_per_hour:.2f} $/h > "
                                             f"{sp.budget_usd_per_hour:g}"))
                continue
            pool_dict = dict(builder.pool(t, 1, loaded.base_dir), latency=latency)
            where = f"search.inventory[{idx}]({gpu.name} tp={tp} pp={pp} {role})"
            try:
                plan = plan_pool(base, PoolConfig.model_validate(pool_dict), role, model, where)
            except CapacityError as exc:
                out.append(replace(t, reason=f"memory: {str(exc).split(': ', 2)[-1]}"))
                continue
            except ProfileError as exc:
                out.append(replace(t, reason=f"profile: {exc}"))
                continue
            cap = instance_capacity(role, plan.build_latency(), stats, plan.scheduler, plan.capacity_tokens,
                                    cfg.slo, link_bytes_per_s, kv_bytes)
            pruned = smart and bool(cap.pruned)
            out.append(replace(t, kv_capacity_tokens=plan.capacity_tokens, cap=cap,
                               status="pruned" if pruned else "estimated",
                               reason=f"slo: {cap.pruned}" if pruned else cap.pruned,
                               latency_sources="+".join(plan.latency_source_kinds)))
    return out


# ---------------------------------------------------------------------------------------------------
# Probes: simulations on the sweep executors, cached by config hash
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Probe:
    candidate: str
    rate_rps: float
    experiment: str
    overrides: tuple[str, ...]
    seed: int
    hash: str


class _Executor:
    """Runs probes not yet stored, on the ``pdsim sweep`` point runner: in this process (``jobs == 1``),
    in a pool of worker processes kept for the whole search (each keeps its parsed profiles), or on Ray
    (``pdsim.sweep.ray_executor.run_on_ray``). Results do not depend on which."""

    def __init__(self, store: PointStore, jobs: int, executor: str, address: str | None):
        self.store, self.jobs, self.executor, self.address = store, jobs, executor, address
        self.jobs_n = jobs if jobs > 0 else (os.cpu_count() or 1)
        self._pool = None
        self._ray = None

    def __enter__(self):
        # Ray: start (or join) it once for the whole search, not once per round; run_on_ray then uses it.
        if self.executor == "ray":
            from pdsim.sweep.ray_executor import import_ray, init_ray

            ray = import_ray()
            if init_ray(ray, self.address, self.jobs):
                self._ray = ray
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.shutdown(wait=exc[0] is None, cancel_futures=exc[0] is not None)
        if self._ray is not None:
            self._ray.shutdown()
        return False

    def run(self, probes: list[_Probe]) -> dict[str, str]:
        """Run the probes not yet stored; returns hash -> error message of those that failed."""
        from pdsim.sweep.cli import run_point

        todo: dict[str, _Probe] = {}
        for p in probes:
            if not self.store.is_done(p.hash):
                todo.setdefault(p.hash, p)
        args = [(p.experiment, list(p.overrides), p.seed, str(self.store.out), h,
                 {"candidate": p.candidate, "rate_rps": p.rate_rps}) for h, p in todo.items()]
        errors: dict[str, str] = {}
        if not args:
            return errors
        if self.executor == "ray":
            from pdsim.sweep.ray_executor import run_on_ray

            def finished(h, err, _running):
                if err is not None:
                    errors[h] = err

            run_on_ray(args, jobs=self.jobs, address=self.address, finished=finished,
                       record_failure=self.store.record_failure)
            return errors
        if self.jobs_n <= 1 or len(args) <= 1:
            results = [run_point(*a) for a in args]
        else:
            if self._pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent
                self._pool = ProcessPoolExecutor(max_workers=self.jobs_n, mp_context=ctx)
            results = list(self._pool.map(run_point, *zip(*args)))
        for h, err in results:
            if err is not None:
                errors[h] = err
        return errors


# ---------------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------------


def _cand_name(alloc: Allocation, types: dict[str, TypeInfo]) -> str:
    parts = []
    for k, n in alloc.counts:
        t = types[k]
        parts.append(f"{t.gpu}-tp{t.tp}pp{t.pp}x{n}")
    return ("C-" if alloc.kind == "colocated" else "D-") + "+".join(parts)


def _pick_finalists(shapes: list[Allocation], kinds: list[str], n: int, types: dict[str, TypeInfo]) -> list[Allocation]:
    """The ``n`` shapes to simulate: by analytic capacity per $/h, ``ceil(n / len(kinds))`` per kind, and
    within a kind one per GPU combination (e.g. H100 prefill + MI300X decode) before a second one of the
    same combination (so a GPU type the bound favours cannot take every slot); then the rest by rank."""
    ranked = sorted(shapes, key=lambda a: (-a.ratio, a.usd_per_hour, a.counts))

    def gpus(a: Allocation) -> tuple:
        return tuple(types[k].gpu for k, _ in a.counts)

    chosen: list[Allocation] = []
    quota = math.ceil(n / len(kinds))
    for kind in kinds:
        mine = [a for a in ranked if a.kind == kind]
        seen: set[tuple] = set()
        taken: list[Allocation] = []
        for a in mine:
            if len(taken) < quota and gpus(a) not in seen:
                taken.append(a)
                seen.add(gpus(a))
        for a in mine:
            if len(taken) < quota and a not in taken:
                taken.append(a)
        chosen += taken
    for a in ranked:
        if len(chosen) >= n:
            break
        if a not in chosen:
            chosen.append(a)
    chosen = sorted(chosen, key=lambda a: (-a.ratio, a.usd_per_hour, a.counts))
    return chosen[:n]


def run_search(
    path: Path | str,
    *,
    out: Path | str,
    sets: list[str] | None = None,
    jobs: int = 1,
    executor: str = "local",
    address: str | None = None,
    seed: int | None = None,
    plots: bool = True,
    log: Callable[[str], None] | None = None,
    argv: list[str] | None = None,
) -> SearchResult:
    """Run a search and write its directory ``out`` (see the module docstring).

    Raises:
        ConfigError: bad search file, option or override (before anything is simulated).
    """
    from pdsim.sim.runner import workload_seed
    from pdsim.sweep.cli import check_executor
    from pdsim.workload.build import build_workload

    t0 = time.perf_counter()
    say = log or (lambda _m: None)
    check_executor(executor, address)
    loaded = load_search_file(path, sets)
    if seed is not None:
        loaded = replace(loaded, config=loaded.config.model_copy(update={"seed": seed}))
    cfg = loaded.config
    sp = cfg.search
    smart = sp.strategy == "smart"
    out = Path(out)
    builder = _Builder(loaded)

    requests = build_workload(cfg.workload, loaded.base_dir, workload_seed(cfg.seed, WORKLOAD_NAME))
    stats = workload_stats(requests, cfg.slo.percentile)
    if isinstance(cfg.workload, TraceWorkload) and not (stats.native_rate_rps > 0):
        raise ConfigError(f"{loaded.path}: workload: the trace window needs at least two requests at distinct times")
    t_types = time.perf_counter()
    infos = _instance_types(loaded, stats, smart)
    types = {t.key: t for t in infos}
    live = [t.as_instance_type() for t in infos if t.status == "estimated"]
    inventory = {t.gpu: sp.inventory[t.inventory_index].count for t in infos}  # catalog GPU name -> count
    say(f"instance types: {len(infos)} ({sum(t.status == 'pruned' for t in infos)} pruned) in {time.perf_counter() - t_types:.1f}s")

    # -- analytic allocations ----------------------------------------------------------------------
    t_milp = time.perf_counter()
    estimated: dict[tuple, Candidate] = {}

    def add(alloc: Allocation | None, source: str) -> Candidate | None:
        if alloc is None:
            return None
        key = (alloc.kind, alloc.counts)
        if key not in estimated:
            estimated[key] = Candidate(alloc, source, _cand_name(alloc, types))
        elif source not in estimated[key].source.split("+"):
            estimated[key].source += "+" + source
        return estimated[key]

    shapes: list[Allocation] = []
    budget, cap_n = sp.budget_usd_per_hour, sp.max_instances_per_pool
    for kind in sp.kinds:
        by_role = [[t for t in live if t.role == r] for r in ROLES[kind]]
        for combo in itertools.product(*by_role):
            a = max_ratio(kind, list(combo), inventory, budget, cap_n)
            if a is not None:
                shapes.append(a)
                add(a, "shape")
        add(max_ratio(kind, live, inventory, budget, cap_n), "milp_best")
        for a in pareto_front(kind, live, inventory, budget, cap_n):
            add(a, "front")
        if sp.target_rate_rps is not None:
            add(min_cost(kind, live, inventory, sp.target_rate_rps, budget, cap_n), "milp_target")
    if smart:
        finalists = [estimated[(a.kind, a.counts)] for a in _pick_finalists(shapes, list(sp.kinds), sp.max_finalists, types)]
    else:
        finalists = []
        for kind in sp.kinds:
            for a in enumerate_allocations(kind, live, inventory, budget, cap_n):
                finalists.append(add(a, "exhaustive"))
    milp_s = time.perf_counter() - t_milp
    say(f"analytic: {len(estimated)} deployments estimated, {len(finalists)} to simulate ({milp_s:.1f}s)")

    # -- simulations ---------------------------------------------------------------------------------
    exp_dir = out / "experiments"
    exp_dir.mkdir(parents=True, exist_ok=True)
    store = PointStore(out)
    store.prepare()
    native = stats.native_rate_rps
    pool = _Executor(store, jobs, executor, address)
    written: dict[str, str] = {}

    def exp_file(c: Candidate) -> str:
        if c.name not in written:
            data = builder.experiment(f"{cfg.name}-{c.name}", [builder.deployment(c.name, c.alloc, types, exp_dir)],
                                      exp_dir, None, native)
            p = exp_dir / f"{c.name}.yaml"
            text = yaml.safe_dump(data, sort_keys=False)
            if not p.is_file() or p.read_text() != text:
                p.write_text(text)
            written[c.name] = str(p)
        return written[c.name]

    def probe(c: Candidate, rate: float) -> _Probe:
        f = exp_file(c)
        ovs = builder.rate_override(rate, native)
        exp = load_experiment_file(f, ovs)
        return _Probe(c.name, rate, f, tuple(ovs), cfg.seed, point_hash(exp.config, cfg.seed))

    def run_round(pending: list[tuple[Candidate, float]]) -> list[tuple[Candidate, float, bool | None]]:
        probes = [probe(c, r) for c, r in pending]
        errors = pool.run(probes)
        done = []
        for (c, r), p in zip(pending, probes):
            if p.hash in errors:
                c.error = errors[p.hash].strip().splitlines()[-1]
                done.append((c, r, None))
                continue
            row = pd.read_csv(store.point_dir(p.hash) / "summary.csv").iloc[0].to_dict()
            passed = bool(row["slo_attainment"] >= cfg.slo.attainment_target)
            c.probe_rows.append({"candidate": c.name, "rate_rps": r, "passed": passed, "point": p.hash,
                                 **{k: row[k] for k in ("slo_attainment", "ttft_p90_s", "tpot_p90_s", "ttft_p99_s",
                                                        "tpot_p99_s", "requests", "rejected", "latency_sources")}})
            done.append((c, r, passed))
        return done

    def _simulate_all():
        for c in finalists:
            c.bisection = Bisection(c.alloc.capacity_rps, sp.rate_tolerance, sp.max_probes)
        rounds = 0
        while True:
            pending = [(c, c.bisection.next_rate()) for c in finalists if not c.error]
            pending = [(c, r) for c, r in pending if r is not None]
            if not pending:
                break
            rounds += 1
            for c, r, passed in run_round(pending):
                if passed is not None:
                    c.bisection.record(r, passed)
            say(f"round {rounds}: {len(pending)} simulations ({time.perf_counter() - t0:.0f}s)")

        # -- target rate ---------------------------------------------------------------------------------
        target_checks: list[Candidate] = []
        if sp.target_rate_rps is not None and smart:
            R = sp.target_rate_rps
            todo: list[tuple[Candidate, list[InstanceType], float]] = []  # (allocation, its shape's types, required capacity)
            for c in finalists:
                if c.goodput_rps > 0 and not c.error:
                    shape_types = [t for t in live if t.key in dict(c.alloc.counts)]
                    required = R * c.alloc.capacity_rps / c.goodput_rps  # analytic capacity per simulated goodput
                    a = min_cost(c.alloc.kind, shape_types, inventory, required, budget, cap_n)
                    if a is not None:
                        todo.append((add(a, "target"), shape_types, required))
            for attempt in range(1, TARGET_RETRIES + 1):
                fresh: dict[str, tuple[Candidate, list[InstanceType], float]] = {}
                for t, st, req in todo:
                    if t.target_check is None and not t.simulated:
                        fresh.setdefault(t.name, (t, st, req))
                if not fresh:
                    break
                for t, _r, passed in run_round([(t, round_rate(R)) for t, _, _ in fresh.values()]):
                    t.target_check = passed
                    target_checks.append(t)
                todo = []
                for t, st, req in fresh.values():
                    if t.target_check is False:  # more capacity, until the allocation changes
                        a = t.alloc
                        while a is not None and a.counts == t.alloc.counts:
                            req *= TARGET_MARGIN
                            a = min_cost(t.alloc.kind, st, inventory, req, budget, cap_n)
                        if a is not None:
                            todo.append((add(a, "target"), st, req))
                say(f"target round {attempt}: {len(fresh)} simulations ({time.perf_counter() - t0:.0f}s)")

        return rounds, target_checks

    with pool:
        rounds, target_checks = _simulate_all()

    # -- decisions -----------------------------------------------------------------------------------
    sims = [c for c in estimated.values() if c.bisection is not None and c.simulated and not c.error]
    best: dict[str, Any] = {}

    def per_usd(c: Candidate) -> float:
        return c.goodput_rps / c.alloc.usd_per_hour

    order = lambda c: (-per_usd(c), c.alloc.usd_per_hour, c.name)
    if sims:
        best["goodput_per_dollar"] = min(sims, key=order)
        for kind in sp.kinds:
            ks = [c for c in sims if c.alloc.kind == kind]
            if ks:
                best[f"best_{kind}"] = min(ks, key=order)
    if sp.target_rate_rps is not None:
        ok = [c for c in sims if c.goodput_rps >= sp.target_rate_rps]
        ok += [c for c in target_checks if c.target_check]
        if ok:
            best["lowest_cost_at_target"] = min(ok, key=lambda c: (c.alloc.usd_per_hour, -(c.goodput_rps if c.bisection else 0), c.name))
    wall = time.perf_counter() - t0

    # -- outputs -------------------------------------------------------------------------------------
    cand_df = _candidates_frame(infos, estimated, types, best)
    probes_df = pd.DataFrame([r for c in estimated.values() for r in c.probe_rows],
                             columns=["candidate", "rate_rps", "passed", "slo_attainment", "ttft_p90_s", "tpot_p90_s",
                                      "ttft_p99_s", "tpot_p99_s", "requests", "rejected", "latency_sources", "point"])
    probes_df = probes_df.sort_values(["candidate", "rate_rps"], kind="mergesort").reset_index(drop=True)
    counts = {
        "instance_types": len(infos),
        "instance_types_pruned": sum(t.status == "pruned" for t in infos),
        "deployments_estimated": len(estimated),
        "deployments_simulated": len([c for c in estimated.values() if c.simulated]),
        "simulations": len(probes_df),
        "rounds": rounds,
    }
    files = _write_outputs(out, loaded, builder, cand_df, probes_df, best, counts, wall, native, types, argv, store, plots,
                           milp_s)
    best_summary = {k: _best_record(c, types) for k, c in best.items()}
    return SearchResult(out, cand_df, probes_df, best_summary, counts, wall, files, sp.target_rate_rps)


def _best_record(c: Candidate, types: dict[str, TypeInfo]) -> dict:
    pools = []
    for k, n in c.alloc.counts:
        t = types[k]
        pools.append({"role": t.role, "gpu": t.gpu, "tp": t.tp, "pp": t.pp, "instances": n,
                      "latency_sources": t.latency_sources})
    return {
        "deployment": c.name, "kind": c.alloc.kind, "pools": pools, "gpus": _gpus(c, types),
        "usd_per_hour": c.alloc.usd_per_hour, "analytic_capacity_rps": c.alloc.capacity_rps,
        "goodput_rps": c.goodput_rps if c.bisection else None,
        "goodput_status": c.bisection.status if c.bisection else None,
        "target_check": c.target_check,
        "goodput_rps_per_usd_per_hour": (c.goodput_rps / c.alloc.usd_per_hour) if c.bisection else None,
    }


def _gpus(c: Candidate, types: dict[str, TypeInfo]) -> int:
    return sum(types[k].gpus * n for k, n in c.alloc.counts)


def _candidates_frame(infos, estimated, types, best) -> pd.DataFrame:
    rows = []
    for t in infos:
        cap = t.cap
        rows.append({
            "level": "instance_type", "candidate": t.key, "kind": "", "role": t.role, "pools": t.label,
            "gpus": t.gpus, "usd_per_hour": t.usd_per_hour, "status": t.status, "reason": t.reason,
            "kv_capacity_tokens": t.kv_capacity_tokens,
            "ttft_floor_s": cap.ttft_floor_s if cap else None, "tpot_floor_s": cap.tpot_floor_s if cap else None,
            "prefill_rps": cap.prefill_rps if cap else None, "decode_rps": cap.decode_rps if cap else None,
            "analytic_capacity_rps": cap.rate_rps if cap else None, "latency_sources": t.latency_sources,
        })
    chosen = {}
    for k, c in best.items():
        chosen.setdefault(c.name, []).append(k)
    for c in sorted(estimated.values(), key=lambda c: (c.alloc.kind, -c.alloc.ratio, c.alloc.usd_per_hour, c.name)):
        gpus = _gpus(c, types)
        sim = c.simulated
        srcs = sorted({types[k].latency_sources for k, _ in c.alloc.counts})
        status = "failed" if c.error else ("simulated" if sim else "estimated")
        goodput = c.goodput_rps if (c.bisection is not None and sim) else None
        rows.append({
            "level": "deployment", "candidate": c.name, "kind": c.alloc.kind,
            "role": "+".join(types[k].role for k, _ in c.alloc.counts),
            "pools": " + ".join(f"{n} x {types[k].label} ({types[k].role})" for k, n in c.alloc.counts),
            "gpus": gpus, "usd_per_hour": c.alloc.usd_per_hour, "status": status, "reason": c.error,
            "source": c.source, "analytic_capacity_rps": c.alloc.capacity_rps,
            "analytic_rps_per_usd_per_hour": c.alloc.ratio,
            "goodput_rps": goodput,
            "goodput_status": c.bisection.status if (c.bisection is not None and sim) else None,
            "goodput_rps_per_gpu": goodput / gpus if goodput is not None else None,
            "goodput_rps_per_usd_per_hour": goodput / c.alloc.usd_per_hour if goodput is not None else None,
            "target_check": c.target_check,
            "probes": len(c.probe_rows),
            "latency_sources": "+".join(s for s in srcs if s),
            "chosen": ";".join(chosen.get(c.name, [])),
        })
    # Pareto front of the simulated deployments: no other one is cheaper with at least the goodput.
    sim_rows = [r for r in rows if r.get("goodput_rps") is not None]
    mask = pareto_mask([r["usd_per_hour"] for r in sim_rows], [r["goodput_rps"] for r in sim_rows])
    for r, on_front in zip(sim_rows, mask):
        r["pareto"] = bool(on_front)
    cols = ["level", "candidate", "kind", "role", "pools", "gpus", "usd_per_hour", "status", "reason", "source",
            "kv_capacity_tokens", "ttft_floor_s", "tpot_floor_s", "prefill_rps", "decode_rps", "analytic_capacity_rps",
            "analytic_rps_per_usd_per_hour", "goodput_rps", "goodput_status", "goodput_rps_per_gpu",
            "goodput_rps_per_usd_per_hour", "pareto", "target_check", "probes", "latency_sources", "chosen"]
    return pd.DataFrame(rows, columns=cols)


def _goodput_probe(c: Candidate) -> dict | None:
    """The probe row at the highest rate that met the attainment target (None if none did)."""
    passed = [r for r in c.probe_rows if r["passed"]]
    return max(passed, key=lambda r: r["rate_rps"]) if passed else None


def _write_outputs(out: Path, loaded: LoadedSearch, builder: _Builder, cand_df, probes_df, best, counts, wall, native,
                   types, argv, store, plots, milp_s) -> list[Path]:
    from pdsim.results import git_sha

    files = []

    def write(name: str, text: str) -> Path:
        p = out / name
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, p)
        files.append(p)
        return p

    cfg = loaded.config
    write("candidates.csv", cand_df.to_csv(index=False))
    write("probes.csv", probes_df.to_csv(index=False))
    resolved = cfg.model_dump(mode="json")
    write("config.resolved.yaml", yaml.safe_dump(resolved, sort_keys=False))

    # best.yaml: the chosen deployments as one ready-to-run experiment, the workload at the first one's rate.
    if best:
        primary_key = "lowest_cost_at_target" if "lowest_cost_at_target" in best else "goodput_per_dollar"
        primary = best[primary_key]
        ordered = [primary] + [c for k, c in best.items() if c is not primary]
        unique = []
        for c in ordered:
            if c not in unique:
                unique.append(c)
        rate = cfg.search.target_rate_rps if primary_key == "lowest_cost_at_target" else primary.goodput_rps
        lines = [f"# Chosen by pdsim search ({loaded.path.name}); ready to run: pdsim run <this directory>/best.yaml",
                 f"# Workload at {rate:.6g} req/s ("
                 + ("the target rate" if primary_key == "lowest_cost_at_target" else f"the goodput of {primary.name}") + ")."]
        for k, c in best.items():
            g = f"goodput {c.goodput_rps:.4g} req/s" if c.bisection is not None and c.simulated else "goodput not bisected"
            chk = "" if c.target_check is None else f", {'meets' if c.target_check else 'misses'} the target in simulation"
            lines.append(f"#   {k}: {c.name}: {c.alloc.usd_per_hour:.2f} $/h, {g}{chk}")
        data = builder.experiment(f"{cfg.name}-best", [builder.deployment(c.name, c.alloc, types, out) for c in unique],
                                  out, rate, native, description=f"Chosen by pdsim search ({primary_key}).")
        write("best.yaml", "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False))
    summary = {
        "search": cfg.name,
        "strategy": cfg.search.strategy,
        "counts": counts,
        "best": {k: _best_record(c, types) for k, c in best.items()},
        "attainment_target": cfg.slo.attainment_target,
        "rate_tolerance": cfg.search.rate_tolerance,
    }
    write("search.json", json.dumps(summary, indent=2, default=str) + "\n")
    manifest = {
        "pdsim_version": __version__,
        "git_sha": git_sha(Path(__file__).parent),
        "search_file": str(loaded.path),
        "seed": cfg.seed,
        "command": argv if argv is not None else sys.argv,
        "python": sys.version.split()[0],
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "wall_s": wall,
        "milp_s": milp_s,
        "counts": counts,
    }
    write("manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")
    if plots:
        files += _render_plots(out, cfg, cand_df, probes_df, best, store)
    return files


def _render_plots(out: Path, cfg: SearchConfig, cand_df, probes_df, best, store: PointStore) -> list[Path]:
    from pdsim.plots.figures import DERIVED_MARK, latency_cdf
    from pdsim.plots.render import PLOT_DPI
    from pdsim.plots.search import attainment_vs_rate, cost_goodput_pareto

    pdir = out / "plots"
    pdir.mkdir(exist_ok=True)
    paths = []

    def save(fig, name):
        p = pdir / name
        fig.savefig(p, dpi=PLOT_DPI)
        paths.append(p)

    chosen = best.get("goodput_per_dollar")
    if len(probes_df):
        save(attainment_vs_rate(probes_df, target=cfg.slo.attainment_target, highlight=chosen.name if chosen else None),
             "attainment_vs_rate.png")
    save(cost_goodput_pareto(cand_df[cand_df["level"] == "deployment"], highlight=chosen.name if chosen else None),
         "cost_vs_goodput_pareto.png")
    for key, c in best.items():
        top = _goodput_probe(c)
        if top is None:
            continue
        req = pd.read_parquet(store.point_dir(top["point"]) / "requests.parquet")
        if any("derived" in str(r["latency_sources"]) for r in c.probe_rows):
            req = req.assign(deployment=req["deployment"].astype(str) + f" {DERIVED_MARK}")
        for metric, slo_s in (("ttft_s", cfg.slo.ttft_s), ("tpot_s", cfg.slo.tpot_s)):
            fig = latency_cdf(req, metric, workload=WORKLOAD_NAME, slo_s=slo_s, percentile=cfg.slo.percentile)
            fig.axes[0].set_title(f"{metric[:4].upper()} CDF, {key}: {c.name} at {top['rate_rps']:.4g} req/s",
                                  fontsize="small")
            save(fig, f"{key}_{metric[:4]}_cdf.png")
    return paths
