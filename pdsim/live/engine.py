"""The reference serving engine, colocated mode: continuous batching on ``LlamaModel``, in real time.
(The disaggregated mode, a prefill and a decode worker process built on ``EngineCore``, is
``pdsim.live.disagg``.)

``LiveEngine`` replays a workload (the frame ``pdsim.workload.build_workload`` returns) on the wall
clock: arrivals are honoured in real time, and the loop reads like the simulator's instance loop::

    while requests remain:
        enqueue the arrivals whose time has come
        batch = scheduler.next_batch()          # pdsim.scheduling.batch.ColocatedScheduler itself
        if batch is None: sleep until the next arrival; continue
        tokens = model.step(prefill, decode)    # one real iteration
        scheduler.complete(batch, 1, [now])     # record tokens, finish requests

The batch scheduler, the KV block manager and the request records are the simulator's own objects
(``ColocatedScheduler``, ``KVBlockManager``, ``Request``), so the batching policy is exactly the
simulator's: running requests decode first; a running request that finds no KV block preempts the
most recently admitted one (recompute: its KV is dropped and it later re-prefills its prompt plus the
tokens it generated); waiting requests are admitted FCFS, whole prompts only, while the token budget
(``max_num_batched_tokens`` minus one per decode), ``max_num_seqs`` and the KV blocks (keeping the
watermark free) allow; nothing is admitted in an iteration that preempted. With ``chunked_prefill``
the scheduler's chunked policy applies instead (running requests first, each a decode token or its
next prefill chunk within the budget, then new prompts, chunked to fit): the engine feeds the model
each request's chunk after its cached tokens, and only a request's last chunk yields a token. The
model's KV cache mirrors the block manager: a request whose blocks the scheduler freed (preempted) is
freed in the model, a finished request too, and the tokens actually cached are checked against the
capacity after every iteration (``InvariantViolation`` otherwise).

Prompt token ids are pseudo-random, drawn from ``numpy.random.default_rng([seed, request_id])`` (content
does not matter for timing); every request generates exactly its trace's ``output_tokens`` greedy
tokens (EOS ignored). Times are seconds from the engine's start (``time.perf_counter``), the workload's
t = 0; ``arrival_s`` is the trace's (scheduled) arrival.

Requests that can never be served are refused before the run (``ConfigError`` naming the request and
value), with the simulator's rules (``pdsim.sim.plan.DeploymentPlan.reject_reason``): prompt + output -
1 above ``max_num_batched_tokens`` (a late preemption re-prefills that many tokens in one iteration),
prompt + output above the KV capacity minus the watermark, or above the model's positions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pdsim.core.kv import KVBlockManager, blocks_for
from pdsim.core.request import Request
from pdsim.errors import ConfigError, InvariantViolation
from pdsim.live.hostmem import retain_freed_memory
from pdsim.scheduling.batch import (
    BatchScheduler,
    ColocatedScheduler,
    Completion,
    SchedulerLimits,
)

DEFAULT_MODEL_CONFIG = "data/model_configs/pdsim-tiny-llama.json"
"""The default model: pdsim's tiny synthetic Llama (a path inside the installed ``pdsim`` package)."""

