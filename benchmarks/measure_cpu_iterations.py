"""Measure the live Llama model's iteration time on this CPU (pure prefill and pure decode iterations).

The model is ``pdsim.live.model.LlamaModel`` built from a HF config (default: the tiny Llama of
``pdsim/data/model_configs/pdsim-tiny-llama.json``, 4 layers, hidden 512) in fp32 with random weights,
run with torch's default thread count unless ``--threads`` says otherwise. One measurement is
``time.perf_counter_ns`` around one ``LlamaModel.step`` call:

- prefill (b, L): b fresh prompts of L tokens in one iteration (b x L tokens flattened), for b in
  {1, 2, 4, 8} and L in {32, ..., 1024} with b x L <= 4096;
- decode (b, c): b sequences, each with c cached tokens, decoding one token each (attention over c + 1
  keys), for b in {1, ..., 64} and c in {64, 256, 1024, 2048}.

Untimed set-up: KV capacity is reserved beforehand (as an engine's preallocated KV pool, so no
allocation is timed); for decode, one prompt of c tokens is prefilled once per c and its KV imported
into the b sequences (``kv_import``; the KV contents do not affect the timing), and after each timed
step every sequence is truncated back to c tokens (a prefill point's back to 0 tokens, keeping its
capacity), so every repeat measures exactly context c. Every point's sequences are created in order
and never freed until the end, so each decode batch occupies a contiguous range of the KV pool's slots
and its attention reads the cache in place (``LlamaModel.decode_path_counts``; a warning is printed
if any timed decode fell back to the gather copy). After
``warmup`` untimed passes, timed passes each time every point that still needs repeats once
(interleaved, so that a burst of load from other processes costs a few repeats of many points, which
the median ignores, rather than all repeats of a few points). The garbage collector is off while
timing. The CSV reports the median and the 10th / 90th percentiles of each point's repeats.

    python benchmarks/measure_cpu_iterations.py [--quick] [--config PATH] [--out CSV] [--threads N]

``--engine-overhead``: instead, measure the live engine's per-iteration time that the op-level model does
not charge (``iteration_overhead_s``; method in ``pdsim.live.overhead``) against a CPU profile and write
it as JSON for ``pdsim validate --overhead-file``:

    python benchmarks/measure_cpu_iterations.py --engine-overhead --threads 1 --profile cpu-epyc-1t \
        --out benchmarks/results/engine_overhead_cpu-epyc-1t.json

``measure(config_path, points, repeats)`` is importable (returns a pandas DataFrame) for the comparison
with pdsim's op-level latency model.

Caveat: on a shared machine other processes distort the figures badly: with torch's default of one
thread per core, every parallel op waits for the thread whose core another process holds (on the
2-core VM this was written on, iterations became 10-20x slower). Each pass is therefore cut into
segments of about a second, the CPU other processes used during each segment is measured, and the
repeats of a segment where they used more than ``--max-others-cores`` are set aside and re-run in a
later pass (until ``--max-wall-s``). The CSV's ``others_cpu_cores`` and ``dropped_repeats`` and the
p10 / p90 columns say how clean each point is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profile_tools.device import cpu_vendor_and_name  # noqa: E402
from profile_tools.timing import HostLoadMeter  # noqa: E402

DEFAULT_CONFIG = ROOT / "pdsim/data/model_configs/pdsim-tiny-llama.json"
DEFAULT_OUT = ROOT / "benchmarks/results/cpu_iterations.csv"
COLUMNS = ["phase", "batch_size", "prompt_len", "context_len", "tokens", "latency_s", "latency_p10_s",
           "latency_p90_s", "repeats", "num_threads", "torch_version", "cpu_name", "date", "model", "dtype",
           "others_cpu_cores", "dropped_repeats"]


@dataclass(frozen=True, slots=True)
class IterationPoint:
    """One iteration shape: ``length`` is the prompt length (prefill) or the cached context (decode)."""

    phase: Literal["prefill", "decode"]
    batch_size: int
    length: int

    @property
    def tokens(self) -> int:
        """Tokens processed by the iteration (flattened batch rows)."""
        return self.batch_size * (self.length if self.phase == "prefill" else 1)


def full_points() -> list[IterationPoint]:
    """The full grid: prefill b in {1,2,4,8} x L in {32..1024} (b*L <= 4096); decode b in {1..64} x c."""
    prefill = [IterationPoint("prefill", b, L) for b in (1, 2, 4, 8) for L in (32, 64, 128, 256, 512, 1024)
               if b * L <= 4096]
    decode = [IterationPoint("decode", b, c) for c in (64, 256, 1024, 2048) for b in (1, 2, 4, 8, 16, 32, 64)]
    return prefill + decode


def quick_points() -> list[IterationPoint]:
    """A handful of points (well under 30 s)."""
    return [IterationPoint("prefill", 1, 64), IterationPoint("prefill", 4, 256),
            IterationPoint("decode", 1, 256), IterationPoint("decode", 16, 256), IterationPoint("decode", 64, 1024)]


def _prompt(n: int, salt: int, vocab: int) -> list[int]:
    return [(salt * 7919 + i * 104729 + 1) % vocab for i in range(n)]


class _PrefillRunner:
    """One prefill point: b fresh prompts of L tokens; KV capacity reserved before each timed step."""

    def __init__(self, model, key: int, pt: IterationPoint) -> None:
        self.model = model
        self.batch = [((key, i), _prompt(pt.length, key * 131 + i, model.config.vocab_size))
                      for i in range(pt.batch_size)]
        self.length = pt.length
        self._reserve()

    def _reserve(self) -> None:
        for sid, _ in self.batch:
            self.model.kv_reserve(sid, self.length)

    def step(self) -> None:
        self.model.step(prefill=self.batch)

    def reset(self) -> None:
        # Roll back to empty sequences (capacity kept) rather than free + reserve: a free moves the KV
        # pool's last sequence into the freed slot, which would scatter the decode points' sequences out
        # of the contiguous, ordered slot ranges that decode attention reads in place.
        for sid, _ in self.batch:
            self.model.kv_truncate(sid, 0)

    def close(self) -> None:
        for sid, _ in self.batch:
            self.model.free(sid)


class _DecodeRunner:
    """One decode point: b sequences holding c cached tokens (imported copies of one prefilled prompt),
    rolled back to c tokens after each step."""

    def __init__(self, model, key: int, pt: IterationPoint, proto_kv) -> None:
        self.model = model
        self.context = pt.length
        vocab = model.config.vocab_size
        self.decode = [((key, i), (key * 131 + i * 31 + 7) % vocab) for i in range(pt.batch_size)]
        for sid, _ in self.decode:
            model.kv_import(sid, proto_kv)
            model.kv_reserve(sid, pt.length + 1)

    def step(self) -> None:
        self.model.step(decode=self.decode)

    def reset(self) -> None:
        for sid, _ in self.decode:
            self.model.kv_truncate(sid, self.context)

    def close(self) -> None:
        for sid, _ in self.decode:
            self.model.free(sid)


def _others_cores(meter: HostLoadMeter, started) -> float:
    """CPU (in cores) other processes used since ``meter.start()`` (NaN where ``/proc/stat`` is missing)."""
    share, _ = meter.other_share(started)
    return float("nan") if share is None else share * meter.cpus


def measure(config_path: str | Path, points: list[IterationPoint], repeats: int = 10, *, warmup: int = 2,
            seed: int = 0, dtype: str = "fp32", device: str = "cpu", threads: int | None = None,
            max_point_s: float | None = 8.0, max_others_cores: float | None = 0.15,
            max_wall_s: float | None = 200.0, segment_s: float = 1.0, progress: bool = False) -> pd.DataFrame:
    """Time ``LlamaModel.step`` at each point; one row per point (columns ``COLUMNS``).

    The repeats are interleaved: each pass times every point that still needs repeats once (in the
    order given), so a burst of load from other processes on a shared machine costs a few repeats of
    many points (which the median ignores) rather than all repeats of a few. All points' states are
    therefore alive at once (the full grid holds about 1.7 GiB of KV in fp32 plus a 0.5 GiB decode
    workspace; the process peaked at about 5 GB resident). A pass is cut into
    segments of about ``segment_s`` of work; for each segment ``HostLoadMeter`` measures the CPU other
    processes used. With ``max_others_cores`` set, the samples of a segment where they used more are
    "contended": kept aside, and the points run again in a later pass, until every point has
    ``repeats`` quiet samples, or ``max_wall_s`` has passed (and every point has at least 3 samples).
    A point's statistics use its quiet samples when it has at least 3, else all of them; the result's
    ``others_cpu_cores`` and ``dropped_repeats`` say which.

    Args:
        config_path: HF ``config.json`` of a Llama-architecture model.
        points: iteration shapes to time (see ``full_points`` / ``quick_points``).
        repeats: quiet timed iterations wanted per point.
        warmup: untimed passes over all points first.
        seed: weights seed.
        dtype, device: of the model (``fp32`` on ``cpu`` for the CPU validation).
        threads: ``torch.set_num_threads`` value; None keeps torch's default.
        max_point_s: a point stops once it has at least 3 quiet repeats adding up to this many seconds
            (the result's ``repeats`` then says how many it got).
        max_others_cores: CPU (in cores) other processes may use during a segment for its samples to
            count as quiet (default 0.15: well above the idle background, well below one busy
            process); None counts every sample.
        max_wall_s: stop re-running contended samples after this many seconds (None: never stop; with
            ``max_others_cores`` set that can wait forever on a busy machine).
        segment_s: work per contention check, in seconds (the meter's resolution is 10 ms ticks).
        progress: print one line per pass.

    Returns:
        DataFrame: phase, batch_size, prompt_len / context_len (the other is NA), tokens, latency_s
        (median), latency_p10_s, latency_p90_s, repeats (used), num_threads, torch_version, cpu_name,
        date (UTC, ISO 8601), model (config file stem), dtype, others_cpu_cores (mean CPU used by other
        processes during the used samples' segments), dropped_repeats (contended samples left out).

    Raises:
        ValueError: repeats < 1, an unknown phase, or a point beyond the model's positions.
    """
    import torch

    from pdsim.live.hostmem import retain_freed_memory
    from pdsim.live.model import LlamaModel

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if threads is not None:
        torch.set_num_threads(threads)
    if device == "cpu":  # as the engine does (pdsim.live.hostmem)
        retain_freed_memory()
    config_path = Path(config_path)
    model = LlamaModel(json.loads(config_path.read_text()), dtype=dtype, device=device, seed=seed)
    for pt in points:
        if pt.phase not in ("prefill", "decode"):
            raise ValueError(f"unknown phase {pt.phase!r} in {pt}")
        if pt.length + 1 > model.max_positions:
            raise ValueError(f"{pt}: length beyond max_positions {model.max_positions}")
    common = {"num_threads": torch.get_num_threads(), "torch_version": torch.__version__, "cpu_name": cpu_vendor_and_name()[1],
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model": config_path.stem,
              "dtype": dtype}

    # Untimed set-up: one prefilled prototype KV per decode context, imported into every decode point.
    protos = {}
    for c in sorted({pt.length for pt in points if pt.phase == "decode"}):
        model.step(prefill=[("proto", _prompt(c, 999, model.config.vocab_size))])
        protos[c] = model.kv_export("proto")
        model.free("proto")
    runners = [_PrefillRunner(model, key, pt) if pt.phase == "prefill" else _DecodeRunner(model, key, pt, protos[pt.length])
               for key, pt in enumerate(points)]
    del protos
    # per point: (ns, CPU other processes used during its segment, quiet?)
    samples: list[list[tuple[int, float, bool]]] = [[] for _ in points]
    min_samples = min(3, repeats)

    def n_quiet(j: int) -> int:
        return sum(q for _, _, q in samples[j])

    def wanted(j: int) -> bool:
        quiet = [ns for ns, _, q in samples[j] if q]
        if max_point_s is not None and len(quiet) >= min_samples and sum(quiet) > max_point_s * 1e9:
            return False
        return len(quiet) < repeats

    meter = HostLoadMeter()
    try:
        for _ in range(warmup):
            for r in runners:
                r.step()
                r.reset()
        gathers_before = model.decode_path_counts["gather"]
        gc.collect()
        gc.disable()
        try:
            t_start, n_pass = time.perf_counter(), 0
            while True:
                todo = [j for j in range(len(points)) if wanted(j)]
                over_time = max_wall_s is not None and time.perf_counter() - t_start > max_wall_s
                if not todo or (over_time and all(len(smp) >= min_samples for smp in samples)):
                    break
                n_pass += 1
                seg_ns: list[tuple[int, int]] = []
                seg_snap, seg_t0, verdicts = meter.start(), time.perf_counter(), []
                for k, j in enumerate(todo):
                    t0 = time.perf_counter_ns()
                    runners[j].step()
                    seg_ns.append((j, time.perf_counter_ns() - t0))
                    runners[j].reset()
                    if time.perf_counter() - seg_t0 < segment_s and k + 1 < len(todo):
                        continue
                    others = _others_cores(meter, seg_snap)
                    quiet = max_others_cores is None or not others > max_others_cores  # NaN counts as quiet
                    for jj, ns in seg_ns:
                        samples[jj].append((ns, others, quiet))
                    verdicts.append(quiet)
                    if not quiet:
                        time.sleep(1.0)  # let a burst pass
                    seg_ns, seg_snap, seg_t0 = [], meter.start(), time.perf_counter()
                if progress:
                    print(f"  pass {n_pass}: {len(todo)} points, {sum(verdicts)}/{len(verdicts)} segments quiet, "
                          f"{time.perf_counter() - t_start:5.0f} s so far", flush=True)
        finally:
            gc.enable()
        if progress and model.decode_path_counts["gather"] > gathers_before:
            print(f"warning: {model.decode_path_counts['gather'] - gathers_before} timed decode steps used the "
                  "gather fallback instead of reading the KV cache in place", flush=True)
    finally:
        for r in runners:
            r.close()

    rows = []
    for pt, smp in zip(points, samples):
        used = [(ns, o) for ns, o, q in smp if q]
        if len(used) < min_samples:
            used = [(ns, o) for ns, o, _ in smp]
        sec = np.asarray([ns for ns, _ in used], dtype=float) / 1e9
        rows.append({
            "phase": pt.phase, "batch_size": pt.batch_size,
            "prompt_len": pt.length if pt.phase == "prefill" else pd.NA,
            "context_len": pt.length if pt.phase == "decode" else pd.NA,
            "tokens": pt.tokens, "latency_s": float(np.median(sec)),
            "latency_p10_s": float(np.percentile(sec, 10)), "latency_p90_s": float(np.percentile(sec, 90)),
            "repeats": len(used), **common,
            "others_cpu_cores": float(np.mean([o for _, o in used])), "dropped_repeats": len(smp) - len(used),
        })
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"prompt_len": "Int64", "context_len": "Int64"})


def render_table(df: pd.DataFrame) -> str:
    """A compact text table: one line per point, latencies in ms, spread = (p90 - p10) / median."""
    view = pd.DataFrame({
        "phase": df["phase"], "b": df["batch_size"],
        "len": df["prompt_len"].fillna(df["context_len"]), "tokens": df["tokens"],
        "median_ms": (df["latency_s"] * 1e3).round(2), "p10_ms": (df["latency_p10_s"] * 1e3).round(2),
        "p90_ms": (df["latency_p90_s"] * 1e3).round(2),
        "spread_%": ((df["latency_p90_s"] - df["latency_p10_s"]) / df["latency_s"] * 100).round(1),
        "n": df["repeats"], "others_cores": df["others_cpu_cores"].round(2), "dropped": df["dropped_repeats"],
    })
    return view.to_string(index=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few points, 3 repeats (< 30 s)")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="HF config.json of the model")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="CSV to write")
    ap.add_argument("--repeats", type=int, default=None, help="timed iterations per point (default 10, quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed passes over all points (default 2, quick 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--max-point-s", type=float, default=8.0,
                    help="a point stops after this many timed seconds (at least 3 repeats)")
    ap.add_argument("--max-others-cores", type=float, default=0.15,
                    help="repeats are contended (set aside, re-run) when other processes used more CPU than "
                         "this, in cores, meanwhile; negative: keep every repeat")
    ap.add_argument("--max-wall-s", type=float, default=None,
                    help="stop re-running contended repeats after this many seconds (default 200, quick 15)")
    ap.add_argument("--engine-overhead", action="store_true",
                    help="measure the engine's iteration_overhead_s against --profile (writes JSON to --out)")
    ap.add_argument("--profile", default=None, help="CPU profile for --engine-overhead (e.g. cpu-epyc-1t)")
    args = ap.parse_args(argv)
    if args.engine_overhead:
        return engine_overhead(args)
    points = quick_points() if args.quick else full_points()
    repeats = args.repeats or (3 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    t0 = time.perf_counter()
    print(f"measuring {len(points)} points of {args.config.name} (repeats {repeats}, warmup {warmup})", flush=True)
    max_wall_s = args.max_wall_s if args.max_wall_s is not None else (15.0 if args.quick else 200.0)
    df = measure(args.config, points, repeats, warmup=warmup, threads=args.threads, max_point_s=args.max_point_s,
                 max_others_cores=args.max_others_cores if args.max_others_cores >= 0 else None,
                 max_wall_s=max_wall_s, progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    r = df.iloc[0]
    print(f"\n{r['model']} {r['dtype']}, torch {r['torch_version']}, {r['num_threads']} threads, {r['cpu_name']}")
    print(render_table(df))
    noisy = df[df["dropped_repeats"].eq(0) & df["others_cpu_cores"].gt(args.max_others_cores)]
    if args.max_others_cores >= 0 and len(noisy):
        print(f"\nwarning: {len(noisy)} points got fewer than 3 quiet repeats; their figures include "
              "contended ones (others_cpu_cores column)")
    print(f"\nwrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


def engine_overhead(args) -> int:
    """``--engine-overhead``: the grid of ``pdsim.live.overhead`` (quick: a smaller grid) -> JSON + CSV."""
    import torch

    from pdsim.latency.oplevel import OpLevelModel
    from pdsim.live.engine import EngineConfig, LiveEngine, load_model_config
    from pdsim.live.overhead import measure_engine_overhead, summary_lines
    from pdsim.models.arch import model_from_hf_config
    from pdsim.profiles.format import find_profile

    if args.profile is None:
        raise SystemExit("--engine-overhead needs --profile (the CPU profile of the same thread count)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    prof = find_profile(args.profile)
    if prof.meta.num_threads != torch.get_num_threads():
        print(f"warning: profile {prof.name} was measured with {prof.meta.num_threads} threads, the engine runs "
              f"{torch.get_num_threads()}", flush=True)
    hf = load_model_config(args.config)
    spec = model_from_hf_config(args.config.stem, hf)
    latency = OpLevelModel([prof], spec, tp=1, pp=1, dtype="fp32", gpu=None, iteration_overhead_s=0.0)
    engine = LiveEngine(EngineConfig(model_config=str(args.config)))
    grid = dict(batch_sizes=(1, 4, 16), prompt_lens=(64,), output_tokens=9) if args.quick else {}
    summary, df = measure_engine_overhead(engine, latency, **grid)
    summary.update({"profile": prof.name, "threads": torch.get_num_threads(), "torch_version": torch.__version__,
                    "cpu_name": cpu_vendor_and_name()[1], "model_config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
                    "command": " ".join(["python", "benchmarks/measure_cpu_iterations.py", *sys.argv[1:]])})
    out = args.out if args.out != DEFAULT_OUT else ROOT / f"benchmarks/results/engine_overhead_{prof.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    df.to_csv(out.with_suffix(".csv"), index=False)
    print("\n".join(summary_lines(summary)))
    print(f"wrote {out} and {out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
