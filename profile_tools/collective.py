"""Collectives through ``torch.distributed``: one process per rank, spawned by ``torch.multiprocessing``.

- GPU: NCCL (RCCL on ROCm; the table's ``backend`` says ``rccl``), one process per device, world sizes
  2, 4, 8 (as far as the visible devices go), ranks on ``cuda:0 .. cuda:world-1``.
- CPU: gloo between 2 local processes over loopback TCP, one torch thread each (the live CPU engine's
  KV transfer runs this way).

Ops and sizes (``message_bytes`` is the tensor each rank contributes, as ``pdsim.profiles.format``
defines): ``all_reduce`` (sum, in place), ``all_gather`` (``all_gather_into_tensor`` on NCCL; the list
form on gloo, which is what gloo offers everywhere), ``send_recv`` (rank 0 sends ``message_bytes`` to
rank 1; world size 2 only).

Timing (as nccl-tests does, per call): warm-up calls; rank 0's host-timed estimate of one call is
broadcast so that every rank runs the same number of repeats; each timed call follows a barrier
(``dist.barrier``), so ranks start together; GPU calls are timed with CUDA/HIP events on the current
stream (which waits for the communication stream), CPU calls with ``time.perf_counter_ns``. A call's
latency is the slowest rank's; the median over calls is ``latency_s``.
"""

from __future__ import annotations

import datetime as _dt
import json
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from profile_tools.plan import TimingPolicy
from profile_tools.timing import summarize

OPS = ("all_reduce", "all_gather", "send_recv")
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True, slots=True)
class CollectiveJob:
    """What every rank of one world runs (picklable: it crosses the spawn)."""

    backend: str  # torch.distributed backend: gloo or nccl
    world_size: int
    init_method: str
    ops: tuple[str, ...]
    sizes: tuple[int, ...]
    dtype: str
    policy: TimingPolicy
    out_dir: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _op_fn(torch, dist, job: CollectiveJob, op: str, x, rank: int):
    world = job.world_size
    if op == "all_reduce":
        return lambda: dist.all_reduce(x)
    if op == "all_gather":
        if job.backend == "nccl":
            out = torch.empty(world * x.numel(), dtype=x.dtype, device=x.device)
            return lambda: dist.all_gather_into_tensor(out, x)
        outs = [torch.empty_like(x) for _ in range(world)]
        return lambda: dist.all_gather(outs, x)
    if op == "send_recv":
        if rank == 0:
            return lambda: dist.send(x, 1)
        return lambda: dist.recv(x, 0)
    raise ValueError(f"unknown collective {op!r}")


def _time_on_rank(torch, dist, job: CollectiveJob, fn, device) -> list[float]:
    gpu = job.backend == "nccl"
    policy = job.policy

    def sync():
        if gpu:
            torch.cuda.synchronize(device)

    def barrier():
        if gpu:
            dist.barrier(device_ids=[device.index])
        else:
            dist.barrier()

    for _ in range(max(1, policy.warmup_calls)):
        fn()
    sync()
    barrier()
    t0 = time.perf_counter()
    fn()
    sync()
    estimate = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
    dist.broadcast(estimate, 0)  # the same repeat count on every rank
    n = policy.repeats_for(float(estimate.item()))
    if gpu:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for i in range(n):
            barrier()
            starts[i].record()
            fn()
            ends[i].record()
        sync()
        return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]
    times = []
    for _ in range(n):
        barrier()
        t = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t) * 1e-9)
    return times


def _worker(rank: int, job: CollectiveJob) -> None:
    """One rank: init the process group, time every op x size, write ``rank{rank}.json``."""
    import torch
    import torch.distributed as dist

    if job.backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    dist.init_process_group(job.backend, init_method=job.init_method, rank=rank, world_size=job.world_size,
                            timeout=_dt.timedelta(seconds=300))
    try:
        dt = getattr(torch, _TORCH_DTYPES[job.dtype])
        elem = torch.empty((), dtype=dt).element_size()
        results: dict[str, list[float]] = {}
        for op in job.ops:
            if op == "send_recv" and job.world_size != 2:
                continue
            for nbytes in job.sizes:
                x = torch.randn(max(1, nbytes // elem), device=device).to(dt)
                fn = _op_fn(torch, dist, job, op, x, rank)
                results[f"{op}:{nbytes}"] = _time_on_rank(torch, dist, job, fn, device)
                del x, fn
        Path(job.out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def run_world(job: CollectiveJob, label: str) -> list[dict]:
    """Spawn ``job.world_size`` ranks and return the table rows (latency = slowest rank per call)."""
    import torch.multiprocessing as tmp

    tmp.start_processes(_worker, args=(job,), nprocs=job.world_size, join=True, start_method="spawn")
    per_rank = [json.loads(Path(job.out_dir, f"rank{r}.json").read_text()) for r in range(job.world_size)]
    rows = []
    for key in per_rank[0]:
        op, nbytes = key.split(":")
        calls = zip(*(ranks[key] for ranks in per_rank))
        slowest = [max(c) for c in calls]
        rows.append({"op": op, "backend": label, "dtype": job.dtype, "world_size": job.world_size,
                     "message_bytes": int(nbytes), **summarize(slowest).row()})
    return rows


def bench_collectives(*, gpu: bool, rocm: bool, device_count: int, sizes: tuple[int, ...], dtype: str,
                      policy: TimingPolicy, log, notes: list[str]) -> list[dict]:
    """Rows ``op, backend, dtype, world_size, message_bytes`` + latency (see the module docstring).

    A world that fails to start or run is skipped with a note (the rest of the profile is kept).
    """
    if gpu:
        if device_count < 2:
            notes.append("collective: not measured (one GPU visible; NCCL collectives need >= 2)")
            return []
        worlds = [w for w in (2, 4, 8, 16) if w <= device_count]
        backend, label = "nccl", ("rccl" if rocm else "nccl")
    else:
        worlds = [2]
        backend, label = "gloo", "gloo"
    rows: list[dict] = []
    for world in worlds:
        with tempfile.TemporaryDirectory(prefix="pdsim-coll-") as out_dir:
            job = CollectiveJob(backend, world, f"tcp://127.0.0.1:{free_port()}", OPS, sizes, dtype, policy, out_dir)
            try:
                rows.extend(run_world(job, label))
            except Exception as exc:  # noqa: BLE001 - a failed world is reported, not fatal
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                notes.append(f"collective: world size {world} ({label}) failed and is missing: {first}")
                log(f"collective: world size {world} failed: {first}")
    if rows:
        where = (f"{label}, one process per GPU (cuda:0 .. cuda:{max(worlds) - 1})" if gpu
                 else "gloo between 2 local processes over loopback TCP, 1 torch thread each")
        notes.append(f"collective: {where}; latency = slowest rank per call after a barrier; send_recv at world size 2 only")
    return rows