ITERATION_COLUMNS = [
    "iteration", "start_s", "duration_s", "prefill_tokens", "prefill_seqs", "decode_seqs",
    "decode_context_tokens", "kv_blocks_used", "kv_capacity_blocks", "kv_tokens_cached", "preempted",
    "host_s", "enqueue_s",
]
"""Columns of ``iterations.csv`` (one row per engine iteration; times in seconds from the start).

``duration_s`` is the wall time of ``LlamaModel.step`` (the forward pass and the greedy sampling);
``host_s`` the wall time the engine spent on the iteration outside it (forming the batch in the
scheduler, mirroring preemptions into the model, building the inputs, applying the outcome, freeing
finished sequences; for a prefill worker also exporting the KV of the requests handed off), so one
iteration of the loop costs ``duration_s + host_s``. ``enqueue_s`` is the part of ``duration_s`` the host
spent issuing the forward pass before it waited for the sampled tokens (``LlamaModel.last_enqueue_s``):
the whole forward pass on a CPU; on a GPU the kernel launches, so ``enqueue_s`` close to ``duration_s``
means the iteration was bound by the host's launch rate, not by the GPU's kernels."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Settings of one live engine instance (the scheduler knobs mean what they mean in
    ``pdsim.config.schema.SchedulerConfig``).

    Attributes:
        model_config: HF ``config.json`` path (None: pdsim's tiny Llama).
        dtype: fp32 / bf16 / fp16.
        device: torch device.
        seed: seed of the weights and of the prompt token ids.
        max_num_batched_tokens: token budget of one iteration (prompt tokens + one per decode).
        max_num_seqs: most requests in one iteration.
        block_size: tokens per KV block.
        kv_capacity_blocks: KV blocks of the instance (capacity in tokens = blocks x block_size).
        watermark_fraction: fraction of the blocks kept free when admitting new prefills.
        chunked_prefill: split prefills into chunks within the token budget, running requests first
            (the simulator's ``SchedulerLimits.chunked_prefill``, vLLM v1's chunked prefill).
        memory_bytes: memory the engine may use on its device for weights and KV cache (None: what is
            available when it starts, ``available_memory_bytes``); a model that does not fit is refused.
    """

    model_config: str | None = None
    dtype: str = "fp32"
    device: str = "cpu"
    seed: int = 0
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    block_size: int = 16
    kv_capacity_blocks: int = 2048
    watermark_fraction: float = 0.01
    memory_bytes: int | None = None
    chunked_prefill: bool = False

    def __post_init__(self) -> None:
        if self.memory_bytes is not None and (not isinstance(self.memory_bytes, int) or self.memory_bytes < 1):
            raise ConfigError(f"memory_bytes must be an integer >= 1 or None, got {self.memory_bytes!r}")
        for name in ("max_num_batched_tokens", "max_num_seqs", "block_size", "kv_capacity_blocks"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if not 0 <= self.watermark_fraction < 0.5:
            raise ConfigError(f"watermark_fraction must be in [0, 0.5), got {self.watermark_fraction}")

    @property
    def watermark_blocks(self) -> int:
        """Blocks kept free at admission (as ``pdsim.sim.plan``: int(capacity x fraction))."""
        return int(self.kv_capacity_blocks * self.watermark_fraction)

    @property
    def kv_capacity_tokens(self) -> int:
        return self.kv_capacity_blocks * self.block_size


def load_model_config(path: str | Path | None) -> dict[str, Any]:
    """A HF config.json as a dict (None: the packaged tiny Llama). Raises ConfigError."""
    if path is None:
        return json.loads((resources.files("pdsim") / DEFAULT_MODEL_CONFIG).read_text())
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model config {p}: file not found")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model config {p}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"model config {p}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def available_memory_bytes(device: str) -> int:
    """Memory available for a new engine on ``device``: on a CPU the kernel's ``MemAvailable``
    (``/proc/meminfo``, Linux), else total physical memory (``os.sysconf``); on CUDA the free memory
    ``torch.cuda.mem_get_info`` reports."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def memory_need_bytes(config: EngineConfig, hf: dict[str, Any]) -> tuple[int, int]:
    """(weight bytes, KV cache bytes) of one engine: the weights as ``ModelSpec.weight_bytes_per_gpu``
    counts them (tp = pp = 1), the KV as ``kv_capacity_tokens x kv_bytes_per_token`` (2 x layers x
    kv_heads x head_dim x dtype bytes; DESIGN.md). The model's slot pool can hold more than the logical
    capacity (every slot has the longest sequence's capacity), so this is a lower bound.

    Raises:
        ConfigError: the config cannot be read as a model, or an unknown dtype.
    """
    from pdsim.models.arch import dtype_bytes, model_from_hf_config

    spec = model_from_hf_config(str(config.model_config or "pdsim-tiny-llama"), hf, where="model config")
    nbytes = dtype_bytes(config.dtype)
    return spec.weight_bytes_per_gpu(1, 1, nbytes), config.kv_capacity_tokens * spec.kv_bytes_per_token(nbytes)


def check_fits(needs: list[tuple[str, EngineConfig, dict[str, Any]]], memory_bytes: int | None = None) -> None:
    """Refuse engines whose weights and KV caches together do not fit the memory of their device.

    Args:
        needs: (label, config, HF config) of every engine sharing the device (the two workers of a
            disaggregated run on one host share its memory).
        memory_bytes: the memory to fit in (None: the first config's ``memory_bytes``, else
            ``available_memory_bytes`` of its device).

    Raises:
        ConfigError: naming each engine's weights and KV bytes, the total and the memory.
    """
    if memory_bytes is None:
        memory_bytes = needs[0][1].memory_bytes
    if memory_bytes is None:
        memory_bytes = available_memory_bytes(needs[0][1].device)
    parts, total = [], 0
    for label, config, hf in needs:
        w, kv = memory_need_bytes(config, hf)
        total += w + kv
        parts.append(f"{label}: weights {w / 2**20:.1f} MiB + KV cache {kv / 2**20:.1f} MiB "
                     f"({config.kv_capacity_tokens} tokens)")
    if total > memory_bytes:
        raise ConfigError(f"the model does not fit on {needs[0][1].device}: {'; '.join(parts)} = "
                          f"{total / 2**20:.1f} MiB > {memory_bytes / 2**20:.1f} MiB available (memory_bytes); "
                          "use a smaller model or dtype, or lower --kv-capacity-tokens")


def check_request(config: EngineConfig, max_positions: int, request_id: int, prompt_tokens: int,
                  output_tokens: int, *, kv_tokens: int | None = None) -> None:
    """Refuse a request this engine can never serve (ConfigError naming the value).

    ``kv_tokens``: the KV tokens the request must be able to hold here (default prompt + output; a
    prefill worker holds only the prompt: ``DeploymentPlan.reject_reason``'s rule per role).
    """
    c = config
    total = prompt_tokens + output_tokens
    need = total if kv_tokens is None else kv_tokens
    if total > max_positions:
        raise ConfigError(
            f"request {request_id}: prompt_tokens + output_tokens = {total} exceeds the model's "
            f"max_position_embeddings {max_positions}")
    if total - 1 > c.max_num_batched_tokens and not c.chunked_prefill:
        raise ConfigError(
            f"request {request_id}: prompt_tokens + output_tokens - 1 = {total - 1} exceeds "
            f"max_num_batched_tokens {c.max_num_batched_tokens} (no chunked prefill: a preempted "
            "request re-prefills that many tokens in one iteration); raise --max-num-batched-tokens")
    usable = c.kv_capacity_blocks - c.watermark_blocks
    if blocks_for(need, c.block_size) > usable:
        raise ConfigError(
            f"request {request_id}: needs {blocks_for(need, c.block_size)} KV blocks "
            f"({need} tokens, block_size {c.block_size}) but the KV capacity is "
            f"{c.kv_capacity_blocks} blocks ({c.kv_capacity_tokens} tokens) with {c.watermark_blocks} "
            "kept free as watermark; raise --kv-capacity-tokens")


def prompt_token_ids(seed: int, request_id: int, length: int, vocab_size: int) -> list[int]:
    """Deterministic pseudo-random prompt ids of one request (``default_rng([seed, request_id])``)."""
    rng = np.random.default_rng([seed, request_id])
    return rng.integers(0, vocab_size, size=length).tolist()


@dataclass(slots=True)
class LiveResult:
    """What a live run produced.

    Attributes:
        requests: the simulator's ``Request`` objects, filled in (times in seconds from the start).
        token_times_s: per request id, the time of every generated token (len == output_tokens).
        token_ids: per request id, the generated token ids.
        iterations: one dict per iteration, keys ``ITERATION_COLUMNS``.
        wall_s: duration of the run (seconds).
        preemptions: total preemptions.
    """

    requests: list[Request]
    token_times_s: dict[int, list[float]] = field(default_factory=dict)
    token_ids: dict[int, list[int]] = field(default_factory=dict)
    iterations: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    preemptions: int = 0

    def iterations_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.iterations, columns=ITERATION_COLUMNS)

    def tokens_frame(self) -> pd.DataFrame:
        """One row per generated token: request_id, token_index, t_s, token_id."""
        rows = [(rid, i, t, tok) for rid in sorted(self.token_times_s)
                for i, (t, tok) in enumerate(zip(self.token_times_s[rid], self.token_ids[rid]))]
        return pd.DataFrame(rows, columns=["request_id", "token_index", "t_s", "token_id"])


@dataclass(slots=True)
class Iteration:
    """One executed engine iteration: the batch, its start and end (s), the requests it finished,
    (prefill role) those it handed off for KV transfer, and those that got a token (every decode and
    every prefill that completed; a non-final chunk of a chunked prefill yields none)."""

    batch: Any
    start_s: float
    end_s: float
    finished: list[Request]
    handed_off: list[Request] = field(default_factory=list)
    emitted: list[Request] = field(default_factory=list)


class EngineCore:
    """The simulator's scheduler and KV block manager driving ``LiveEngine.model``, one iteration at a
    time; shared by the real-time replay (``LiveEngine.run``), the HTTP server (``pdsim serve``) and the
    workers of the disaggregated engine (``pdsim.live.disagg``). The role is the scheduler's type
    (``make_scheduler``): this class is the colocated one; ``PrefillCore`` and ``DecodeCore`` in
    ``pdsim.live.disagg`` subclass it.

    Args:
        engine: the engine (model and settings).
        prompts: request id -> prompt token ids (read when the request is (re-)prefilled).
        generated: request id -> generated token ids (appended here; an entry per enqueued request).
        now: seconds since the run's start.
        log: a list to append one ``ITERATION_COLUMNS`` dict per iteration to, or None.
    """

    def __init__(self, engine: "LiveEngine", prompts: dict[int, list[int]], generated: dict[int, list[int]],
                 now: Callable[[], float], log: list[dict[str, Any]] | None = None) -> None:
        c = engine.config
        self.model = engine.model
        self.kv = KVBlockManager(c.kv_capacity_blocks, c.block_size, c.watermark_blocks)
        self.sched = self.make_scheduler(self.kv, SchedulerLimits(c.max_num_batched_tokens, c.max_num_seqs,
                                                                  chunked_prefill=c.chunked_prefill))
        self.capacity_tokens = c.kv_capacity_tokens
        self.prompts, self.generated, self.now, self.log = prompts, generated, now, log
        self.held: set[int] = set()  # sequences in the model's KV cache
        self.iterations = 0

    @staticmethod
    def make_scheduler(kv: KVBlockManager, limits: SchedulerLimits) -> BatchScheduler:
        """The batch scheduler of this role (colocated)."""
        return ColocatedScheduler(kv, limits)

    def enqueue(self, req: Request) -> None:
        req.prefill_instance = req.decode_instance = 0
        self.sched.enqueue(req)

    def _handed_off(self, completion: Completion) -> None:
        """Role hook: requests handed off after their prefill (only a prefill role has any)."""

    def step(self) -> Iteration | None:
        """Run one iteration (None when the scheduler has nothing to run).

        Raises:
            InvariantViolation: KV over capacity, or a prefill whose target or cached tokens differ from
                the model's cache (engine bugs).
        """
        t_host = self.now()
        batch = self.sched.next_batch()
        if batch is None:
            return None
        model, held, generated, kv = self.model, self.held, self.generated, self.kv
        # Mirror preemptions into the model: a sequence it holds whose blocks the block manager freed was
        # preempted (recompute). (With chunked prefill a running request the budget left out this
        # iteration keeps its blocks and its cache.)
        for sid in [s for s in held if kv.blocks_of(s) == 0]:
            model.free(sid)
            held.discard(sid)
        prefill, emits = [], []
        for r, n in zip(batch.prefill, batch.prefill_tokens):
            seq = self.prompts[r.id] + generated[r.id]  # a re-prefill after a preemption recomputes the generated tokens
            cached = r.kv_tokens  # computed before this chunk (0 for a fresh or recomputed prefill)
            if r.prefill_target != len(seq) or (model.kv_num_tokens(r.id) if r.id in held else 0) != cached:
                raise InvariantViolation(
                    f"request {r.id}: prefill target {r.prefill_target} / cached {cached} do not match the engine's "
                    f"sequence of {len(seq)} tokens / {model.kv_num_tokens(r.id) if r.id in held else 0} cached")
            prefill.append((r.id, seq[cached:cached + n]))
            emits.append(cached + n >= r.prefill_target)  # the last chunk yields the next token
        decode = [(r.id, generated[r.id][-1]) for r in batch.decode]
        start = self.now()
        for r in batch.prefill:
            if r.prefill_start_s != r.prefill_start_s:
                r.prefill_start_s = start
        tokens = model.step(prefill, decode)
        end = self.now()
        held.update(r.id for r in batch.prefill)
        cached = sum(model.kv_num_tokens(s) for s in held)
        if cached > self.capacity_tokens or kv.used_blocks > kv.capacity_blocks:
            raise InvariantViolation(f"KV over capacity: {cached} tokens cached, {kv.used_blocks} blocks "
                                     f"used, capacity {kv.capacity_blocks} blocks")
        used = kv.used_blocks
        self.iterations += 1
        for r, emit in zip(batch.prefill, emits):
            if emit:  # a non-final chunk's token is discarded, as vLLM does
                generated[r.id].append(int(tokens[r.id]))
        for r in batch.decode:
            generated[r.id].append(int(tokens[r.id]))
        done = self.sched.complete(batch, 1, [end], 0.0)
        for r in done.finished:
            model.free(r.id)
            held.discard(r.id)
        self._handed_off(done)
        if self.log is not None:
            self.log.append({
                "iteration": self.iterations - 1, "start_s": start, "duration_s": end - start,
                "prefill_tokens": batch.shape.prefill_tokens, "prefill_seqs": batch.shape.prefill_seqs,
                "decode_seqs": batch.shape.decode_seqs, "decode_context_tokens": batch.shape.decode_context_tokens,
                "kv_blocks_used": used, "kv_capacity_blocks": kv.capacity_blocks,
                "kv_tokens_cached": cached, "preempted": bool(batch.preempted),
                "host_s": (start - t_host) + (self.now() - end),
                "enqueue_s": float(getattr(model, "last_enqueue_s", end - start)),
            })
        emitted = [r for r, emit in zip(batch.prefill, emits) if emit] + list(batch.decode)
        return Iteration(batch, start, end, done.finished, done.handed_off, emitted)


class LiveEngine:
    """A colocated continuous-batching engine on ``pdsim.live.model.LlamaModel`` (see module doc).

    Args:
        config: engine settings.

    Raises:
        ConfigError: bad settings or model config.
    """

    def __init__(self, config: EngineConfig, *, check_memory: bool = True) -> None:
        from pdsim.live.model import LlamaModel  # torch, lazily

        self.config = config
        hf = load_model_config(config.model_config)
        # CPU: keep freed activations in the process rather than page-faulting them in every
        # iteration (pdsim.live.hostmem); recorded in the manifest.
        self.host_allocator = retain_freed_memory() if config.device == "cpu" else None
        if check_memory:  # before allocating anything (a disaggregated run checks both workers at once)
            check_fits([("engine", config, hf)])
        try:
            self.model = LlamaModel(hf, dtype=config.dtype, device=config.device, seed=config.seed,
                                    kv_block_tokens=config.block_size)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"model: {exc}") from None
        self.vocab_size = self.model.config.vocab_size

    # -- refusal -----------------------------------------------------------------------------------
    def check_request(self, request_id: int, prompt_tokens: int, output_tokens: int, *,
                      kv_tokens: int | None = None) -> None:
        """Refuse a request this engine can never serve (ConfigError naming the value); see
        ``check_request``."""
        check_request(self.config, self.model.max_positions, request_id, prompt_tokens, output_tokens,
                      kv_tokens=kv_tokens)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, workload: pd.DataFrame, *, clock: Callable[[], float] = time.perf_counter,
            sleep: Callable[[float], None] = time.sleep,
            on_finish: Callable[[Request], None] | None = None) -> LiveResult:
        """Replay ``workload`` (columns request_id, arrival_s, prompt_tokens, output_tokens; arrivals
        non-decreasing, seconds) in real time and return the records.

        Raises:
            ConfigError: a request can never be served (checked for all requests before starting).
            InvariantViolation: KV accounting broke (an engine bug).
        """
        c = self.config
        reqs = [Request(int(r.request_id), float(r.arrival_s), int(r.prompt_tokens), int(r.output_tokens))
                for r in workload.itertuples(index=False)]
        if not reqs:
            raise ConfigError("workload holds no requests")
        for r in reqs:
            self.check_request(r.id, r.prompt_tokens, r.output_tokens)
        reqs.sort(key=lambda r: (r.arrival_s, r.id))
        prompts = {r.id: prompt_token_ids(c.seed, r.id, r.prompt_tokens, self.vocab_size) for r in reqs}
        out = LiveResult(requests=reqs, token_times_s={r.id: [] for r in reqs},
                         token_ids={r.id: [] for r in reqs})
        t0 = clock()
        core = EngineCore(self, prompts, out.token_ids, lambda: clock() - t0, out.iterations)
        n, nxt, done = len(reqs), 0, 0
        while done < n:
            now = clock() - t0
            while nxt < n and reqs[nxt].arrival_s <= now:
                core.enqueue(reqs[nxt])
                nxt += 1
            it = core.step()
            if it is None:
                if nxt >= n:
                    raise InvariantViolation(f"engine idle with {n - done} requests unfinished")
                sleep(max(0.0, reqs[nxt].arrival_s - (clock() - t0)))
                continue
            for r in it.emitted:
                out.token_times_s[r.id].append(it.end_s)
            for r in it.finished:
                done += 1
                if len(out.token_ids[r.id]) != r.output_tokens:
                    raise InvariantViolation(f"request {r.id} finished with {len(out.token_ids[r.id])} tokens, "
                                             f"expected {r.output_tokens}")
                if on_finish is not None:
                    on_finish(r)
        out.wall_s = clock() - t0
        out.preemptions = core.sched.preemptions
        out.requests = sorted(reqs, key=lambda r: r.id)
        return out


def manifest(config: EngineConfig, *, command: list[str], threads: int, extra: dict[str, Any] | None = None) -> dict:
    """The run's manifest: device, torch version, threads, config, command, seed."""
    import sys

    import torch

    from pdsim import __version__

    device = config.device
    if device.startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:  # the CPU's model name, as pdsim profile records it (so pdsim validate picks the same CPU's profile)
        from profile_tools.device import cpu_vendor_and_name

        device_name = cpu_vendor_and_name()[1]
    return {
        "kind": "live",
        "mode": "colocated",
        "pdsim_version": __version__,
        "python": sys.version.split()[0],
        "torch_version": torch.__version__,
        "device": device,
        "device_name": device_name,
        "threads": threads,
        "seed": config.seed,
        "config": asdict(config),
        "host_allocator": retain_freed_memory() if device == "cpu" else None,
        "command": command,
        **(extra or {}),
    }

