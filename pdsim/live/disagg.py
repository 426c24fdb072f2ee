"""The reference serving engine, disaggregated mode: a prefill worker and a decode worker in separate
processes, the KV cache of every prefilled request sent for real between them.

Processes (``torch.multiprocessing``, spawn start method): the caller's process is the coordinator; it
starts a **prefill worker** (rank 0) and a **decode worker** (rank 1). Each worker builds the same
``LlamaModel`` (same config, dtype and seed, so the same weights), runs with ``threads`` torch threads
(``torch.set_num_threads``; default 1, so the two workers use one core each on a 2-core host), joins a
two-rank ``torch.distributed`` group over **gloo** (loopback TCP; the data plane), runs one untimed
warm-up iteration, and waits for the common start time. Control messages (offers, "ready to receive")
travel through ``multiprocessing`` queues (the control plane); only KV bytes go through
``torch.distributed``.

Clock: every time is ``time.perf_counter() - t0`` with one ``t0`` chosen by the coordinator; on Linux
``perf_counter`` reads ``CLOCK_MONOTONIC``, which is system-wide, so the workers' times share one axis.

The workers are the simulator's roles (``pdsim.scheduling.batch``), driven like ``pdsim.sim.cluster``
drives them:

- **prefill worker** (``PrefillCore``: ``PrefillOnlyScheduler``): enqueues arrivals in real time, forms
  prefill batches (FCFS, whole prompts, the token budget, ``max_num_seqs``, KV blocks with the
  watermark), runs them, emits each request's first token (TTFT ends here, as in the simulator,
  Splitwise and DistServe). A request with one output token finishes here. Every other request is
  handed off: its KV is copied out of the model (``LlamaModel.kv_export_packed``, one tensor
  ``[layers, 2, kv_heads, tokens, head_dim]``) and freed in the model, but its **blocks stay held in the
  block manager until its transfer has been sent** (``PrefillOnlyScheduler.release``), which
  back-pressures admission exactly as in the simulator. An offer (request id, times, first token, KV
  tokens) goes to the decode worker.
- **decode worker** (``DecodeCore``: ``DecodeOnlyScheduler``): at every iteration boundary (as
  ``DecodeInstance._before_schedule``) it takes the offers that arrived, ``offer``-s them, and
  ``reserve_pending`` reserves KV blocks first come, first served before any transfer starts. For each
  reserved request it posts a receive and tells the prefill worker it is ready; the prefill worker's
  sender thread then sends the KV (``torch.distributed.send``, tag = request id); the decode worker's
  receiver thread receives it (``torch.distributed.recv``) into a buffer of the announced size. At the
  next boundary the KV is installed (``LlamaModel.kv_import``) and the request ``accept``-ed: it decodes
  from that iteration on. Preempted requests re-prefill locally (recompute), as in the simulator.

Transfers are serialised (one sender thread, one receiver thread, FIFO), like the simulator's
capacity-1 egress / ingress ports. ``kv_transfer_s`` is measured on the decode worker from the moment it
reserved the blocks and asked for the KV to the moment the receive completed (so it contains the control
message and any wait for the sender, like the simulator's port queueing + wire time);
``decode_wait_s`` (``kv_transfer_wait_s``) from the end of the prefill to that reservation. Both sides'
times of every transfer are kept (``transfers``).

Chunked prefill (``EngineConfig.chunked_prefill``) applies to each worker's scheduler: the prefill
worker prefills long prompts in chunks and hands a request off after its last chunk; the decode
worker's re-prefills after a preemption are chunked too.

Not implemented: NCCL / RCCL on GPUs (one GPU per worker) and shared-memory transfers; more than one
worker per role.
"""

from __future__ import annotations

import math
import queue
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pdsim.core.kv import KVBlockManager
from pdsim.core.request import Phase, Request
from pdsim.errors import ConfigError, InvariantViolation
from pdsim.live.engine import (
    ITERATION_COLUMNS,
    EngineConfig,
    EngineCore,
    LiveResult,
    check_fits,
    check_request,
    load_model_config,
    prompt_token_ids,
)
from pdsim.scheduling.batch import (
    Completion,
    DecodeOnlyScheduler,
    PrefillOnlyScheduler,
    SchedulerLimits,
)

