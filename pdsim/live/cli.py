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
from pdsim.live import options as opts


def live_command(
    trace: opts.Trace,
    trace_format: opts.TraceFormat = "auto",
    rate_scale: opts.RateScale = 1.0,
    max_requests: opts.MaxRequests = None,
    window_start_s: opts.WindowStartS = 0.0,
    window_duration_s: opts.WindowDurationS = None,
    max_prompt_tokens: opts.MaxPromptTokens = None,
    max_output_tokens: opts.MaxOutputTokens = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default results/live-<trace>-<timestamp>).")] = None,
    model_config: opts.ModelConfig = None,
    dtype: opts.Dtype = "fp32",
    device: opts.Device = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of the weights and the prompt token ids.")] = 0,
    max_num_batched_tokens: opts.MaxNumBatchedTokens = 8192,
    max_num_seqs: opts.MaxNumSeqs = 256,
    block_size: opts.BlockSize = 16,
    kv_capacity_tokens: Annotated[Optional[int], typer.Option("--kv-capacity-tokens", help="KV capacity in tokens (rounded down to whole blocks). Default 32768.")] = None,
    kv_capacity_blocks: Annotated[Optional[int], typer.Option("--kv-capacity-blocks", help="KV capacity in blocks (instead of --kv-capacity-tokens).")] = None,
    watermark_fraction: opts.WatermarkFraction = 0.01,
    chunked_prefill: opts.ChunkedPrefill = False,
    ttft_slo_s: opts.TtftSloS = 1.0,
    tpot_slo_s: opts.TpotSloS = 0.1,
    slo_percentile: opts.SloPercentile = 90.0,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch.set_num_threads (colocated default: torch's default; disaggregated: per worker, default 1).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="colocated (one engine) or disaggregated (a prefill and a decode worker process, KV sent over torch.distributed gloo).")] = "colocated",
) -> None:
    """Replay a trace in real time on the reference engine (a real torch Llama, continuous batching with
    the simulator's scheduler; colocated or prefill/decode disaggregated) and write requests.csv /
    summary.csv / tokens.csv / iterations*.csv (and transfers.csv when disaggregated)."""
    try:
        _live(**locals())
    except PdsimError as exc:
        opts.fail(str(exc))
    except KeyboardInterrupt:
        opts.fail("interrupted", 130)


def _live(*, trace, trace_format, rate_scale, max_requests, window_start_s, window_duration_s, max_prompt_tokens,
          max_output_tokens, out, model_config, dtype, device, seed, max_num_batched_tokens, max_num_seqs, block_size,
          kv_capacity_tokens, kv_capacity_blocks, watermark_fraction, ttft_slo_s, tpot_slo_s, slo_percentile,
          threads, mode="colocated", chunked_prefill=False) -> None:
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
        kv_capacity_blocks=kv_capacity_blocks, watermark_fraction=watermark_fraction, chunked_prefill=chunked_prefill)
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
    typer.echo(opts.latency_line(s))
    typer.echo(f"run directory: {run_dir}")
