"""Instance counts per instance type: an integer program over the analytic capacities (pure ring).

Given instance types (GPU x TP x PP x role) with an analytic capacity ``mu_i`` (requests/s), a price
``c_i`` ($/h per instance) and ``g_i`` GPUs per instance, a deployment of kind ``colocated`` picks one
colocated type and a count; a ``disaggregated`` one picks one prefill type and one decode type (they
may be different GPUs, vendors included) and two counts. The integer program, for one kind::

    variables  x_i in {0..U_i} (instances of type i), y_i in {0, 1} (type i is the pool's), K >= 0
    s.t.       sum_{i in role r} y_i = 1                    for each role r of the kind
               y_i <= x_i <= U_i y_i
               K <= sum_{i in role r} mu_i x_i              for each role r  (rate matching: K = min)
               sum_{i on GPU g} g_i x_i <= inventory_g      (pools of one GPU type share its inventory)
               sum_i c_i x_i <= budget                      (if a budget is given)

with ``U_i = min(max_instances_per_pool, inventory_g // g_i)``. Objectives:

- ``min_cost(R)``: minimise ``C = sum c_i x_i`` with ``K >= R`` (the lowest $/h sustaining rate R;
  Mélange's cost-aware allocation, Griggs et al. 2024, as an ILP over GPU types);
- ``max_ratio``: maximise ``K / C`` (capacity per dollar), a mixed-integer linear-fractional program
  solved exactly by Dinkelbach's parametric method (Dinkelbach, Management Science 13(7), 1967):
  ``lambda_{k+1} = K_k / C_k`` where ``(K_k, C_k)`` maximises ``K - lambda_k C``, until the maximum is 0.
  Among allocations with the optimal ratio the largest capacity is returned (more instances behind one
  router multiplex better, so the simulation favours it).
- ``pareto_front``: the non-dominated (cost, capacity) allocations, by ``min_cost`` at increasing rates.

Solved with ``scipy.optimize.milp`` (HiGHS) with ``mip_rel_gap = 0``. ``enumerate_allocations`` is the
brute-force enumeration the tests compare it with, and that ``strategy: exhaustive`` simulates.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

__all__ = [
    "ROLES",
    "Allocation",
    "InstanceType",
    "enumerate_allocations",
    "max_ratio",
    "min_cost",
    "pareto_front",
    "pareto_mask",
]

ROLES: dict[str, tuple[str, ...]] = {"colocated": ("colocated",), "disaggregated": ("prefill", "decode")}


@dataclass(frozen=True, slots=True)
class InstanceType:
    """One kind of instance: a GPU type, TP x PP and a role, with its analytic capacity.

    Attributes:
        key: unique name, e.g. ``H100-SXM/tp4/pp1/prefill``.
        role: ``colocated``, ``prefill`` or ``decode``.
        gpu: GPU name (shares that GPU's inventory).
        gpus: GPUs per instance (tp x pp).
        usd_per_hour: price of one instance.
        rate_rps: analytic capacity of one instance, requests/s.
    """

    key: str
    role: str
    gpu: str
    gpus: int
    usd_per_hour: float
    rate_rps: float


@dataclass(frozen=True, slots=True)
class Allocation:
    """A deployment's instance counts: ``counts`` is ``((type key, instances), ...)`` in role order."""

    kind: str
    counts: tuple[tuple[str, int], ...]
    usd_per_hour: float
    capacity_rps: float

    @property
    def ratio(self) -> float:
        return self.capacity_rps / self.usd_per_hour if self.usd_per_hour > 0 else math.inf


def _capacity(kind: str, picked: list[tuple[InstanceType, int]]) -> float:
    by_role: dict[str, float] = {}
    for t, n in picked:
        by_role[t.role] = by_role.get(t.role, 0.0) + t.rate_rps * n
    return min(by_role.get(r, 0.0) for r in ROLES[kind])


def _make(kind: str, picked: list[tuple[InstanceType, int]]) -> Allocation:
    order = {r: i for i, r in enumerate(ROLES[kind])}
    picked = sorted(((t, n) for t, n in picked if n > 0), key=lambda p: order[p[0].role])
    return Allocation(kind, tuple((t.key, n) for t, n in picked), sum(t.usd_per_hour * n for t, n in picked),
                      _capacity(kind, picked))


def _upper(t: InstanceType, inventory: dict[str, int], max_per_pool: int) -> int:
    return min(max_per_pool, inventory.get(t.gpu, 0) // t.gpus)


class _Program:
    """The constraint matrix of one kind (variables: x_0..x_{m-1}, y_0..y_{m-1}, K)."""

    def __init__(self, kind: str, types: list[InstanceType], inventory: dict[str, int], budget: float | None,
                 max_per_pool: int):
        self.kind = kind
        self.types = [t for t in types if t.role in ROLES[kind] and _upper(t, inventory, max_per_pool) >= 1
                      and t.rate_rps > 0 and math.isfinite(t.rate_rps)]
        m = len(self.types)
        self.m = m
        self.feasible = m > 0 and all(any(t.role == r for t in self.types) for r in ROLES[kind])
        if not self.feasible:
            return
        nv = 2 * m + 1
        rows, lo, hi = [], [], []

        def add(row, l, h):
            rows.append(row)
            lo.append(l)
            hi.append(h)

        upper = [_upper(t, inventory, max_per_pool) for t in self.types]
        for r in ROLES[kind]:
            row = np.zeros(nv)
            for i, t in enumerate(self.types):
                if t.role == r:
                    row[m + i] = 1.0
            add(row, 1.0, 1.0)
            row = np.zeros(nv)
            row[2 * m] = 1.0
            for i, t in enumerate(self.types):
                if t.role == r:
                    row[i] = -t.rate_rps
            add(row, -np.inf, 0.0)
        for i in range(m):
            row = np.zeros(nv)
            row[i], row[m + i] = 1.0, -float(upper[i])
            add(row, -np.inf, 0.0)
            row = np.zeros(nv)
            row[i], row[m + i] = 1.0, -1.0
            add(row, 0.0, np.inf)
        for g in sorted({t.gpu for t in self.types}):
            row = np.zeros(nv)
            for i, t in enumerate(self.types):
                if t.gpu == g:
                    row[i] = float(t.gpus)
            add(row, -np.inf, float(inventory[g]))
        self.cost = np.zeros(nv)
        self.cost[:m] = [t.usd_per_hour for t in self.types]
        if budget is not None:
            add(self.cost.copy(), -np.inf, float(budget))
        self.rows, self.lo, self.hi = rows, lo, hi
        self.bounds_lo = np.zeros(nv)
        self.bounds_hi = np.array([float(u) for u in upper] + [1.0] * m + [np.inf])
        self.integrality = np.array([1] * (2 * m) + [0])

    def solve(self, objective: np.ndarray, extra: list[tuple[np.ndarray, float, float]] = (), k_min: float = 0.0):
        if not self.feasible:
            return None
        rows = self.rows + [e[0] for e in extra]
        lo = self.lo + [e[1] for e in extra]
        hi = self.hi + [e[2] for e in extra]
        blo = self.bounds_lo.copy()
        blo[-1] = k_min
        res = milp(objective, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=self.integrality,
                   bounds=Bounds(blo, self.bounds_hi), options={"mip_rel_gap": 0.0, "presolve": True})
        if res.status != 0 or res.x is None:
            return None
        x = np.round(res.x[: self.m]).astype(int)
        return _make(self.kind, [(t, int(n)) for t, n in zip(self.types, x)])


def min_cost(kind: str, types: list[InstanceType], inventory: dict[str, int], rate_rps: float,
             budget: float | None = None, max_per_pool: int = 64) -> Allocation | None:
    """The cheapest allocation of ``kind`` with analytic capacity >= ``rate_rps`` (None if none)."""
    prog = _Program(kind, types, inventory, budget, max_per_pool)
    if not prog.feasible:
        return None
    # Cheapest first; among equal costs the larger capacity (a tiny secondary term).
    obj = prog.cost.copy()
    best = prog.solve(obj, k_min=rate_rps)
    if best is None:
        return None
    obj2 = np.zeros_like(obj)
    obj2[-1] = -1.0
    tie = prog.solve(obj2, extra=[(prog.cost.copy(), -np.inf, best.usd_per_hour * (1 + 1e-12) + 1e-9)], k_min=rate_rps)
    if tie is not None and tie.usd_per_hour <= best.usd_per_hour * (1 + 1e-9) + 1e-9 and tie.capacity_rps >= best.capacity_rps:
        return tie
    return best


def max_ratio(kind: str, types: list[InstanceType], inventory: dict[str, int], budget: float | None = None,
              max_per_pool: int = 64) -> Allocation | None:
    """The allocation of ``kind`` with the highest capacity per $/h (Dinkelbach), the largest among ties."""
    prog = _Program(kind, types, inventory, budget, max_per_pool)
    if not prog.feasible:
        return None
    lam = 0.0
    best = None
    for _ in range(100):
        obj = lam * prog.cost.copy()
        obj[-1] = -1.0
        sol = prog.solve(obj)
        if sol is None:
            return best
        value = sol.capacity_rps - lam * sol.usd_per_hour
        if best is not None and value <= 1e-9 * max(1.0, sol.capacity_rps):
            break
        best = sol
        lam = sol.ratio
    if best is None:
        return None
    # The largest capacity among allocations within 1e-9 (relative) of the best ratio.
    row = -lam * (1 - 1e-9) * prog.cost.copy()
    row[-1] = 1.0
    obj = np.zeros_like(prog.cost)
    obj[-1] = -1.0
    tie = prog.solve(obj, extra=[(row, 0.0, np.inf)])
    return tie if tie is not None and tie.ratio >= best.ratio * (1 - 1e-9) else best


def pareto_front(kind: str, types: list[InstanceType], inventory: dict[str, int], budget: float | None = None,
                 max_per_pool: int = 64, max_points: int = 400) -> list[Allocation]:
    """Non-dominated (cost, capacity) allocations of ``kind``, cheapest first (at most ``max_points``)."""
    out: list[Allocation] = []
    rate = 1e-12
    for _ in range(max_points):
        sol = min_cost(kind, types, inventory, rate, budget, max_per_pool)
        if sol is None:
            break
        if not out or sol.capacity_rps > out[-1].capacity_rps * (1 + 1e-12):
            if out and sol.usd_per_hour <= out[-1].usd_per_hour * (1 + 1e-12):
                out[-1] = sol
            else:
                out.append(sol)
        # The next point must beat this capacity by more than the solver's feasibility tolerance (1e-7).
        rate = max(rate, sol.capacity_rps) * (1 + 1e-6) + 1e-9
    return out


def enumerate_allocations(kind: str, types: list[InstanceType], inventory: dict[str, int],
                          budget: float | None = None, max_per_pool: int = 64):
    """Every feasible allocation of ``kind`` (brute force), in a deterministic order."""
    roles = ROLES[kind]
    usable = [t for t in types if t.role in roles and _upper(t, inventory, max_per_pool) >= 1]
    per_role = [[t for t in usable if t.role == r] for r in roles]
    for combo in itertools.product(*per_role):
        ranges = [range(1, _upper(t, inventory, max_per_pool) + 1) for t in combo]
        for counts in itertools.product(*ranges):
            used: dict[str, int] = {}
            for t, n in zip(combo, counts):
                used[t.gpu] = used.get(t.gpu, 0) + t.gpus * n
            if any(used[g] > inventory.get(g, 0) for g in used):
                continue
            cost = sum(t.usd_per_hour * n for t, n in zip(combo, counts))
            if budget is not None and cost > budget:
                continue
            yield _make(kind, list(zip(combo, counts)))


def pareto_mask(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """True where no other point has cost <= and value >= with one of them strict."""
    cost, value = np.asarray(cost, float), np.asarray(value, float)
    keep = np.ones(cost.size, bool)
    for i in range(cost.size):
        dom = (cost <= cost[i]) & (value >= value[i]) & ((cost < cost[i]) | (value > value[i]))
        keep[i] = not dom.any()
    return keep
