"""Command-line pieces shared by ``pdsim live``, ``pdsim replay``, ``pdsim serve`` and ``pdsim validate``:
the common options (typer ``Annotated`` aliases, so each is spelled and documented once), the one-line
latency summary and the one-line error exit. No torch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer

if TYPE_CHECKING:
    import pandas as pd

# ---- the request stream (pdsim.live.workload.trace_requests) and its SLOs --------------------------

Trace = Annotated[Path, typer.Option("--trace", help="Request trace (azure / csv / mooncake / jsonl; see pdsim.workload.load_trace).")]
TraceFormat = Annotated[str, typer.Option("--trace-format", help="Trace format (auto, azure, mooncake, csv, jsonl).")]
RateScale = Annotated[float, typer.Option("--rate-scale", help="Request-rate multiplier: arrival times are divided by it.")]
MaxRequests = Annotated[Optional[int], typer.Option("--max-requests", help="Replay at most this many requests.")]
WindowStartS = Annotated[float, typer.Option("--window-start-s", help="Start of the replayed window on the trace's time axis (s).")]
WindowDurationS = Annotated[Optional[float], typer.Option("--window-duration-s", help="Length of the window in trace seconds (default: to the end).")]
MaxPromptTokens = Annotated[Optional[int], typer.Option("--max-prompt-tokens", help="Cap every prompt at this many tokens (for quick runs and tests).")]
MaxOutputTokens = Annotated[Optional[int], typer.Option("--max-output-tokens", help="Cap every output at this many tokens (for quick runs and tests).")]
TtftSloS = Annotated[float, typer.Option("--ttft-slo-s", help="TTFT target (s) for SLO attainment.")]
TpotSloS = Annotated[float, typer.Option("--tpot-slo-s", help="TPOT target (s) for SLO attainment.")]
SloPercentile = Annotated[float, typer.Option("--slo-percentile", help="Percentile judged against the SLOs.")]

# ---- the reference engine (pdsim.live.engine.EngineConfig) -------------------------------------------

ModelConfig = Annotated[Optional[Path], typer.Option("--model-config", help="HF config.json of a Llama-architecture model (default: pdsim's tiny Llama).")]
Dtype = Annotated[str, typer.Option(help="fp32, bf16 or fp16.")]
Device = Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:N.")]
MaxNumBatchedTokens = Annotated[int, typer.Option("--max-num-batched-tokens", help="Token budget of one iteration.")]
MaxNumSeqs = Annotated[int, typer.Option("--max-num-seqs", help="Most requests in one iteration.")]
BlockSize = Annotated[int, typer.Option("--block-size", help="Tokens per KV block.")]
WatermarkFraction = Annotated[float, typer.Option("--watermark-fraction", help="Fraction of KV blocks kept free when admitting prefills.")]
ChunkedPrefill = Annotated[bool, typer.Option("--chunked-prefill/--no-chunked-prefill", help="Split prefills into chunks within the token budget, running requests first (vLLM v1's chunked prefill; the simulator's enable_chunked_prefill).")]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: bad input; 130: interrupted)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def fmt_ms(v: float) -> str:
    """Seconds as milliseconds with one decimal; ``-`` for NaN."""
    return "-" if v != v else f"{v * 1e3:.1f}"


def latency_line(s: pd.Series) -> str:
    """TTFT / TPOT p50 and p90, SLO attainment and output tokens/s of one ``summary.csv`` row."""
    tok_s = s["output_tokens_per_s"]
    return (f"TTFT p50/p90 ms: {fmt_ms(s['ttft_p50_s'])}/{fmt_ms(s['ttft_p90_s'])}   "
            f"TPOT p50/p90 ms: {fmt_ms(s['tpot_p50_s'])}/{fmt_ms(s['tpot_p90_s'])}   "
            f"SLO attainment {s['slo_attainment'] * 100:.1f}%   " + ("-" if tok_s != tok_s else f"{tok_s:.0f}")
            + " tok/s")