TRANSFER_COLUMNS = ["request_id", "kv_tokens", "kv_bytes", "ready_s", "send_start_s", "send_end_s",
                    "recv_done_s", "kv_transfer_s"]
"""Columns of ``transfers.csv``: per transferred request, its KV size, when the decode worker had
reserved blocks and asked for it (``ready_s``), when the prefill worker's send started and returned, when
the decode worker's receive completed, and ``kv_transfer_s = recv_done_s - ready_s``."""

SWITCH_INTERVAL_S = 1e-4
"""The workers' ``sys.setswitchinterval``. Each worker's main thread runs the model (Python between torch
ops, holding the GIL) while its helper threads wait for control messages and KV; a helper that wakes
must get the GIL, which CPython grants after the switch interval at the latest (default 5 ms, Python docs
``sys.setswitchinterval``): several such hand-offs per transfer added milliseconds to each one in a
first, unrecorded test. 0.1 ms bounds each wait; the cost is a forced switch only while a helper is
waiting to run."""

JOIN_TIMEOUT_S = 60.0
"""How long the coordinator waits for the workers to exit once their records are in (then it ends them)."""

START_LEAD_S = 0.2
"""How far ahead of ``now`` the coordinator sets the common start time, so both workers (already
initialised and warmed up) are waiting for it when it comes."""


class PrefillCore(EngineCore):
    """The prefill worker's core: ``PrefillOnlyScheduler``; KV of handed-off requests exported to
    ``outbox`` (request id -> packed KV tensor) and freed in the model, blocks kept until ``release``."""

    def __init__(self, *args, outbox: dict[int, Any], lock: threading.Lock, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.outbox, self.lock = outbox, lock

    @staticmethod
    def make_scheduler(kv: KVBlockManager, limits: SchedulerLimits) -> PrefillOnlyScheduler:
        return PrefillOnlyScheduler(kv, limits)

    def _handed_off(self, completion: Completion) -> None:
        for r in completion.handed_off:
            packed = self.model.kv_export_packed(r.id)
            if packed.shape[3] != r.kv_tokens:
                raise InvariantViolation(f"request {r.id}: {packed.shape[3]} KV tokens in the model, the "
                                         f"scheduler counts {r.kv_tokens}")
            with self.lock:
                self.outbox[r.id] = packed
            self.model.free(r.id)
            self.held.discard(r.id)


class DecodeCore(EngineCore):
    """The decode worker's core: ``DecodeOnlyScheduler``; ``install`` puts a received KV into the model
    and accepts the request."""

    @staticmethod
    def make_scheduler(kv: KVBlockManager, limits: SchedulerLimits) -> DecodeOnlyScheduler:
        return DecodeOnlyScheduler(kv, limits)

    def install(self, req: Request, packed) -> None:
        """The KV of ``req`` (``[layers, 2, kv_heads, tokens, head_dim]``) has arrived: load it, accept."""
        if packed.shape[3] != req.kv_tokens:
            raise InvariantViolation(f"request {req.id}: received {packed.shape[3]} KV tokens, expected "
                                     f"{req.kv_tokens}")
        self.model.kv_import(req.id, (packed[:, 0], packed[:, 1]))
        self.held.add(req.id)
        self.sched.accept(req)


@dataclass(frozen=True, slots=True)
class _Job:
    """What both workers get (picklable: it crosses the spawn)."""

    prefill: EngineConfig
    decode: EngineConfig
    threads: int
    init_method: str
    requests: tuple[tuple[int, float, int, int], ...]  # (id, arrival_s, prompt_tokens, output_tokens)


@dataclass(slots=True)
class DisaggResult(LiveResult):
    """A ``LiveResult`` of a disaggregated run, with each worker's iteration log and the transfers.

    Attributes:
        worker_iterations: ``{"prefill": [...], "decode": [...]}``, ``ITERATION_COLUMNS`` dicts.
        transfers: ``TRANSFER_COLUMNS`` dicts, one per transferred request.
    """

    worker_iterations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    transfers: list[dict[str, Any]] = field(default_factory=list)

    def worker_iterations_frame(self, role: str) -> pd.DataFrame:
        return pd.DataFrame(self.worker_iterations.get(role, []), columns=ITERATION_COLUMNS)

    def transfers_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.transfers, columns=TRANSFER_COLUMNS).sort_values("request_id", ignore_index=True)


