"""``pdsim validate EXPERIMENT.yaml``: one file that says how to validate the simulator against the live
engine on this machine: profile (or use a named profile), measure the engine's per-iteration overhead (or
read / give it), run the trace live (colocated or disaggregated), simulate the same model, deployment and
requests, and write the report (``pdsim.live.validate.validate``).

The YAML (unknown keys are errors; paths relative to the file's directory)::

    name: validate-cpu
    mode: colocated                    # or disaggregated (a prefill and a decode worker process)
    trace: ../traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv
    max_requests: 300                  # trace_format, rate_scale, window_start_s, window_duration_s too
    rate_scale: 1.1
    max_prompt_tokens: 512
    max_output_tokens: 64
    threads: 2                         # torch threads (disaggregated: per worker)
    engine: {dtype: fp32, max_num_batched_tokens: 8192, kv_capacity_tokens: 32768}   # EngineSettings
    profile: {name: cpu-epyc-2c}       # or {measure: quick | full} (into OUT/profile), or {} (this CPU's)
    iteration_overhead: {file: ../benchmarks/results/engine_overhead_cpu-epyc-2c.json}
                                       # or {value_s: 0.001}, {measure: true} (before the live run), {};
                                       # model: additive | by_phase | scaled | host_floor (how a grid's figures are charged)
    slo: {ttft_s: 1.0, tpot_s: 0.1}
    out: ../results/validate-cpu       # the CLI's --out overrides it

OUT gets ``live/`` (the ``pdsim live`` run directory), ``validate/`` (the report), and ``profile/`` /
``engine_overhead.json`` when those were measured. torch is imported only when the run starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pdsim.config.load import read_yaml_mapping
from pdsim.config.schema import SloConfig
from pdsim.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineSettings(_Strict):
    """The engine knobs (``pdsim live``'s options of the same names; both workers of a disaggregated run
    get them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_config_path: str | None = Field(default=None, alias="model_config")
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    max_num_batched_tokens: int = Field(default=8192, ge=1)
    max_num_seqs: int = Field(default=256, ge=1)
    block_size: int = Field(default=16, ge=1)
    kv_capacity_tokens: int = Field(default=32768, ge=1)
    watermark_fraction: float = Field(default=0.01, ge=0, lt=0.5)
    chunked_prefill: bool = False


class ProfileChoice(_Strict):
    """``name``: a profile under the search roots; ``measure``: sweep this machine first (``pdsim
    profile --device cpu --threads <threads>``, quick or full, into OUT/profile); neither: the CPU
    profile whose thread count matches ``threads``. ``flush_level`` (with ``measure``): the sweep's
    ``--flush-level``; ``auto`` takes ``pdsim.latency.oplevel.suggested_flush_level`` of the engine's
    model on this host's last-level cache (``l2`` when its weights fit in half of it)."""

    name: str | None = None
    measure: Literal["quick", "full"] | None = None
    flush_level: Literal["auto", "llc", "l2"] = "auto"

    @model_validator(mode="after")
    def _one(self):
        if self.name is not None and self.measure is not None:
            raise ValueError("give profile.name or profile.measure, not both")
        return self


class OverheadChoice(_Strict):
    """``iteration_overhead_s`` of the simulation: ``file`` (JSON of ``measure_cpu_iterations.py
    --engine-overhead``), ``value_s``, or ``measure: true`` (``pdsim.live.overhead`` on its default grid,
    in this process with ``threads`` threads, before the live run); none: 0. ``model`` (with ``file`` or
    ``measure``): how the grid's figure is charged, ``pdsim.live.validate.OVERHEAD_MODELS``."""

    file: str | None = None
    value_s: float | None = Field(default=None, ge=0)
    measure: bool = False
    model: Literal["additive", "by_phase", "scaled", "host_floor"] = "additive"

    @model_validator(mode="after")
    def _one(self):
        if sum((self.file is not None, self.value_s is not None, self.measure)) > 1:
            raise ValueError("give one of iteration_overhead.file, .value_s, .measure")
        return self


class ValidationExperiment(_Strict):
    """A live validation (see the module docstring)."""

    name: str
    mode: Literal["colocated", "disaggregated"] = "colocated"
    trace: str
    trace_format: str = "auto"
    rate_scale: float = Field(default=1.0, gt=0)
    max_requests: int | None = Field(default=None, ge=1)
    window_start_s: float = Field(default=0.0, ge=0)
    window_duration_s: float | None = Field(default=None, gt=0)
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    threads: int | None = Field(default=None, ge=1)
    engine: EngineSettings = EngineSettings()
    profile: ProfileChoice = ProfileChoice()
    iteration_overhead: OverheadChoice = OverheadChoice()
    slo: SloConfig = SloConfig(ttft_s=1.0, tpot_s=0.1)
    out: str | None = None


def load_validation_experiment(path: Path) -> ValidationExperiment:
    """Read and check the YAML. Raises ConfigError naming the file, the field and the value."""
    raw = read_yaml_mapping(path, "validation")
    try:
        return ValidationExperiment.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}, got {err.get('input')!r}") from None


