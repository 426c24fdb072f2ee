"""Replay a request trace against an OpenAI-compatible ``/v1/completions`` endpoint (``pdsim replay``).

Each request is sent at its (scaled) arrival time — after waiting for a ``concurrency`` slot — as a
streaming completion with ``max_tokens`` = the trace's output tokens and ``ignore_eos: true``. The
prompt is a list of ``prompt_tokens`` token ids (``prompt_mode="ids"``, exact) or a text of that many
repeated ``" a"`` words (``prompt_mode="text"``, for servers that need text: its token count after the
server's tokenizer is only approximately ``prompt_tokens``). Every streamed event carrying a choice is
one token, timestamped with ``time.perf_counter`` on arrival.

Failures (connection errors, timeouts, HTTP errors, malformed events, a stream that ends before
``[DONE]`` or with a token count other than ``max_tokens``) are recorded per request
(``status = failed``, ``error``), never raised. No torch here.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pdsim.metrics.records import REQUEST_COLUMNS

REPLAY_COLUMNS = [*REQUEST_COLUMNS, "error"]
"""``requests.csv`` of a replay: the simulator's columns plus ``error`` (empty when completed)."""


@dataclass(slots=True)
class ReplayRecord:
    """One request's outcome (times in seconds from the replay's start)."""

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    sent_s: float = math.nan
    token_times_s: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def completed(self) -> bool:
        return not self.error


def build_prompt(request_id: int, n: int, mode: str, seed: int, vocab: int) -> list[int] | str:
    """The prompt of one request: ``n`` pseudo-random ids in ``[0, vocab)`` or ``n`` words ``"a"``."""
    if mode == "text":
        return " ".join(["a"] * n)
    return np.random.default_rng([seed, request_id]).integers(0, vocab, size=n).tolist()


async def _one(client, url: str, model: str, rec: ReplayRecord, prompt, t0: float, timeout_s: float) -> None:
    body = {"model": model, "prompt": prompt, "max_tokens": rec.output_tokens, "stream": True,
            "ignore_eos": True, "temperature": 0.0}
    rec.sent_s = time.perf_counter() - t0
    done = False
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, json=body) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode(errors="replace")[:200]
                    rec.error = f"HTTP {resp.status_code}: {text}"
                    return
                async for line in resp.aiter_lines():
                    now = time.perf_counter() - t0
                    line = line.strip()
                    if not line or line.startswith(":"):
                        continue
                    if not line.startswith("data:"):
                        rec.error = f"malformed stream line {line[:80]!r}"
                        return
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    try:
                        event = json.loads(data)
                    except json.JSONDecodeError:
                        rec.error = f"malformed event {data[:80]!r}"
                        return
                    if not isinstance(event, dict):
                        rec.error = f"malformed event {data[:80]!r}"
                        return
                    if "error" in event:
                        rec.error = f"server error: {str(event['error'])[:200]}"
                        return
                    choices = event.get("choices")
                    if not isinstance(choices, list):
                        rec.error = f"event without choices {data[:80]!r}"
                        return
                    if choices:  # a usage-only event carries no token
                        rec.token_times_s.append(now)
    except TimeoutError:
        rec.error = f"timeout after {timeout_s:g} s ({len(rec.token_times_s)} tokens received)"
        return
    except Exception as exc:  # httpx errors (connect, read, protocol) and anything else: recorded
        rec.error = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
        return
    if not done:
        rec.error = f"stream ended without [DONE] after {len(rec.token_times_s)} tokens"
    elif len(rec.token_times_s) != rec.output_tokens:
        rec.error = f"expected {rec.output_tokens} tokens, got {len(rec.token_times_s)}"


async def replay_async(workload: pd.DataFrame, endpoint: str, model: str, *, concurrency: int | None = None,
                       timeout_s: float = 600.0, prompt_mode: str = "ids", seed: int = 0,
                       prompt_vocab: int = 1000) -> tuple[list[ReplayRecord], float]:
    """Replay ``workload`` (request_id, arrival_s, prompt_tokens, output_tokens; arrivals already
    scaled) and return the records (request-id order) and the wall time."""
    import httpx

    url = endpoint.rstrip("/") + "/completions"
    recs = [ReplayRecord(int(r.request_id), float(r.arrival_s), int(r.prompt_tokens), int(r.output_tokens))
            for r in workload.itertuples(index=False)]
    prompts = {r.request_id: build_prompt(r.request_id, r.prompt_tokens, prompt_mode, seed, prompt_vocab)
               for r in recs}
    sem = asyncio.Semaphore(concurrency) if concurrency else None
    limits = httpx.Limits(max_connections=concurrency or len(recs) or 1, max_keepalive_connections=concurrency or 100)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        t0 = time.perf_counter()

        async def run(rec: ReplayRecord) -> None:
            delay = rec.arrival_s - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            if sem is None:
                await _one(client, url, model, rec, prompts[rec.request_id], t0, timeout_s)
            else:
                async with sem:
                    await _one(client, url, model, rec, prompts[rec.request_id], t0, timeout_s)

        await asyncio.gather(*(run(r) for r in recs))
        wall = time.perf_counter() - t0
    return sorted(recs, key=lambda r: r.request_id), wall


def records_frame(recs: list[ReplayRecord], deployment: str, workload: str) -> pd.DataFrame:
    """``REPLAY_COLUMNS``: the simulator's request columns (``status`` completed / failed;
    ``prefill_start_s`` = when the request was sent; ``queue_s`` = client-side wait for a slot) + ``error``."""
    rows = []
    for r in recs:
        ok = r.completed
        t = r.token_times_s
        first = t[0] if ok and t else math.nan
        finish = t[-1] if ok and t else math.nan
        ttft, e2e = first - r.arrival_s, finish - r.arrival_s
        tpot = (e2e - ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else math.nan
        itl = float(np.max(np.diff(t))) if ok and len(t) > 1 else math.nan
        rows.append({
            "deployment": deployment, "workload": workload, "request_id": r.request_id, "arrival_s": r.arrival_s,
            "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens,
            "status": "completed" if ok else "failed", "reject_reason": "", "prefill_start_s": r.sent_s,
            "first_token_s": first, "finish_s": finish, "ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e,
            "itl_max_s": itl, "queue_s": r.sent_s - r.arrival_s, "kv_transfer_s": math.nan,
            "decode_wait_s": math.nan, "prefill_instance": -1, "decode_instance": -1, "preemptions": 0,
            "mixed_pool": False, "error": r.error,
        })
    df = pd.DataFrame(rows, columns=REPLAY_COLUMNS)
    for c in ("deployment", "workload", "status", "reject_reason", "error"):
        df[c] = df[c].astype("string")
    return df


def tokens_frame(recs: list[ReplayRecord]) -> pd.DataFrame:
    """Every streamed token: request_id, token_index, t_s (inter-token times are the diffs)."""
    rows = [(r.request_id, i, t) for r in recs for i, t in enumerate(r.token_times_s)]
    return pd.DataFrame(rows, columns=["request_id", "token_index", "t_s"])
