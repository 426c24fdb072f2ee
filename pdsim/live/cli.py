"""``pdsim live``: replay a trace in real time on the reference engine (colocated, or disaggregated: a
prefill and a decode worker process with a real KV transfer) and write a run directory. torch is
imported only when the command runs."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from pdsim.errors import ConfigError, PdsimError


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _ms(v: float) -> str:
    return "-" if v != v else f"{v * 1e3:.1f}"


def live_command(
    trace: Annotated[Path, typer.Option("--trace", help="Request trace (azure / csv / mooncake / jsonl; see pdsim.workload.load_trace).")],
    trace_format: Annotated[str, typer.Option("--trace-format", help="Trace format (auto, azure, mooncake, csv, jsonl).")] = "auto",
    rate_scale: Annotated[float, typer.Option("--rate-scale", help="Request-rate multiplier: arrival times are divided by it.")] = 1.0,
    max_requests: Annotated[Optional[int], typer.Option("--max-requests", help="Replay at most this many requests.")] = None,
    window_start_s: Annotated[float, typer.Option("--window-start-s", help="Start of the replayed window on the trace's time axis (s).")] = 0.0,
    window_duration_s: Annotated[Optional[float], typer.Option("--window-duration-s", help="Length of the window in trace seconds (default: to the end).")] = None,
    max_prompt_tokens: Annotated[Optional[int], typer.Option("--max-prompt-tokens", help="Cap every prompt at this many tokens (for quick runs and tests).")] = None,
    max_output_tokens: Annotated[Optional[int], typer.Option("--max-output-tokens", help="Cap every output at this many tokens (for quick runs and tests).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default results/live-<trace>-<timestamp>).")] = None,
    model_config: Annotated[Optional[Path], typer.Option("--model-config", help="HF config.json of a Llama-architecture model (default: pdsim's tiny Llama).")] = None,
    dtype: Annotated[str, typer.Option(help="fp32, bf16 or fp16.")] = "fp32",
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:N.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of the weights and the prompt token ids.")] = 0,
    max_num_batched_tokens: Annotated[int, typer.Option("--max-num-batched-tokens", help="Token budget of one iteration.")] = 8192,
    max_num_seqs: Annotated[int, typer.Option("--max-num-seqs", help="Most requests in one iteration.")] = 256,
    block_size: Annotated[int, typer.Option("--block-size", help="Tokens per KV block.")] = 16,
    kv_capacity_tokens: Annotated[Optional[int], typer.Option("--kv-capacity-tokens", help="KV capacity in tokens (rounded down to whole blocks). Default 32768.")] = None,
    kv_capacity_blocks: Annotated[Optional[int], typer.Option("--kv-capacity-blocks", help="KV capacity in blocks (instead of --kv-capacity-tokens).")] = None,
    watermark_fraction: Annotated[float, typer.Option("--watermark-fraction", help="Fraction of KV blocks kept free when admitting prefills.")] = 0.01,
    ttft_slo_s: Annotated[float, typer.Option("--ttft-slo-s", help="TTFT target (s) for SLO attainment.")] = 1.0,
    tpot_slo_s: Annotated[float, typer.Option("--tpot-slo-s", help="TPOT target (s) for SLO attainment.")] = 0.1,
    slo_percentile: Annotated[float, typer.Option("--slo-percentile", help="Percentile judged against the SLOs.")] = 90.0,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch.set_num_threads (colocated default: torch's default; disaggregated: per worker, default 1).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="colocated (one engine) or disaggregated (a prefill and a decode worker process, KV sent over torch.distributed gloo).")] = "colocated",
) -> None:
    """Replay a trace in real time on the reference engine (a real torch Llama, continuous batching with
    the simulator's scheduler; colocated or prefill/decode disaggregated) and write requests.csv /
    summary.csv / tokens.csv / iterations*.csv (and transfers.csv when disaggregated)."""
    try:
        _live(**locals())
    except PdsimError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _live(*, trace, trace_format, rate_scale, max_requests, window_start_s, window_duration_s, max_prompt_tokens,
          max_output_tokens, out, model_config, dtype, device, seed, max_num_batched_tokens, max_num_seqs, block_size,
          kv_capacity_tokens, kv_capacity_blocks, watermark_fraction, ttft_slo_s, tpot_slo_s, slo_percentile,
          threads, mode="colocated") -> None:
    from pdsim.live.workload import slo_config, trace_requests
    from pdsim.metrics.records import requests_frame
    from pdsim.metrics.summary import summarize, summarize_one

    if kv_capacity_tokens is not None and kv_capacity_blocks is not None:
        raise ConfigError("give --kv-capacity-tokens or --kv-capacity-blocks, not both")
    if block_size < 1:
        raise ConfigError(f"--block-size must be >= 1, got {block_size}")
    if kv_capacity_blocks is None:
        tokens = 32768 if kv_capacity_tokens is None else kv_capacity_tokens
        if tokens < block_size:
            raise ConfigError(f"--kv-capacity-tokens must hold at least one block ({block_size} tokens), got {tokens}")
        kv_capacity_blocks = tokens // block_size
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    if mode not in ("colocated", "disaggregated"):
        raise ConfigError(f"--mode must be colocated or disaggregated, got {mode!r}")
    spec, workload = trace_requests(trace=trace, trace_format=trace_format, rate_scale=rate_scale,
                                    window_start_s=window_start_s, window_duration_s=window_duration_s,
                                    max_requests=max_requests, max_prompt_tokens=max_prompt_tokens,
                                    max_output_tokens=max_output_tokens, seed=seed)
    slo = slo_config(ttft_slo_s, tpot_slo_s, slo_percentile)

    import torch

    from pdsim.live.engine import EngineConfig, LiveEngine, manifest

    if threads is not None and mode == "colocated":
        torch.set_num_threads(threads)
    config = EngineConfig(
        model_config=None if model_config is None else str(model_config), dtype=dtype, device=device, seed=seed,
        max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs, block_size=block_size,
        kv_capacity_blocks=kv_capacity_blocks, watermark_fraction=watermark_fraction)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available in this torch build")
    if mode == "disaggregated":
        from pdsim.live.disagg import DisaggregatedEngine

        used_threads = 1 if threads is None else threads
        engine = DisaggregatedEngine(config, config, threads=used_threads)
        where = f"a prefill and a decode worker, {used_threads} thread(s) each, KV over gloo"
    else:
        engine = LiveEngine(config)
        used_threads = torch.get_num_threads()
        where = f"{used_threads} threads"
    for r in workload.itertuples(index=False):  # refuse before printing anything else
        engine.check_request(int(r.request_id), int(r.prompt_tokens), int(r.output_tokens))
    typer.echo(f"live: {len(workload)} requests from {trace} over {float(workload['arrival_s'].max()):.2f} s "
               f"(rate x{rate_scale}), {mode}, KV {config.kv_capacity_tokens} tokens per instance, {where}")
    result = engine.run(workload)

    name = trace.stem
    requests = requests_frame(result.requests, deployment="live", workload=name)
    row = summarize_one(requests, kind=mode, gpus=(1 if mode == "colocated" else 2) if device.startswith("cuda") else 0,
                        usd_per_hour=0.0, slo=slo, latency_sources="live")
    summary = summarize([{"deployment": "live", "workload": name, **row}])

    run_dir = out or Path("results") / f"live-{name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    requests.to_csv(run_dir / "requests.csv", index=False)
    requests.to_parquet(run_dir / "requests.parquet", index=False)
    summary.to_csv(run_dir / "summary.csv", index=False)
    if mode == "disaggregated":
        for role in ("prefill", "decode"):
            result.worker_iterations_frame(role).to_csv(run_dir / f"iterations_{role}.csv", index=False)
        result.transfers_frame().to_csv(run_dir / "transfers.csv", index=False)
        iterations = sum(len(v) for v in result.worker_iterations.values())
        extra = {"mode": "disaggregated", "workers": {"prefill": asdict(config), "decode": asdict(config)},
                 "kv_transfer": "torch.distributed gloo send/recv over loopback TCP"}
    else:
        result.iterations_frame().to_csv(run_dir / "iterations.csv", index=False)
        iterations = len(result.iterations)
        extra = {}
    result.tokens_frame().to_csv(run_dir / "tokens.csv", index=False)
    man = manifest(config, command=sys.argv, threads=used_threads, extra={
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "workload": spec.model_dump(mode="json"),
        "max_prompt_tokens": max_prompt_tokens, "max_output_tokens": max_output_tokens,
        "slo": slo.model_dump(mode="json"), "wall_s": result.wall_s, "iterations": iterations,
        "preemptions": result.preemptions, **extra,
    })
    (run_dir / "manifest.json").write_text(json.dumps(man, indent=2, default=str))

    s = summary.iloc[0]
    typer.echo(f"completed {int(s['completed'])}/{int(s['requests'])} in {result.wall_s:.2f} s, "
               f"{iterations} iterations, {result.preemptions} preemptions")
    typer.echo(f"TTFT p50/p90 ms: {_ms(s['ttft_p50_s'])}/{_ms(s['ttft_p90_s'])}   "
               f"TPOT p50/p90 ms: {_ms(s['tpot_p50_s'])}/{_ms(s['tpot_p90_s'])}   "
               f"SLO attainment {s['slo_attainment'] * 100:.1f}%   {s['output_tokens_per_s']:.0f} tok/s")
    typer.echo(f"run directory: {run_dir}")
