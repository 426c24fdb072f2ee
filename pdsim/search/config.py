"""The search YAML (``pdsim search``), as pydantic models (unknown keys are errors).

A search file is an experiment without ``deployments``: a model, SLOs, scheduler defaults, named
``latency_models``, one ``workload`` (whose rate the goodput bisection sets), and a ``search:`` block
with the GPU inventory and the space to explore. The model, SLO, scheduler, latency, link and workload
types are those of ``pdsim.config.schema`` (one schema, one set of defaults)::

    search:
      inventory:
        - {gpu: H100-SXM, count: 16, latency: h100}                     # catalog price
        - {gpu: MI300X, count: 8, price_usd_per_gpu_hour: 2.0, latency: mi300x}
      tp: [1, 2, 4, 8]
      pp: [1]
      kinds: [colocated, disaggregated]
      kv_link: {kind: infiniband, bandwidth_gbps: 400}
      budget_usd_per_hour: 150          # optional
      target_rate_rps: 10               # optional: also find the cheapest deployment sustaining it
      rate_tolerance: 0.05              # bisection stops when (hi - lo) / lo <= this
      max_finalists: 6                  # shapes confirmed by simulation (smart strategy)

See docs/search.md for what each step does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pdsim.config.load import apply_overrides, format_validation_error, read_yaml_mapping
from pdsim.config.schema import (
    ExperimentHeader,
    LatencyConfig,
    LinkConfig,
    RouterName,
    SchedulerOverrides,
    _Strict,
)
from pdsim.config.workload import (
    ClosedLoopWorkload,
    GammaWorkload,
    PoissonWorkload,
    WorkloadSpec,
)
from pdsim.errors import ConfigError

__all__ = ["InventoryItem", "LoadedSearch", "SearchConfig", "SearchSpace", "load_search_file"]


class InventoryItem(_Strict):
    """GPUs of one type available to the search.

    Attributes:
        gpu: a GPU name from ``pdsim/data/gpu_specs.csv``.
        count: how many GPUs of this type exist (all deployments' pools together may use at most this).
        price_usd_per_gpu_hour: overrides the catalog price.
        latency: the latency model of instances on this GPU, inline or a ``latency_models`` name.
        scheduler: per-GPU-type overrides of the scheduler defaults.
    """

    gpu: str
    count: int = Field(ge=1)
    price_usd_per_gpu_hour: float | None = Field(default=None, ge=0)
    latency: LatencyConfig | str
    scheduler: SchedulerOverrides = SchedulerOverrides()


class SearchSpace(_Strict):
    """What the search may choose, and how hard it looks.

    Attributes:
        inventory: GPU types, their counts and latency models (at least one).
        tp / pp: tensor- and pipeline-parallel degrees tried for every pool.
        kinds: deployment layouts searched.
        kv_link: the KV link of every disaggregated candidate (per instance port).
        router: router of every pool.
        budget_usd_per_hour: most $/h a deployment may cost (None: only the inventory limits).
        target_rate_rps: if set, also find the cheapest deployment whose goodput is >= this rate.
        strategy: ``smart`` (prune, bound analytically, integer program, simulate finalists) or
            ``exhaustive`` (simulate every deployment that fits memory, inventory and budget; for
            checking ``smart`` on small cases).
        rate_tolerance: the goodput bisection stops when ``(hi - lo) / lo <= rate_tolerance``, ``lo`` the
            highest rate that met the attainment target, ``hi`` the lowest that did not.
        max_finalists: deployment shapes (kind x instance types) simulated by the ``smart`` strategy;
            half (rounded up) are reserved for each kind when both are searched.
        max_probes: most simulations per goodput bisection.
        max_instances_per_pool: cap on instances of one pool (bounds the exhaustive enumeration and the
            integer program).
    """

    inventory: list[InventoryItem] = Field(min_length=1)
    tp: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], min_length=1)
    pp: list[int] = Field(default_factory=lambda: [1], min_length=1)
    kinds: list[Literal["colocated", "disaggregated"]] = Field(
        default_factory=lambda: ["colocated", "disaggregated"], min_length=1)
    kv_link: LinkConfig = LinkConfig()
    router: RouterName = "least_tokens"
    budget_usd_per_hour: float | None = Field(default=None, gt=0)
    target_rate_rps: float | None = Field(default=None, gt=0)
    strategy: Literal["smart", "exhaustive"] = "smart"
    rate_tolerance: float = Field(default=0.05, gt=0, lt=1)
    max_finalists: int = Field(default=6, ge=1)
    max_probes: int = Field(default=14, ge=2)
    max_instances_per_pool: int = Field(default=64, ge=1)

    @field_validator("tp", "pp")
    @classmethod
    def _positive_unique(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError(f"every degree must be >= 1, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate degree in {v}")
        return sorted(v)

    @field_validator("kinds")
    @classmethod
    def _unique_kinds(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate kind in {v}")
        return v

    @model_validator(mode="after")
    def _unique_gpus(self):
        seen: set[str] = set()
        for i, item in enumerate(self.inventory):
            if item.gpu in seen:
                raise ValueError(f"inventory[{i}].gpu: {item.gpu!r} listed twice (give one entry per GPU type)")
            seen.add(item.gpu)
        return self


class SearchConfig(ExperimentHeader):
    """A whole search file (see the module docstring).

    The workload's rate (``rate_rps`` of a synthetic workload, ``rate_scale`` of a trace) is replaced
    by each bisection probe; a synthetic workload must give ``num_requests`` (not ``duration_s``) so
    that every probe simulates the same requests, only compressed or stretched in time.
    """

    workload: WorkloadSpec
    search: SearchSpace

    @model_validator(mode="after")
    def _check(self):
        for i, item in enumerate(self.search.inventory):
            self.named_latency(item.latency, f"search.inventory[{i}].latency")  # unknown names fail here
        wl = self.workload
        if isinstance(wl, ClosedLoopWorkload):  # docs/workloads.md
            raise ValueError(
                f"workload.kind: the goodput search bisects an offered request rate, which a closed loop "
                f"does not have (its rate is an outcome); use trace, poisson or gamma, got {wl.kind!r}")
        if isinstance(wl, (PoissonWorkload, GammaWorkload)) and wl.num_requests is None:
            raise ValueError(
                f"workload.duration_s: the search needs num_requests (every probe simulates the same "
                f"requests at a different rate), got duration_s={wl.duration_s}")
        return self


@dataclass(frozen=True)
class LoadedSearch:
    """A validated search file and where it came from."""

    config: SearchConfig
    path: Path

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def load_search_file(path: Path | str, overrides: list[str] | None = None) -> LoadedSearch:
    """Read, override (``--set key.path=value``) and validate a search YAML.

    Raises:
        ConfigError: missing file, bad YAML, unknown key or bad value (naming the file, field and value).
    """
    path = Path(path)
    data = read_yaml_mapping(path, "search")
    if "deployments" in data:
        raise ConfigError(f"{path}: deployments: a search file has no deployments (the search chooses them); "
                          f"did you mean `pdsim run {path}`?")
    apply_overrides(data, overrides or [], str(path))
    try:
        config = SearchConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(path), err, data)) from None
    return LoadedSearch(config=config, path=path)
