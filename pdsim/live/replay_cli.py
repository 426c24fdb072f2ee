"""``pdsim replay``: drive an OpenAI-compatible endpoint with a request trace and write a run directory
(requests.csv in the simulator's columns + ``error``, summary.csv, tokens.csv, manifest.json). No torch."""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pdsim.errors import ConfigError, PdsimError
from pdsim.live import options as opts


def replay_command(
    endpoint: Annotated[str, typer.Option("--endpoint", help="Base URL of the OpenAI API, e.g. http://127.0.0.1:8000/v1.")],
    model: Annotated[str, typer.Option("--model", help="Model name sent in every request.")],
    trace: opts.Trace,
    trace_format: opts.TraceFormat = "auto",
    rate_scale: opts.RateScale = 1.0,
    max_requests: opts.MaxRequests = None,
    window_start_s: opts.WindowStartS = 0.0,
    window_duration_s: opts.WindowDurationS = None,
    max_prompt_tokens: opts.MaxPromptTokens = None,
    max_output_tokens: opts.MaxOutputTokens = None,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", help="Most requests in flight (default: unlimited).")] = None,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="Per-request time limit (s), from sending to the last token.")] = 600.0,
    prompt_mode: Annotated[str, typer.Option("--prompt-mode", help="ids: a list of prompt_tokens token ids (exact); text: prompt_tokens words 'a' (approximate).")] = "ids",
    prompt_vocab: Annotated[int, typer.Option("--prompt-vocab", help="Prompt token ids are drawn from [0, this).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the prompt token ids.")] = 0,
    ttft_slo_s: opts.TtftSloS = 1.0,
    tpot_slo_s: opts.TpotSloS = 0.1,
    slo_percentile: opts.SloPercentile = 90.0,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default results/replay-<trace>-<timestamp>).")] = None,
) -> None:
    """Replay a trace against an OpenAI-compatible /v1/completions endpoint (streaming) and record TTFT
    and every inter-token time. Failed requests are recorded, not fatal: exit 0 once the run directory
    is written (2 on bad options)."""
    try:
        _replay(**locals())
    except PdsimError as exc:
        opts.fail(str(exc))
    except KeyboardInterrupt:
        opts.fail("interrupted", 130)


def _replay(*, endpoint, model, trace, trace_format, rate_scale, max_requests, window_start_s, window_duration_s,
            max_prompt_tokens, max_output_tokens, concurrency, timeout_s, prompt_mode, prompt_vocab, seed,
            ttft_slo_s, tpot_slo_s, slo_percentile, out) -> None:
    from pdsim.live.workload import slo_config, trace_requests
    from pdsim.live.replay import records_frame, replay_async, tokens_frame
    from pdsim.metrics.summary import summarize, summarize_one

    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"--endpoint must be an http(s) URL, got {endpoint!r}")
    if prompt_mode not in ("ids", "text"):
        raise ConfigError(f"--prompt-mode must be ids or text, got {prompt_mode!r}")
    for name, v in (("--concurrency", concurrency), ("--prompt-vocab", prompt_vocab)):
        if v is not None and v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    if not timeout_s > 0:
        raise ConfigError(f"--timeout-s must be > 0, got {timeout_s}")
    spec, workload = trace_requests(trace=trace, trace_format=trace_format, rate_scale=rate_scale,
                                    window_start_s=window_start_s, window_duration_s=window_duration_s,
                                    max_requests=max_requests, max_prompt_tokens=max_prompt_tokens,
                                    max_output_tokens=max_output_tokens, seed=seed)
    slo = slo_config(ttft_slo_s, tpot_slo_s, slo_percentile)

    typer.echo(f"replay: {len(workload)} requests from {trace} over {float(workload['arrival_s'].max()):.2f} s "
               f"(rate x{rate_scale}) -> {endpoint} model {model}, concurrency {concurrency or 'unlimited'}")
    started = _dt.datetime.now(_dt.timezone.utc)
    recs, wall = asyncio.run(replay_async(workload, endpoint, model, concurrency=concurrency, timeout_s=timeout_s,
                                          prompt_mode=prompt_mode, seed=seed, prompt_vocab=prompt_vocab))

    name = trace.stem
    requests = records_frame(recs, deployment="replay", workload=name)
    row = summarize_one(requests, kind="replay", gpus=0, usd_per_hour=0.0, slo=slo, latency_sources="replay")
    summary = summarize([{"deployment": "replay", "workload": name, **row}])

    run_dir = out or Path("results") / f"replay-{name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    requests.to_csv(run_dir / "requests.csv", index=False)
    summary.to_csv(run_dir / "summary.csv", index=False)
    tokens_frame(recs).to_csv(run_dir / "tokens.csv", index=False)
    failed = requests[requests["status"] != "completed"]
    from pdsim import __version__

    man = {
        "kind": "replay", "pdsim_version": __version__, "python": sys.version.split()[0],
        "endpoint": endpoint, "model": model, "command": sys.argv,
        "created_utc": started.isoformat(timespec="seconds"),
        "workload": spec.model_dump(mode="json"), "max_prompt_tokens": max_prompt_tokens,
        "max_output_tokens": max_output_tokens, "concurrency": concurrency, "timeout_s": timeout_s,
        "prompt_mode": prompt_mode, "prompt_vocab": prompt_vocab, "seed": seed,
        "slo": slo.model_dump(mode="json"), "wall_s": wall, "requests": len(requests),
        "completed": int(len(requests) - len(failed)), "failed": int(len(failed)),
    }
    (run_dir / "manifest.json").write_text(json.dumps(man, indent=2, default=str))

    s = summary.iloc[0]
    typer.echo(f"completed {int(s['completed'])}/{int(s['requests'])} in {wall:.2f} s, {len(failed)} failed")
    if len(failed):
        counts = failed["error"].str.slice(0, 120).value_counts()
        for msg, k in counts.head(5).items():
            typer.echo(f"  {k} x {msg}")
        if len(counts) > 5:
            typer.echo(f"  ... {len(counts) - 5} more distinct errors (requests.csv, column error)")
    typer.echo(opts.latency_line(s))
    typer.echo(f"run directory: {run_dir}")