class DisaggregatedEngine:
    """One prefill worker and one decode worker in separate processes with a real KV transfer (see the
    module docstring).

    Args:
        prefill: settings of the prefill worker.
        decode: settings of the decode worker (model config, dtype, device and seed must equal the
            prefill worker's: the same weights on both sides).
        threads: torch threads of each worker.

    Raises:
        ConfigError: mismatched or bad settings, a device other than cpu, or the two workers' weights
            and KV caches do not fit the host's memory (``check_fits``).
    """

    def __init__(self, prefill: EngineConfig, decode: EngineConfig, *, threads: int = 1) -> None:
        for name in ("model_config", "dtype", "device", "seed"):
            a, b = getattr(prefill, name), getattr(decode, name)
            if a != b:
                raise ConfigError(f"prefill and decode workers must share {name}: got {a!r} and {b!r}")
        if prefill.device != "cpu":
            raise ConfigError(f"device {prefill.device!r}: the disaggregated engine runs its workers on the CPU "
                              "(gloo over loopback); NCCL between GPUs is not implemented")
        if not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
        self.prefill, self.decode, self.threads = prefill, decode, threads
        self.hf = load_model_config(prefill.model_config)
        check_fits([("prefill worker", prefill, self.hf), ("decode worker", decode, self.hf)])
        self.max_positions = int(self.hf.get("max_position_embeddings") or 0)
        self.vocab_size = int(self.hf["vocab_size"])

    def check_request(self, request_id: int, prompt_tokens: int, output_tokens: int) -> None:
        """Refuse a request either worker can never serve (the simulator's rule per role: the prefill
        worker holds the prompt's KV, the decode worker prompt + output). Raises ConfigError."""
        check_request(self.prefill, self.max_positions, request_id, prompt_tokens, output_tokens,
                      kv_tokens=prompt_tokens)
        check_request(self.decode, self.max_positions, request_id, prompt_tokens, output_tokens)

    def run(self, workload: pd.DataFrame, *, timeout_s: float = 600.0) -> DisaggResult:
        """Replay ``workload`` (columns request_id, arrival_s, prompt_tokens, output_tokens) in real
        time on the two workers and return the merged records.

        Args:
            workload: the requests.
            timeout_s: longest wait for the workers to start, and for any message once running.

        Raises:
            ConfigError: a request can never be served (all checked before anything starts).
            InvariantViolation: a worker failed (its traceback in the message) or records do not add up.
        """
        import torch.multiprocessing as tmp

        reqs = sorted(((int(r.request_id), float(r.arrival_s), int(r.prompt_tokens), int(r.output_tokens))
                       for r in workload.itertuples(index=False)), key=lambda x: (x[1], x[0]))
        if not reqs:
            raise ConfigError("workload holds no requests")
        for rid, _, p, o in reqs:
            self.check_request(rid, p, o)
        job = _Job(self.prefill, self.decode, self.threads, f"tcp://127.0.0.1:{_free_port()}", tuple(reqs))
        ctx = tmp.get_context("spawn")
        # control plane: SimpleQueue writes in the caller's thread (no feeder thread, one GIL hand-off less)
        results, start = ctx.Queue(), [ctx.Queue(), ctx.Queue()]
        offers, ready = ctx.SimpleQueue(), ctx.SimpleQueue()
        procs = tmp.start_processes(_worker, args=(job, results, offers, ready, start), nprocs=2,
                                    join=False, start_method="spawn")
        try:
            for _ in range(2):
                _expect(_get(results, procs, timeout_s), "ready")
            t0 = time.perf_counter() + START_LEAD_S
            for q in start:
                q.put(t0)
            got = {}
            for _ in range(2):
                msg = _expect(_get(results, procs, timeout_s + max(x[1] for x in reqs)), "result")
                got[msg[1]] = msg[2]
            deadline = time.monotonic() + JOIN_TIMEOUT_S
            while not procs.join(timeout=1.0) and time.monotonic() < deadline:
                pass
        finally:
            for p in procs.processes:
                if p.is_alive():
                    p.terminate()
        return _merge(reqs, got["prefill"], got["decode"])


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the workers' rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(results, procs, timeout_s: float):
    """The next message from the workers; a dead worker or a timeout raises InvariantViolation."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            dead = [i for i, p in enumerate(procs.processes) if not p.is_alive() and p.exitcode not in (0, None)]
            if dead:
                raise InvariantViolation(f"worker {dead[0]} exited with code {procs.processes[dead[0]].exitcode}") from None
            if time.monotonic() > deadline:
                raise InvariantViolation(f"no message from the workers in {timeout_s:.0f} s") from None


def _expect(msg, kind: str):
    if msg[0] == "error":
        raise InvariantViolation(f"{msg[1]} worker failed:\n{msg[2]}")
    if msg[0] != kind:
        raise InvariantViolation(f"expected a {kind!r} message from a worker, got {msg[0]!r}")
    return msg


# -- the workers (run in the spawned processes) ------------------------------------------------------------
def _worker(rank: int, job: _Job, results, offers, ready, start) -> None:
    role = "prefill" if rank == 0 else "decode"
    try:
        import torch
        import torch.distributed as dist

        from pdsim.live.engine import LiveEngine

        torch.set_num_threads(job.threads)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        config = job.prefill if rank == 0 else job.decode
        engine = LiveEngine(config, check_memory=False)  # the coordinator checked both workers together
        dist.init_process_group("gloo", init_method=job.init_method, rank=rank, world_size=2)
        try:
            m = engine.model  # warm-up, untimed: one prefill and one decode iteration
            tok = m.step(prefill=[("warm-up", [1, 2, 3, 4, 5, 6, 7, 8])])["warm-up"]
            m.step(decode=[("warm-up", tok)])
            m.free("warm-up")
            dist.barrier()
            results.put(("ready", role))
            t0 = start[rank].get()
            wait = t0 - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            now = lambda: time.perf_counter() - t0  # noqa: E731
            if rank == 0:
                payload = _prefill_loop(engine, job, now, offers, ready, dist)
            else:
                payload = _decode_loop(engine, job, now, offers, ready, dist, torch)
            dist.barrier()
        finally:
            dist.destroy_process_group()
        results.put(("result", role, payload))
    except BaseException:  # noqa: BLE001 - reported to the coordinator, which raises it
        results.put(("error", role, traceback.format_exc()))


def _prefill_loop(engine, job: _Job, now, offers, ready, dist) -> dict:
    c = engine.config
    reqs = [Request(rid, t, p, o) for rid, t, p, o in job.requests]
    by_id = {r.id: r for r in reqs}
    prompts = {r.id: prompt_token_ids(c.seed, r.id, r.prompt_tokens, engine.vocab_size) for r in reqs}
    generated: dict[int, list[int]] = {r.id: [] for r in reqs}
    log: list[dict] = []
    outbox: dict[int, Any] = {}
    lock = threading.Lock()
    core = PrefillCore(engine, prompts, generated, now, log, outbox=outbox, lock=lock)
    inbox: queue.Queue = queue.Queue()
    sends: dict[int, tuple[float, float]] = {}

    def sender() -> None:  # sends the KV the decode worker asks for, in the order it asks
        try:
            while (rid := ready.get()) is not None:
                with lock:
                    packed = outbox.pop(rid)
                t_start = now()
                dist.send(packed, dst=1, tag=rid)
                inbox.put(("sent", rid, t_start, now()))
        except BaseException:  # noqa: BLE001
            inbox.put(("error", traceback.format_exc(), 0, 0))

    thread = threading.Thread(target=sender, name="kv-sender", daemon=True)
    thread.start()
    token_t: dict[int, float] = {}
    n, nxt, done = len(reqs), 0, 0

    def handle(msg) -> int:
        kind, rid, t_start, t_end = msg
        if kind == "error":
            raise InvariantViolation(f"KV sender failed:\n{rid}")
        core.sched.release(by_id[rid])
        sends[rid] = (t_start, t_end)
        return 1

    while done < n:
        t = now()
        while nxt < n and reqs[nxt].arrival_s <= t:
            core.enqueue(reqs[nxt])
            nxt += 1
        while True:
            try:
                done += handle(inbox.get_nowait())
            except queue.Empty:
                break
        it = core.step()
        if it is None:
            if done >= n:
                break
            timeout = None if nxt >= n else max(0.0, reqs[nxt].arrival_s - now())
            try:  # sleep until the next arrival or a finished send, whichever comes first
                done += handle(inbox.get(timeout=timeout))
            except queue.Empty:
                pass
            continue
        for r in it.emitted:
            token_t[r.id] = it.end_s
        done += len(it.finished)
        for r in it.handed_off:
            offers.put((r.id, r.prefill_start_s, r.first_token_s, generated[r.id][0], r.kv_tokens))
    ready.put(None)  # stop the sender thread
    thread.join()
    kv = core.kv
    if kv.used_blocks or outbox or core.held:
        raise InvariantViolation(f"prefill worker ends holding {kv.used_blocks} KV blocks, {len(outbox)} unsent KV")
    return {
        "requests": {r.id: {"prefill_start_s": r.prefill_start_s, "first_token_s": r.first_token_s,
                            "finish_s": r.finish_s, "token_t": token_t[r.id], "token_id": generated[r.id][0],
                            "preemptions": r.preemptions, "kv_tokens": r.kv_tokens} for r in reqs},
        "sends": sends, "iterations": log, "preemptions": core.sched.preemptions,
    }


def _decode_loop(engine, job: _Job, now, offers, ready, dist, torch) -> dict:
    c = engine.config
    expected = sum(1 for _, _, _, o in job.requests if o > 1)
    meta = {rid: (t, p, o) for rid, t, p, o in job.requests}
    cfg = engine.model.config
    prompts: dict[int, list[int]] = {}
    generated: dict[int, list[int]] = {}
    log: list[dict] = []
    core = DecodeCore(engine, prompts, generated, now, log)
    inbox: queue.Queue = queue.Queue()
    to_receive: queue.Queue = queue.Queue()
    reqs: dict[int, Request] = {}
    token_t: dict[int, list[float]] = {}
    transfers: dict[int, dict] = {}

    def listener() -> None:  # offers from the prefill worker -> inbox
        while (msg := offers.get()) is not None:
            inbox.put(("offer", msg))

    def receiver() -> None:  # receives the KV asked for, in order
        try:
            while (item := to_receive.get()) is not None:
                rid, tokens = item
                buf = torch.empty(cfg.num_layers, 2, cfg.num_kv_heads, tokens, cfg.head_dim, dtype=engine.model.dtype)
                dist.recv(buf, src=0, tag=rid)
                inbox.put(("kv", (rid, buf, now())))
        except BaseException:  # noqa: BLE001
            inbox.put(("error", traceback.format_exc()))

    threads = [threading.Thread(target=listener, name="offer-listener", daemon=True),
               threading.Thread(target=receiver, name="kv-receiver", daemon=True)]
    for th in threads:
        th.start()

    def handle(msg) -> None:
        kind, body = msg
        if kind == "error":
            raise InvariantViolation(f"KV receiver failed:\n{body}")
        if kind == "offer":
            rid, prefill_start_s, first_token_s, first_token, kv_tokens = body
            arrival_s, p, o = meta[rid]
            r = Request(rid, arrival_s, p, o)
            r.prefill_start_s, r.first_token_s, r.last_token_s = prefill_start_s, first_token_s, first_token_s
            r.generated, r.kv_tokens, r.phase = 1, kv_tokens, Phase.TRANSFER
            r.prefill_instance = r.decode_instance = 0
            reqs[rid] = r
            prompts[rid] = prompt_token_ids(c.seed, rid, p, engine.vocab_size)
            generated[rid] = [first_token]
            token_t[rid] = []
            core.sched.offer(r)
        else:
            rid, buf, t_done = body
            r = reqs[rid]
            core.install(r, buf)
            tr = transfers[rid]
            tr["recv_done_s"] = t_done
            r.kv_transfer_s = tr["kv_transfer_s"] = t_done - tr["ready_s"]

    done = 0
    while done < expected:
        while True:
            try:
                handle(inbox.get_nowait())
            except queue.Empty:
                break
        for r in core.sched.reserve_pending():  # DecodeInstance._before_schedule
            t = now()
            r.kv_transfer_wait_s = t - r.first_token_s
            transfers[r.id] = {"request_id": r.id, "kv_tokens": r.kv_tokens,
                               "kv_bytes": r.kv_tokens * engine.model.kv.bytes_per_token, "ready_s": t}
            to_receive.put((r.id, r.kv_tokens))
            ready.put(r.id)
        it = core.step()
        if it is None:
            handle(inbox.get())
            continue
        for r in it.emitted:
            token_t[r.id].append(it.end_s)
        done += len(it.finished)
    offers.put(None)  # stop the listener
    to_receive.put(None)
    for th in threads:
        th.join()
    if core.kv.used_blocks or core.held:
        raise InvariantViolation(f"decode worker ends holding {core.kv.used_blocks} KV blocks")
    return {
        "requests": {rid: {"finish_s": r.finish_s, "token_t": token_t[rid], "token_ids": generated[rid][1:],
                           "preemptions": r.preemptions, "kv_transfer_s": r.kv_transfer_s,
                           "kv_transfer_wait_s": r.kv_transfer_wait_s} for rid, r in reqs.items()},
        "transfers": transfers, "iterations": log, "preemptions": core.sched.preemptions,
    }


def _merge(reqs, pre: dict, dec: dict) -> DisaggResult:
    """One request record per request from the two workers' records (checked: every request finished
    exactly once, with its trace's token count, timestamps ordered)."""
    out = DisaggResult(requests=[], worker_iterations={"prefill": pre["iterations"], "decode": dec["iterations"]})
    ends = [it["start_s"] + it["duration_s"] for role in ("prefill", "decode") for it in out.worker_iterations[role]]
    for rid, arrival_s, p, o in sorted(reqs):
        a = pre["requests"][rid]
        r = Request(rid, arrival_s, p, o)
        r.prefill_start_s, r.first_token_s = a["prefill_start_s"], a["first_token_s"]
        r.prefill_instance = r.decode_instance = 0
        times, ids = [a["token_t"]], [a["token_id"]]
        r.preemptions = a["preemptions"]
        if o > 1:
            if rid not in dec["requests"]:
                raise InvariantViolation(f"request {rid} never reached the decode worker")
            d = dec["requests"][rid]
            times += d["token_t"]
            ids += d["token_ids"]
            r.finish_s = d["finish_s"]
            r.preemptions += d["preemptions"]
            r.kv_transfer_s, r.kv_transfer_wait_s = d["kv_transfer_s"], d["kv_transfer_wait_s"]
            s0, s1 = pre["sends"][rid]
            tr = {**dec["transfers"][rid], "send_start_s": s0, "send_end_s": s1}
            if tr["kv_tokens"] != a["kv_tokens"]:
                raise InvariantViolation(f"request {rid}: {tr['kv_tokens']} KV tokens received, "
                                         f"{a['kv_tokens']} prefilled")
            r.kv_transfer_bytes, r.kv_transfer_path = int(tr["kv_bytes"]), "gloo"
            out.transfers.append(tr)
        else:
            if rid in dec["requests"]:
                raise InvariantViolation(f"request {rid} (one output token) was sent to the decode worker")
            r.finish_s = a["finish_s"]
        if len(times) != o or len(ids) != o:
            raise InvariantViolation(f"request {rid} got {len(times)} tokens, expected {o}")
        if times != sorted(times) or not (arrival_s <= r.prefill_start_s <= r.first_token_s == times[0]) \
                or times[-1] != r.finish_s:
            raise InvariantViolation(f"request {rid}: timestamps out of order")
        for t in times:
            r.record_token(t)
        r.generated = o
        r.phase = Phase.FINISHED
        out.requests.append(r)
        out.token_times_s[rid] = times
        out.token_ids[rid] = ids
    out.preemptions = pre["preemptions"] + dec["preemptions"]
    out.wall_s = max(ends, default=0.0)
    if not math.isfinite(out.wall_s):
        raise InvariantViolation("non-finite iteration times")
    return out
