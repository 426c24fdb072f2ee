"""``pdsim profile``: measure a device and write a profile. torch is imported only when it runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pdsim.errors import ConfigError, PdsimError


def _split(values: list[str] | None) -> tuple[str, ...] | None:
    """Repeatable options that also take comma-separated lists: ``--tp 1,2 --tp 4`` -> ("1", "2", "4")."""
    if not values:
        return None
    out = tuple(v.strip() for item in values for v in item.split(",") if v.strip())
    return out or None


def _ints(values: tuple[str, ...] | None, option: str) -> tuple[int, ...] | None:
    if values is None:
        return None
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise ConfigError(f"{option}: expected integers such as 1,2,4,8, got {','.join(values)!r}") from None


def profile_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Profile directory to write (e.g. gpu_profiles/h100-sxm).")],
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:N (ROCm builds also use cuda).")] = "cpu",
    quick: Annotated[bool, typer.Option("--quick/--full", help="Quick sweep (CI smoke run, < 1 min on a CPU) or full sweep.")] = False,
    models: Annotated[Optional[list[str]], typer.Option("--models", help="Catalog model names or HF config.json paths (repeatable or comma-separated). Default: CPU the tiny validation model; GPU Llama-3.1-8B/70B, Llama-2-70b-hf, Qwen2.5-72B, Mistral-7B-v0.1 (quick: the two Llama-3.1).")] = None,
    tp: Annotated[Optional[str], typer.Option("--tp", help="Tensor-parallel degrees whose shard shapes are timed, e.g. 1,2,4,8 (default: CPU 1; GPU 1,2,4,8).")] = None,
    dtypes: Annotated[Optional[str], typer.Option("--dtypes", help="Dtypes, e.g. bf16,fp16,fp8 (default: CPU fp32; GPU bf16,fp16,fp8 where fp8 is supported).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Largest GEMM m / elementwise num_tokens / prefill seq_len (default: GPU 16384 full, 4096 quick; CPU 4096 full, 1024 quick).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch.set_num_threads on the host (default: torch's default).")] = None,
    tables: Annotated[Optional[str], typer.Option("--tables", help="Only these tables, comma-separated (gemm, attention_prefill, attention_decode, elementwise, memcpy, collective).")] = None,
    note: Annotated[Optional[list[str]], typer.Option("--note", help="A line for profile.yaml's notes, e.g. how quiet the machine was (repeatable).")] = None,
    flush: Annotated[str, typer.Option("--flush", help="How the cache is flushed before each GEMM and attention call: write (fill a buffer twice the last-level cache) or read (sum it; leaves no dirty lines).")] = "write",
    flush_level: Annotated[str, typer.Option("--flush-level", help="Which caches the flush evicts: llc (all: operands come from memory, for models larger than the last-level cache) or l2 (CPU only: the per-core caches, operands come from the last-level cache, for models that fit in it).")] = "llc",
    time_budget_s: Annotated[Optional[float], typer.Option("--time-budget-s", help="Wall-clock budget of the sweep in seconds, shared among the tables; points past a table's share are skipped and counted in the notes (for a borrowed machine).")] = None,
) -> None:
    """Measure GEMM, attention, elementwise, copy and collective latencies on a device with torch and
    write a pdsim profile (format v1, gpu_profiles/README.md)."""
    from pdsim.cli import _fail

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        from profile_tools.runner import ProfileRequest, run_profile

        req = ProfileRequest(
            device=device,
            out=out,
            mode="quick" if quick else "full",
            models=_split(models),
            tps=_ints(_split([tp] if tp else None), "--tp"),
            dtypes=_split([dtypes] if dtypes else None),
            max_tokens=max_tokens,
            threads=threads,
            tables=_split([tables] if tables else None),
            notes=tuple(note or ()),
            time_budget_s=time_budget_s,
            flush=flush,
            flush_level=flush_level,
        )
        run_profile(req, log=log)
    except PdsimError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        _fail(RuntimeError("interrupted"), 130)