def run_validation_experiment(path: Path, out: Path | None = None, echo=print):
    """Profile / measure as asked, run live, validate; returns the comparison table.

    Raises:
        ConfigError / ProfileError: bad input (before anything runs where it can be checked).
    """
    from pdsim.live.cli import _live
    from pdsim.live.validate import _overhead_option, validate

    exp = load_validation_experiment(path)
    base = path.parent

    def rel(p: str | None) -> Path | None:
        return None if p is None else (Path(p) if Path(p).is_absolute() else base / p)

    out = out or rel(exp.out) or Path("results") / f"validate-{exp.name}"
    threads = exp.threads or (1 if exp.mode == "disaggregated" else None)
    e = exp.engine
    model_config = rel(e.model_config_path)
    overhead_file = rel(exp.iteration_overhead.file)
    if overhead_file is not None and not overhead_file.is_file():
        raise ConfigError(f"{path}: iteration_overhead.file: file not found: {overhead_file}")
    profile_name = exp.profile.name
    out.mkdir(parents=True, exist_ok=True)
    if exp.profile.measure is not None:
        from profile_tools.runner import ProfileRequest, run_profile

        prof_dir = out / "profile"
        level = exp.profile.flush_level
        if level == "auto":
            level = _flush_level_for(model_config, e.dtype)
        echo(f"profiling this CPU ({exp.profile.measure}, {threads or 'default'} threads, flush level {level}) into {prof_dir}")
        run_profile(ProfileRequest(device="cpu", out=prof_dir, mode=exp.profile.measure,
                                   models=(str(model_config),) if model_config else None, threads=threads,
                                   notes=(f"measured by pdsim validate {path}",), flush_level=level))
        profile_name = str(prof_dir)
    overrides = {}
    if exp.iteration_overhead.measure:
        overhead_file = out / "engine_overhead.json"
        _measure_overhead(exp, model_config, threads, profile_name, overhead_file, echo)
    if overhead_file is not None:
        overrides = _overhead_option(0.0, overhead_file, exp.iteration_overhead.model)
    elif exp.iteration_overhead.value_s is not None:
        overrides = {"iteration_overhead_s": exp.iteration_overhead.value_s,
                     "iteration_overhead_source": f"{path}: iteration_overhead.value_s"}
    live_dir = out / "live"
    _live(trace=rel(exp.trace), trace_format=exp.trace_format, rate_scale=exp.rate_scale,
          max_requests=exp.max_requests, window_start_s=exp.window_start_s, window_duration_s=exp.window_duration_s,
          max_prompt_tokens=exp.max_prompt_tokens, max_output_tokens=exp.max_output_tokens, out=live_dir,
          model_config=model_config, dtype=e.dtype, device="cpu", seed=e.seed,
          max_num_batched_tokens=e.max_num_batched_tokens, max_num_seqs=e.max_num_seqs, block_size=e.block_size,
          kv_capacity_tokens=e.kv_capacity_tokens, kv_capacity_blocks=None, watermark_fraction=e.watermark_fraction,
          chunked_prefill=e.chunked_prefill,
          ttft_slo_s=exp.slo.ttft_s, tpot_slo_s=exp.slo.tpot_s, slo_percentile=exp.slo.percentile, threads=threads,
          mode=exp.mode)
    return validate(live_dir, out / "validate", profile=profile_name, overrides=overrides, echo=echo), out


def _flush_level_for(model_config: Path | None, dtype: str) -> str:
    """``suggested_flush_level`` of the engine's model (default: the tiny Llama) on this host's LLC."""
    from pdsim.latency.oplevel import suggested_flush_level
    from pdsim.live.engine import load_model_config
    from pdsim.models.arch import dtype_bytes, model_from_hf_config
    from profile_tools.device import last_level_cache_bytes

    spec = model_from_hf_config(model_config.stem if model_config else "pdsim-tiny-llama", load_model_config(model_config))
    return suggested_flush_level(spec.weight_bytes_per_gpu(1, 1, dtype_bytes(dtype)), last_level_cache_bytes())


def _measure_overhead(exp: ValidationExperiment, model_config: Path | None, threads: int | None,
                      profile_name: str | None, dest: Path, echo) -> None:
    """``pdsim.live.overhead`` on its default grid, in this process, written to ``dest`` (JSON)."""
    import torch

    from pdsim.latency.oplevel import OpLevelModel
    from pdsim.live.engine import EngineConfig, LiveEngine, load_model_config
    from pdsim.live.overhead import measure_engine_overhead
    from pdsim.live.validate import find_cpu_profile
    from pdsim.models.arch import dtype_bytes, model_from_hf_config
    from profile_tools.device import cpu_vendor_and_name

    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        hf = load_model_config(model_config)
        spec = model_from_hf_config(model_config.stem if model_config else "pdsim-tiny-llama", hf)
        prof = find_cpu_profile(torch.get_num_threads(), profile_name, cpu_name=cpu_vendor_and_name()[1],
                                weight_bytes=spec.weight_bytes_per_gpu(1, 1, dtype_bytes(exp.engine.dtype)))
        latency = OpLevelModel([prof], spec, tp=1, pp=1, dtype=exp.engine.dtype, gpu=None, iteration_overhead_s=0.0)
        engine = LiveEngine(EngineConfig(model_config=None if model_config is None else str(model_config),
                                         dtype=exp.engine.dtype, seed=exp.engine.seed))
        echo(f"measuring the engine's iteration overhead against {prof.name} ({torch.get_num_threads()} threads)")
        summary, df = measure_engine_overhead(engine, latency)
        summary.update({"profile": prof.name, "threads": torch.get_num_threads(), "torch_version": torch.__version__})
    finally:
        torch.set_num_threads(old)
    dest.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    df.to_csv(dest.with_suffix(".csv"), index=False)
    echo(f"iteration_overhead_s = {summary['iteration_overhead_s'] * 1e3:.3f} ms ({dest})")
