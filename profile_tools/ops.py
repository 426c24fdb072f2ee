"""The timed ops of ``pdsim profile``: GEMM, attention, elementwise ops and copies on one device.

Every op is written the way a plain torch decoder (Hugging Face ``modeling_llama.py``, vLLM's torch
reference layers) runs it, on contiguous tensors filled by ``torch.randn`` (never all-zero):

- GEMM: ``torch.nn.functional.linear(X[m, k], W[n, k])``; fp8 (GPU only):
  ``torch._scaled_mm(X8[m, k], W8[n, k].t(), scale_a, scale_b, out_dtype=bf16)`` with per-tensor fp32
  scales, e4m3 (``float8_e4m3fnuz`` on MI300/gfx94x, ``float8_e4m3fn`` elsewhere).
- Attention: ``torch.nn.functional.scaled_dot_product_attention``. Prefill: ``q [b, heads, s, d]``,
  ``k, v [b, kv_heads, s, d]``, ``is_causal=True``. Decode: ``q [b, heads, 1, d]`` against
  ``k, v [b, kv_heads, context, d]`` (no mask). Grouped-query attention uses ``enable_gqa=True``
  (torch >= 2.5; older torch: ``repeat_interleave`` of K and V inside the timed call, as HF's
  ``repeat_kv``); the run's notes say which. SDPA picks its backend (flash / memory-efficient / cuDNN /
  math on GPU, the flash CPU kernel on CPU); serving engines' paged kernels (FlashAttention,
  FlashInfer) may differ.
- Elementwise (HF ``LlamaRMSNorm``, ``LlamaMLP``, ``apply_rotary_pos_emb``): ``rmsnorm`` =
  ``w * (x.float() * rsqrt(mean(x.float()^2) + eps)).to(dtype)``; ``layernorm`` = ``F.layer_norm``;
  ``silu_mul`` = ``F.silu(g) * u`` with ``g, u = x[m, 2 * width].chunk(2, -1)``; ``gelu`` =
  ``F.gelu``; ``rope`` = ``q * cos + rotate_half(q) * sin`` and the same for k, with ``q [m, heads, d]``,
  ``k [m, kv_heads, d]`` and cos/sin ``[m, 1, d]`` gathered once per forward (not timed);
  ``add`` = ``x + residual``; ``embedding`` = ``F.embedding(ids[m], table[vocab / TP, hidden])``.
- Copies: ``dst.copy_(src)`` of ``uint8`` tensors; h2d/d2h use pinned host memory and
  ``non_blocking=True``; p2p copies between two GPUs and is timed on the host with both devices
  synchronised (one stream's events cannot span two devices).

Cache state (choice and reason; ``--flush-level``, ``FLUSH_LEVELS``, says when to choose otherwise):
before every timed GEMM and attention call we evict the caches by writing a buffer larger than the
last-level cache (GPU: 256 MiB, 512 MiB on ROCm for MI300's 256 MB
Infinity Cache, or twice the reported L2 if larger, with ``zero_()`` as triton's ``do_bench`` does;
CPU: twice the total L3 of all sockets or CCXs, at least 64 MiB). In a forward pass one layer's
weights and KV cache are evicted by the other layers' before they are read again, so cold-cache
numbers are the ones a model sees. In one-off comparisons on the 2-core EPYC VM during development (not
kept as a benchmark; ``benchmarks/accuracy_cpu.py`` compares whole iterations) the tiny model's decode
GEMMs (m = 1) ran 3-4x faster with hot caches than in a real forward pass (``pdsim.live.model``);
flushed, they matched it within 10%, as did prefill GEMMs and attention at 2048 tokens. Elementwise
ops, copies and collectives are timed without flushing, back to back (on a GPU, elementwise ops and
copies behind a spin kernel, so that the event pairs time the kernels rather than the host's launch
rate; see ``profile_tools.timing``). Known gap: inside a CPU forward pass an elementwise op that follows a
multi-threaded GEMM took 1-3x its back-to-back time at 32-2048 tokens (OpenMP thread-pool hand-off; the
same one-off comparisons); on the tiny model that is about 1-2% of an iteration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pdsim.errors import ConfigError
from profile_tools.device import DeviceInfo, cpu_cache_bytes, last_level_cache_bytes
from profile_tools.plan import MIB, ElementwiseCase, SweepPlan
from profile_tools.timing import HostClock, Timer

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
RMS_EPS = 1e-5
ROPE_THETA = 10000.0


@dataclass
class BenchContext:
    """Shared state of one run's benchmarks.

    Attributes:
        torch: the torch module.
        device: ``torch.device`` measured.
        info: what the device is.
        timer: times single-device ops (CUDA events on GPU, host clock on CPU).
        flush: evicts the caches before a GEMM or attention call.
        log: where progress lines go.
        notes: lines for ``profile.yaml``'s notes (skips and choices).
        skipped: count of points skipped per reason.
        deadline_s: ``time.perf_counter()`` value after which points are skipped, not measured
            (``pdsim profile --time-budget-s``); None: no limit.
    """

    torch: object
    device: object
    info: DeviceInfo
    timer: Timer
    flush: Callable[[], object] | None
    log: Callable[[str], None]
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    table: str = ""
    deadline_s: float | None = None  # time.perf_counter() after which no new point is measured
    progress_every_s: float = 30.0
    _last_progress: float = field(default_factory=time.perf_counter)

    def progress(self, points: int) -> None:
        """A progress line every ``progress_every_s`` seconds within a long table."""
        now = time.perf_counter()
        if now - self._last_progress >= self.progress_every_s:
            self.log(f"{self.table}: {points} points so far")
            self._last_progress = now

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def dtype(self, name: str):
        return getattr(self.torch, TORCH_DTYPES[name])


FLUSH_MODES = ("write", "read")
"""How the cache flush before a GEMM or attention call evicts: ``write`` fills a buffer larger than the
cache (the default, triton's ``do_bench`` practice), ``read`` sums it. A written buffer leaves
the cache full of dirty lines whose write-back can land inside the next timed call; a read leaves clean
lines. On an H200 our written-flush GEMMs at m = 8 came out 27 % above the same GEMMs in a profiled engine
step (docs/latency_accuracy.md); ``read`` is there to measure whether that is the cause."""

FLUSH_LEVELS = ("llc", "l2")
"""Which caches the flush evicts. ``llc`` (the default): all of them, with a buffer twice the
last-level cache, so every GEMM and attention call reads its weights and KV from memory: what a forward
pass sees when the model's weights and KV cache are larger than the last-level cache, as for any real
LLM on a GPU (50-60 MB of L2 against gigabytes of weights). ``l2`` (CPU only): only the per-core caches,
with a buffer twice their total L2 (at least ``L2_FLUSH_MIN_BYTES``), so the call reads its operands
from the last-level cache: what a forward pass sees when the whole model fits in it, which happens on a
CPU with a large L3. On the 2-vCPU Intel Xeon VM of 2026-12-04 (480 MiB L3 reported) the tiny
validation Llama (112 MiB of fp32 weights) decoded a batch of 2 in 3.7 ms, while its GEMMs at m = 2
timed after an LLC flush took 3-4x their time after an L2 flush (gate_up 448 against 144 us, LM head
3.9 against 1.7 ms; ``docs/live.md``). The op-level model notes when a profile's level does not suit
the model it serves (``pdsim.latency.oplevel``)."""

L2_FLUSH_MIN_BYTES = 16 * MIB


@dataclass(frozen=True)
class Flush:
    """The cache flush of a run: ``fn()`` evicts; the rest is written to ``profile.yaml`` (``cache``).

    Attributes:
        fn: the callable run before every timed GEMM and attention call.
        note: one line for the profile's notes.
        mode: ``write`` or ``read`` (``FLUSH_MODES``).
        level: ``llc`` or ``l2`` (``FLUSH_LEVELS``).
        flush_bytes: the buffer written or read per flush.
        llc_bytes: the device's last-level cache (GPU: its L2; CPU: all L3 instances), None if unknown.
    """

    fn: Callable[[], object]
    note: str
    mode: str
    level: str
    flush_bytes: int
    llc_bytes: int | None


def make_flush(torch, info: DeviceInfo, device, mode: str = "write", level: str = "llc") -> Flush:
    """The cache flush of a run (see the module docstring, ``FLUSH_MODES`` and ``FLUSH_LEVELS``).

    Raises:
        ConfigError: an unknown ``mode`` or ``level``, or ``level`` ``l2`` on a GPU (its L2 is its
            last-level cache).
    """
    if mode not in FLUSH_MODES:
        raise ConfigError(f"--flush must be one of {list(FLUSH_MODES)}, got {mode!r}")
    if level not in FLUSH_LEVELS:
        raise ConfigError(f"--flush-level must be one of {list(FLUSH_LEVELS)}, got {level!r}")
    if info.is_gpu:
        if level != "llc":
            raise ConfigError(f"--flush-level {level}: a GPU's L2 is its last-level cache; use --flush-level llc")
        props = torch.cuda.get_device_properties(device)
        l2 = int(getattr(props, "L2_cache_size", 0) or 0)
        size = max(512 * MIB if info.device_type == "rocm" else 256 * MIB, 2 * l2)
        buf = torch.zeros(size // 4, dtype=torch.int32, device=device)
        if mode == "read":
            return Flush(buf.sum, f"GEMM and attention: caches flushed before each call by reading (summing) {size // MIB} MiB on the device",
                         mode, level, size, l2 or None)
        return Flush(buf.zero_, f"GEMM and attention: caches flushed before each call by zeroing {size // MIB} MiB on the device",
                     mode, level, size, l2 or None)
    llc = last_level_cache_bytes()
    llc_text = f"{llc // MIB} MiB LLC" if llc else "LLC size unknown"
    if level == "l2":
        l2 = cpu_cache_bytes(2)
        size = max(L2_FLUSH_MIN_BYTES, 2 * (l2 or 0))
        what = (f"the per-core caches only ({l2 // MIB} MiB of L2 in all; {llc_text} left warm: operands come "
                "from the LLC, for models that fit in it)") if l2 else f"the per-core caches only (L2 size unknown; {llc_text} left warm)"
    else:
        size = max(64 * MIB, 2 * (llc or 0))
        what = llc_text
    buf = torch.ones(size // 4, dtype=torch.float32)
    if mode == "read":
        return Flush(buf.sum, f"GEMM and attention: caches flushed before each call by reading (summing) {size // MIB} MiB ({what})",
                     mode, level, size, llc)
    return Flush(lambda: buf.fill_(1.0), f"GEMM and attention: caches flushed before each call by writing {size // MIB} MiB ({what})",
                 mode, level, size, llc)


def _is_oom(torch, exc: BaseException) -> bool:
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and ("out of memory" in text or "can't allocate" in text)


def _point(ctx: BenchContext, build: Callable[[], tuple[Callable[[], object], bool]], key: dict, rows: list[dict]) -> None:
    """Build the op (``build`` returns the callable and whether to flush), time it, append a row;
    an out-of-memory point is skipped and counted."""
    torch = ctx.torch
    if ctx.deadline_s is not None and time.perf_counter() > ctx.deadline_s:
        ctx.skip(f"{ctx.table}: time budget spent")
        return
    try:
        fn, flush = build()
        m = ctx.timer.measure(fn, ctx.flush if flush else None)
    except Exception as exc:  # noqa: BLE001 - only OOM is tolerated, everything else re-raises
        if not _is_oom(torch, exc):
            raise
        ctx.skip("out of memory")
        if ctx.info.is_gpu:
            torch.cuda.empty_cache()
        return
    rows.append({**key, **m.row()})
    ctx.progress(len(rows))


# ---- GEMM --------------------------------------------------------------------------------------

def fp8_dtype(ctx: BenchContext):
    """The fp8 (e4m3) dtype ``torch._scaled_mm`` takes on this device, or (None, why not)."""
    torch, info = ctx.torch, ctx.info
    if not info.is_gpu:
        return None, "fp8: not measured on CPU (torch._scaled_mm needs an fp8-capable GPU)"
    if not hasattr(torch, "_scaled_mm"):
        return None, f"fp8: not measured, torch {torch.__version__} has no torch._scaled_mm"
    if info.device_type == "rocm":
        arch = (info.arch or "").split(":")[0]
        if arch.startswith("gfx94"):
            dt = torch.float8_e4m3fnuz
        elif arch.startswith(("gfx95", "gfx12")):
            dt = torch.float8_e4m3fn
        else:
            return None, f"fp8: not measured, {arch or 'this GPU'} has no fp8 matrix cores (needs MI300-class gfx94x or newer)"
    else:
        major, minor = torch.cuda.get_device_capability(ctx.device)
        if (major, minor) < (8, 9):
            return None, f"fp8: not measured, sm_{major}{minor} has no fp8 tensor cores (needs sm_89+)"
        dt = torch.float8_e4m3fn
    try:
        a = torch.randn(32, 32, device=ctx.device).to(dt)
        b = torch.randn(32, 32, device=ctx.device).to(dt).t()
        one = torch.ones((), dtype=torch.float32, device=ctx.device)
        torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        torch.cuda.synchronize(ctx.device)
    except Exception as exc:  # noqa: BLE001 - any failure means "not supported here"
        return None, f"fp8: not measured, torch._scaled_mm failed on this device: {str(exc).splitlines()[0]}"
    return dt, ""


def bench_gemm(ctx: BenchContext, plan: SweepPlan, dtypes: list[str]) -> list[dict]:
    """Rows ``dtype, m, n, k`` + latency for every shape (model shards, then the generic grid)."""
    torch = ctx.torch
    F = torch.nn.functional
    rows: list[dict] = []
    sets = [(plan.gemm_shapes, plan.gemm_m)]
    if plan.generic_gemm_shapes:
        sets.append((plan.generic_gemm_shapes, plan.generic_gemm_m))
    for name in dtypes:
        if name == "fp8":
            fp8, why = fp8_dtype(ctx)
            if fp8 is None:
                ctx.notes.append(why)
                continue
            ctx.notes.append("fp8 GEMM: torch._scaled_mm, per-tensor fp32 scales, e4m3 inputs, bf16 output")
        for shapes, ms in sets:
            for shape in shapes:
                if name == "fp8" and (shape.n % 16 or shape.k % 16):
                    ctx.skip("fp8 GEMM needs n and k divisible by 16")
                    continue
                try:
                    if name == "fp8":
                        w = torch.randn(shape.n, shape.k, device=ctx.device).to(fp8)
                        x_all = torch.randn(max(ms), shape.k, device=ctx.device).to(fp8)
                        one = torch.ones((), dtype=torch.float32, device=ctx.device)
                    else:
                        dt = ctx.dtype(name)
                        w = torch.randn(shape.n, shape.k, dtype=dt, device=ctx.device)
                        x_all = torch.randn(max(ms), shape.k, dtype=dt, device=ctx.device)
                except Exception as exc:  # noqa: BLE001
                    if not _is_oom(torch, exc):
                        raise
                    ctx.skip("out of memory")
                    continue
                for m in ms:
                    x = x_all[:m]
                    if name == "fp8":
                        def build(x=x, w=w, one=one):
                            wt = w.t()
                            return (lambda: torch._scaled_mm(x, wt, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)), True
                    else:
                        def build(x=x, w=w):
                            return (lambda: F.linear(x, w)), True
                    _point(ctx, build, {"dtype": name, "m": m, "n": shape.n, "k": shape.k}, rows)
                del w, x_all
    return rows


# ---- attention ---------------------------------------------------------------------------------

def sdpa_supports_gqa(torch) -> bool:
    """True when ``scaled_dot_product_attention`` takes ``enable_gqa`` (torch >= 2.5)."""
    F = torch.nn.functional
    q = torch.randn(1, 2, 2, 8)
    kv = torch.randn(1, 1, 2, 8)
    try:
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
    except TypeError:
        return False
    return True


def _sdpa(torch, gqa_native: bool, causal: bool):
    F = torch.nn.functional

    def run(q, k, v):
        group = q.shape[1] // k.shape[1]
        if group == 1:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        if gqa_native:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        return F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), is_causal=causal)

    return run


def attention_dtypes(ctx: BenchContext, dtypes: list[str]) -> list[str]:
    out = [d for d in dtypes if d != "fp8"]
    if "fp8" in dtypes:
        ctx.notes.append("attention: fp8 not measured (torch SDPA has no fp8 kernel)")
    return out


def bench_attention_prefill(ctx: BenchContext, plan: SweepPlan, dtypes: list[str], gqa_native: bool) -> list[dict]:
    """Rows ``dtype, kv_dtype, batch_size, seq_len, num_heads, num_kv_heads, head_dim`` + latency."""
    return _bench_attention(ctx, plan, dtypes, gqa_native, decode=False)


def bench_attention_decode(ctx: BenchContext, plan: SweepPlan, dtypes: list[str], gqa_native: bool) -> list[dict]:
    """Rows ``dtype, kv_dtype, batch_size, context_len, num_heads, num_kv_heads, head_dim`` + latency."""
    return _bench_attention(ctx, plan, dtypes, gqa_native, decode=True)


def _bench_attention(ctx: BenchContext, plan: SweepPlan, dtypes: list[str], gqa_native: bool, *, decode: bool) -> list[dict]:
    """Prefill: causal, query length = key length = ``seq_len``. Decode: one query token against
    ``context_len`` keys, no mask."""
    torch = ctx.torch
    sdpa = _sdpa(torch, gqa_native, causal=not decode)
    if decode:
        batches, lengths, max_tokens, length_key = plan.decode_batches, plan.decode_context_lens, plan.decode_max_batch_tokens, "context_len"
    else:
        batches, lengths, max_tokens, length_key = plan.prefill_batches, plan.prefill_seq_lens, plan.prefill_max_batch_tokens, "seq_len"
    rows: list[dict] = []
    for name in attention_dtypes(ctx, dtypes):
        dt = ctx.dtype(name)
        for hc in plan.heads:
            for b in batches:
                for n in lengths:
                    if b * n > max_tokens:
                        continue

                    def build(b=b, n=n, hc=hc):
                        q = torch.randn(b, hc.num_heads, 1 if decode else n, hc.head_dim, dtype=dt, device=ctx.device)
                        k = torch.randn(b, hc.num_kv_heads, n, hc.head_dim, dtype=dt, device=ctx.device)
                        v = torch.randn(b, hc.num_kv_heads, n, hc.head_dim, dtype=dt, device=ctx.device)
                        return (lambda: sdpa(q, k, v)), True

                    key = {"dtype": name, "kv_dtype": name, "batch_size": b, length_key: n, "num_heads": hc.num_heads,
                           "num_kv_heads": hc.num_kv_heads, "head_dim": hc.head_dim}
                    _point(ctx, build, key, rows)
    return rows


# ---- elementwise -------------------------------------------------------------------------------

def elementwise_op(torch, case: ElementwiseCase, m: int, dt, device) -> Callable[[], object]:
    """The op of ``case`` over ``m`` tokens (see the module docstring for each formula)."""
    F = torch.nn.functional
    w = case.width
    if case.op == "rmsnorm":
        x = torch.randn(m, w, dtype=dt, device=device)
        weight = torch.randn(w, dtype=dt, device=device)

        def rmsnorm():
            xf = x.to(torch.float32)
            var = xf.pow(2).mean(-1, keepdim=True)
            return weight * (xf * torch.rsqrt(var + RMS_EPS)).to(dt)

        return rmsnorm
    if case.op == "layernorm":
        x = torch.randn(m, w, dtype=dt, device=device)
        weight = torch.randn(w, dtype=dt, device=device)
        bias = torch.randn(w, dtype=dt, device=device)
        return lambda: F.layer_norm(x, (w,), weight, bias, RMS_EPS)
    if case.op == "silu_mul":
        x = torch.randn(m, 2 * w, dtype=dt, device=device)

        def silu_mul():
            gate, up = x.chunk(2, -1)
            return F.silu(gate) * up

        return silu_mul
    if case.op == "gelu":
        x = torch.randn(m, w, dtype=dt, device=device)
        return lambda: F.gelu(x)
    if case.op == "rope":
        d = case.head_dim
        q = torch.randn(m, case.q_heads, d, dtype=dt, device=device)
        k = torch.randn(m, case.kv_heads, d, dtype=dt, device=device)
        inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
        freqs = torch.outer(torch.arange(m, dtype=torch.float32, device=device), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos()[:, None, :].to(dt)
        sin = emb.sin()[:, None, :].to(dt)

        def rotate_half(t):
            return torch.cat((-t[..., d // 2:], t[..., : d // 2]), dim=-1)

        def rope():
            return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

        return rope
    if case.op == "add":
        x = torch.randn(m, w, dtype=dt, device=device)
        r = torch.randn(m, w, dtype=dt, device=device)
        return lambda: x + r
    if case.op == "embedding":
        table = torch.randn(case.rows, w, dtype=dt, device=device)
        ids = torch.randint(0, case.rows, (m,), device=device)
        return lambda: F.embedding(ids, table)
    raise ValueError(f"unknown elementwise op {case.op!r}")


def bench_elementwise(ctx: BenchContext, plan: SweepPlan, dtypes: list[str]) -> list[dict]:
    """Rows ``op, dtype, num_tokens, width`` + latency."""
    rows: list[dict] = []
    names = [d for d in dtypes if d != "fp8"]
    if "fp8" in dtypes:
        ctx.notes.append("elementwise: fp8 not measured (activations stay bf16/fp16 in fp8 serving)")
    for name in names:
        dt = ctx.dtype(name)
        for case in plan.elementwise_cases:
            for m in plan.elementwise_tokens:
                def build(case=case, m=m):
                    return elementwise_op(ctx.torch, case, m, dt, ctx.device), False

                _point(ctx, build, {"op": case.op, "dtype": name, "num_tokens": m, "width": case.width}, rows)
    return rows


# ---- copies ------------------------------------------------------------------------------------

def bench_memcpy(ctx: BenchContext, plan: SweepPlan) -> list[dict]:
    """Rows ``direction, bytes`` + latency: d2d on every device; h2d, d2h and p2p on GPUs."""
    torch = ctx.torch
    rows: list[dict] = []
    top = max(plan.memcpy_bytes)
    dev = ctx.device
    directions = ["d2d"]
    if ctx.info.is_gpu:
        directions += ["h2d", "d2h"]
        if ctx.info.device_count >= 2:
            directions.append("p2p")
        else:
            ctx.notes.append("memcpy: p2p not measured (one GPU visible)")
    else:
        ctx.notes.append("memcpy: CPU d2d is a copy between two host tensors; h2d, d2h and p2p do not apply to a CPU")
    src = torch.empty(top, dtype=torch.uint8, device=dev).random_(0, 256)
    dst = torch.empty(top, dtype=torch.uint8, device=dev)
    host = None
    if ctx.info.is_gpu:
        host = torch.empty(top, dtype=torch.uint8, pin_memory=True).random_(0, 256)
    for direction in directions:
        timer = ctx.timer
        if direction == "p2p":
            timer = Timer(HostClock(), ctx.timer.policy)
            other = torch.device("cuda", ((ctx.info.spec.index or 0) + 1) % ctx.info.device_count)
            peer = torch.empty(top, dtype=torch.uint8, device=other)
        for nbytes in plan.memcpy_bytes:
            if direction == "d2d":
                fn = (lambda n=nbytes: dst[:n].copy_(src[:n]))
            elif direction == "h2d":
                fn = (lambda n=nbytes: dst[:n].copy_(host[:n], non_blocking=True))
            elif direction == "d2h":
                fn = (lambda n=nbytes: host[:n].copy_(src[:n], non_blocking=True))
            else:
                def fn(n=nbytes):
                    peer[:n].copy_(src[:n], non_blocking=True)
                    torch.cuda.synchronize(dev)
                    torch.cuda.synchronize(other)
            m = timer.measure(fn)
            rows.append({"direction": direction, "bytes": nbytes, **m.row()})
            ctx.progress(len(rows))
    if ctx.info.is_gpu and "p2p" in directions:
        ctx.notes.append("memcpy p2p: host-timed with both devices synchronised")
    return rows

