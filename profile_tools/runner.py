"""Run the sweep of ``pdsim profile`` and write the profile (``pdsim.profiles.format.write_profile``)."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pdsim.errors import ConfigError, ProfileError
from pdsim.hardware.gpus import load_gpu_catalog
from pdsim.profiles.format import DTYPES, TABLES, CacheInfo, Profile, ProfileMeta, SoftwareInfo, today, write_profile
from profile_tools.plan import (GPU_DEFAULT_MODELS, GPU_DEFAULT_TPS, GPU_QUICK_MODELS, TABLE_ORDER, Mode, build_plan,
                                resolve_model, tiny_model_path)


@dataclass(frozen=True, slots=True)
class ProfileRequest:
    """The options of one ``pdsim profile`` run (None: the device's default).

    Attributes:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        out: profile directory to write.
        mode: ``quick`` or ``full``.
        models: catalog names or HF config.json paths.
        tps: tensor-parallel degrees.
        dtypes: dtype names (``fp32``, ``bf16``, ``fp16``, ``fp8``).
        max_tokens: cap on GEMM m, elementwise num_tokens and prefill seq_len.
        threads: ``torch.set_num_threads`` (CPU).
        tables: tables to measure (default all).
        notes: lines the user adds to ``profile.yaml``'s notes.
        flush: how the cache is flushed before GEMM and attention calls, ``write`` or ``read``
            (``profile_tools.ops.FLUSH_MODES``).
        flush_level: which caches the flush evicts, ``llc`` (all) or ``l2`` (CPU: the per-core caches
            only, for models that fit in the last-level cache; ``profile_tools.ops.FLUSH_LEVELS``).
        time_budget_s: wall-clock budget of the whole sweep (None: none). Each table gets a share of
            what is left when it starts (``TABLE_BUDGET_WEIGHTS``); points past a table's share are
            skipped and counted in the notes, so a run on a lent machine ends in time with every table
            measured as far as its share allowed.
    """

    device: str
    out: Path
    mode: Mode = "full"
    models: tuple[str, ...] | None = None
    tps: tuple[int, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    max_tokens: int | None = None
    threads: int | None = None
    tables: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()
    time_budget_s: float | None = None
    flush: str = "write"
    flush_level: str = "llc"

    def command(self) -> str:
        """The ``pdsim profile`` command line of these options (defaults left out, as a user types it)."""
        parts = ["pdsim", "profile", "--device", self.device, "--out", str(self.out), f"--{self.mode}"]
        for m in self.models or ():
            parts += ["--models", m]
        if self.tps:
            parts += ["--tp", ",".join(str(t) for t in self.tps)]
        if self.dtypes:
            parts += ["--dtypes", ",".join(self.dtypes)]
        if self.max_tokens is not None:
            parts += ["--max-tokens", str(self.max_tokens)]
        if self.threads is not None:
            parts += ["--threads", str(self.threads)]
        if self.tables:
            parts += ["--tables", ",".join(self.tables)]
        if self.time_budget_s is not None:
            parts += ["--time-budget-s", f"{self.time_budget_s:g}"]
        if self.flush != "write":
            parts += ["--flush", self.flush]
        if self.flush_level != "llc":
            parts += ["--flush-level", self.flush_level]
        for n in self.notes:
            parts += ["--note", n]
        return shlex.join(parts)


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise ProfileError(f"pdsim profile needs torch ({exc}); install it with: pip install 'pdsim[torch]'") from None
    return torch


def _resolve(req: ProfileRequest, gpu: bool) -> ProfileRequest:
    """Fill in the device's defaults and check the options.

    Raises:
        ConfigError: unknown dtype or table, a bad number.
    """
    if req.models:
        models = req.models
    elif gpu:
        models = GPU_DEFAULT_MODELS if req.mode == "full" else GPU_QUICK_MODELS
    else:
        models = (str(tiny_model_path()),)
    tps = req.tps or (GPU_DEFAULT_TPS if gpu else (1,))
    dtypes = req.dtypes or (("bf16", "fp16", "fp8") if gpu else ("fp32",))
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise ConfigError(f"--dtypes: unknown dtype(s) {unknown}; expected some of {list(DTYPES)}")
    tables = req.tables or TABLE_ORDER
    bad = [t for t in tables if t not in TABLE_ORDER]  # the tables this tool measures (not moe)
    if bad:
        raise ConfigError(f"--tables: unknown table(s) {bad}; expected some of {list(TABLE_ORDER)}")
    if req.threads is not None and req.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {req.threads}")
    if req.max_tokens is not None and req.max_tokens < 1:
        raise ConfigError(f"--max-tokens must be >= 1, got {req.max_tokens}")
    from profile_tools.ops import FLUSH_LEVELS, FLUSH_MODES

    if req.flush not in FLUSH_MODES:
        raise ConfigError(f"--flush must be one of {list(FLUSH_MODES)}, got {req.flush!r}")
    if req.flush_level not in FLUSH_LEVELS:
        raise ConfigError(f"--flush-level must be one of {list(FLUSH_LEVELS)}, got {req.flush_level!r}")
    if gpu and req.flush_level != "llc":
        raise ConfigError(f"--flush-level {req.flush_level}: a GPU's L2 is its last-level cache; use --flush-level llc")
    if req.time_budget_s is not None and not req.time_budget_s > 0:
        raise ConfigError(f"--time-budget-s must be > 0, got {req.time_budget_s}")
    return ProfileRequest(req.device, req.out, req.mode, tuple(models), tuple(tps), tuple(dict.fromkeys(dtypes)),
                          req.max_tokens, req.threads, tuple(t for t in TABLE_ORDER if t in tables), req.notes,
                          req.time_budget_s, req.flush, req.flush_level)


TABLE_BUDGET_WEIGHTS = {"gemm": 5.0, "attention_prefill": 2.0, "attention_decode": 2.0, "elementwise": 1.0,
                        "memcpy": 0.5, "collective": 1.0}
"""Relative shares of ``--time-budget-s``: a table starting with ``left`` seconds of budget may use
``left x its weight / (sum of the weights of it and the tables after it)``; time it does not use passes
on to the later tables."""


def table_deadline(tables: tuple[str, ...], index: int, started_s: float, budget_s: float | None,
                   now_s: float) -> float | None:
    """The ``time.perf_counter()`` deadline of ``tables[index]`` under a sweep budget (None: no budget)."""
    if budget_s is None:
        return None
    left = max(0.0, started_s + budget_s - now_s)
    rest = sum(TABLE_BUDGET_WEIGHTS[t] for t in tables[index:])
    return now_s + left * TABLE_BUDGET_WEIGHTS[tables[index]] / rest


def _model_label(given: str, spec) -> str:
    """A model's name, with its config path (relative to the source checkout when inside it)."""
    path = Path(given)
    if not path.exists():
        return spec.name
    try:
        shown = path.resolve().relative_to(Path(__file__).resolve().parents[1])
    except ValueError:
        shown = path
    return f"{spec.name} ({shown})"


def run_profile(req: ProfileRequest, log: Callable[[str], None] = lambda s: None) -> Profile:
    """Measure the tables of ``req`` on its device and write the profile directory ``req.out``.

    Raises:
        ProfileError: torch missing, device unknown or unusable.
        ConfigError: unknown model, dtype or table, bad numbers.
    """
    torch = _import_torch()
    from profile_tools.device import parse_device, probe_device
    from profile_tools.ops import BenchContext, make_flush, sdpa_supports_gqa
    from profile_tools.timing import CudaEventClock, HostClock, Timer

    command = req.command()
    spec = parse_device(req.device)
    info = probe_device(torch, spec, set(load_gpu_catalog()))
    req = _resolve(req, info.is_gpu)
    if req.threads is not None:
        torch.set_num_threads(req.threads)
    models = [resolve_model(m) for m in req.models]
    plan = build_plan("gpu" if info.is_gpu else "cpu", req.mode, models, list(req.tps), list(req.dtypes), req.max_tokens)
    device = torch.device(spec.torch_name)
    if info.is_gpu:
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    clock = CudaEventClock(torch, device) if info.is_gpu else HostClock()
    timer = Timer(clock, plan.timing)
    flush = make_flush(torch, info, device, req.flush, req.flush_level)
    sweep = (f"sweep: models {', '.join(_model_label(m, s) for m, s in zip(req.models, models))}; "
             f"TP {', '.join(map(str, req.tps))}; dtypes {', '.join(req.dtypes)}; up to {plan.max_tokens} tokens per batch")
    ctx = BenchContext(torch, device, info, timer, flush.fn, log, notes=[*req.notes, sweep, *plan.notes])
    ctx.notes.append(flush.note)
    if isinstance(clock, CudaEventClock):  # how ops without a flush are timed on a GPU
        ctx.notes.append(clock.method_note)
    if not info.is_gpu:  # the same allocator behaviour as the live engine (pdsim.live.hostmem)
        from pdsim.live.hostmem import retain_freed_memory

        alloc = retain_freed_memory()
        ctx.notes.append(f"host allocator: {alloc['allocator']}, freed memory "
                         + ("retained (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)" if alloc["retain_freed_memory"]
                            else f"returned to the OS ({alloc['reason']})"))
    gqa_native = sdpa_supports_gqa(torch)
    gqa = "enable_gqa=True" if gqa_native else "repeat_interleave of K/V (HF repeat_kv)"
    ctx.notes.append(f"attention: torch SDPA, GQA via {gqa}")
    num_threads = torch.get_num_threads() if not info.is_gpu else None
    log(f"pdsim profile: {info.device_name} ({info.device_type}), {req.mode} mode, models {[m.name for m in models]}, "
        f"TP {list(req.tps)}, dtypes {list(req.dtypes)}" + (f", {num_threads} threads" if num_threads else ""))

    tables: dict[str, pd.DataFrame] = {}
    started = time.perf_counter()
    for index, table in enumerate(req.tables):
        t0 = time.perf_counter()
        ctx.table = table
        ctx.deadline_s = table_deadline(req.tables, index, started, req.time_budget_s, t0)
        log(f"{table}: measuring ..." + ("" if ctx.deadline_s is None else f" (budget {ctx.deadline_s - t0:.0f} s)"))
        try:
            rows = _measure_table(table, ctx, plan, req, info, gqa_native)
        except (ConfigError, ProfileError):
            raise
        except Exception as exc:  # noqa: BLE001 - one failing table must not lose the others' measurements
            if not info.is_gpu:
                raise
            import traceback

            log(traceback.format_exc())
            ctx.notes.append(f"{table}: not measured, it failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            rows = []
        if rows:
            df = pd.DataFrame(rows)
            if df.duplicated(subset=list(TABLES[table][0])).any():
                df = df.drop_duplicates(subset=list(TABLES[table][0]), keep="first")
            tables[table] = df
        log(f"{table}: {len(rows)} points in {time.perf_counter() - t0:.1f} s")
        if info.is_gpu:
            torch.cuda.empty_cache()
    ctx.table = ""
    ctx.deadline_s = None
    cache = CacheInfo(flush=flush.mode, flush_level=flush.level, flush_bytes=flush.flush_bytes, llc_bytes=flush.llc_bytes)
    return _finish(req, info, ctx, timer, tables, command, num_threads, started, log, cache)


def _measure_table(table: str, ctx, plan, req: ProfileRequest, info, gqa_native: bool) -> list[dict]:
    """The rows of one table (``gqa_native``: SDPA takes ``enable_gqa``)."""
    from profile_tools.collective import bench_collectives
    from profile_tools.ops import bench_attention_decode, bench_attention_prefill, bench_elementwise, bench_gemm, bench_memcpy

    if table == "gemm":
        return bench_gemm(ctx, plan, list(req.dtypes))
    if table == "attention_prefill":
        return bench_attention_prefill(ctx, plan, list(req.dtypes), gqa_native)
    if table == "attention_decode":
        return bench_attention_decode(ctx, plan, list(req.dtypes), gqa_native)
    if table == "elementwise":
        return bench_elementwise(ctx, plan, list(req.dtypes))
    if table == "memcpy":
        return bench_memcpy(ctx, plan)
    coll_dtype = next((d for d in req.dtypes if d in ("bf16", "fp16")), "bf16") if info.is_gpu else "fp32"
    return bench_collectives(gpu=info.is_gpu, rocm=info.device_type == "rocm", device_count=info.device_count,
                             sizes=plan.collective_bytes, dtype=coll_dtype, policy=plan.timing, log=ctx.log,
                             notes=ctx.notes)


def _finish(req: ProfileRequest, info, ctx, timer, tables: dict[str, pd.DataFrame], command: str,
            num_threads: int | None, started: float, log: Callable[[str], None], cache: CacheInfo | None = None) -> Profile:
    """Write the profile directory of the measured ``tables`` (see ``run_profile``)."""
    if not tables:
        raise ProfileError(f"{req.out}: nothing was measured (tables {list(req.tables)}): " + "; ".join(ctx.notes[-3:]))
    for reason, n in sorted(ctx.skipped.items()):
        ctx.notes.append(f"{n} point(s) skipped: {reason}")
    uncovered = getattr(timer.clock, "uncovered_calls", 0)
    if uncovered:
        ctx.notes.append(f"{uncovered} unflushed call(s) could not be kept behind a spin kernel and were timed back "
                         "to back (their latency may include the host's launch time)")
    if not info.is_gpu:
        ctx.notes.append(
            f"host contention: {timer.remeasured} point(s) re-measured because other processes used the CPU; "
            f"{timer.still_contended} still contended after retries (column other_cpu_util = their share of all cores; "
            "empty where a point was too short to tell and showed no clear contention)"
        )
    missing = [t for t in TABLE_ORDER if t not in tables]
    if missing:
        ctx.notes.append(f"tables not in this profile: {missing}")

    meta = ProfileMeta(
        name=Path(req.out).resolve().name,
        source_kind="measured",
        device_type=info.device_type,
        vendor=info.vendor,
        device_name=info.device_name,
        gpu=info.gpu,
        memory_bytes=info.memory_bytes,
        device_count=info.device_count,
        num_threads=num_threads,
        date=today(),
        command=command,
        software=SoftwareInfo(**info.software),
        mode=req.mode,
        cache=cache,
        notes="\n".join(dict.fromkeys(ctx.notes)),
    )
    for line in dict.fromkeys(ctx.notes):
        log(f"note: {line}")
    out = Path(req.out)
    if out.is_dir():  # a re-run replaces the tables; a table not measured this time must not linger
        for table in TABLES:
            stale = out / f"{table}.parquet"
            if table not in tables and stale.is_file():
                stale.unlink()
    profile = write_profile(out, meta, tables)
    log(f"wrote {out} ({sum(len(d) for d in tables.values())} rows, {time.perf_counter() - started:.0f} s)")
    return profile
