"""Chunked prefill, swap preemption and prefix caching: the scheduler and KV manager as specifications,
then whole simulations that show each mechanism's effect (and its absence when it should be absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdsim.core.kv import KVBlockManager
from pdsim.core.request import Phase, Request
from pdsim.errors import ConfigError
from pdsim.metrics.records import requests_frame
from pdsim.scheduling.batch import ColocatedScheduler, PrefillOnlyScheduler, SchedulerLimits, SwapSpace
from pdsim.sim.cluster import simulate
from pdsim.sim.plan import plan_deployments
from test_sim import check_invariants, colocated, experiment, latency, load, workload_frame

REPO = Path(__file__).resolve().parents[1]
MOONCAKE = REPO / "traces" / "mooncake" / "conversation_trace.jsonl"


def run_to_end(sched, reqs, iteration_s=1.0, max_iterations=10_000):
    """Drive a scheduler one iteration at a time; returns the batches formed."""
    for r in reqs:
        sched.enqueue(r)
    batches, t = [], 0.0
    for _ in range(max_iterations):
        batch = sched.next_batch()
        if batch is None:
            break
        t += iteration_s + batch.swap_s
        sched.complete(batch, 1, [t], 0.0)
        batches.append(batch)
    return batches


# ---- chunked prefill -------------------------------------------------------------------------------------

def test_chunked_prefill_splits_a_long_prompt_within_the_budget():
    kv = KVBlockManager(10_000, 16)
    sched = ColocatedScheduler(kv, SchedulerLimits(4096, 8, chunked_prefill=True))
    req = Request(0, 0.0, 10_000, 3)
    batches = run_to_end(sched, [req])
    chunks = [b.prefill_tokens for b in batches if b.prefill]
    assert chunks == [[4096], [4096], [1808]]
    # attention work of a chunk against its cached context: chunk x (chunk + 2 cached)
    assert [b.shape.prefill_square_tokens for b in batches[:3]] == [4096 * 4096, 4096 * (4096 + 2 * 4096), 1808 * (1808 + 2 * 8192)]
    assert req.first_token_s == 3.0  # the token comes with the last chunk
    assert req.phase is Phase.FINISHED and req.generated == 3 and len(batches) == 5
    assert kv.used_blocks == 0 and sched.load_tokens == 0


def test_without_chunking_the_prompt_runs_whole():
    kv = KVBlockManager(10_000, 16)
    sched = ColocatedScheduler(kv, SchedulerLimits(16_384, 8))
    req = Request(0, 0.0, 10_000, 3)
    batches = run_to_end(sched, [req])
    assert batches[0].prefill_tokens == [10_000] and req.first_token_s == 1.0


def test_long_prefill_threshold_caps_chunks_and_lets_short_prompts_in():
    kv = KVBlockManager(10_000, 16)
    sched = ColocatedScheduler(kv, SchedulerLimits(2048, 8, chunked_prefill=True, long_prefill_token_threshold=512))
    long, short = Request(0, 0.0, 4000, 2), Request(1, 0.0, 100, 2)
    batches = run_to_end(sched, [long, short])
    first = batches[0]
    assert first.prefill == [long, short] and first.prefill_tokens == [512, 100]
    assert short.first_token_s == 1.0  # not behind the whole long prompt
    assert all(n <= 512 for b in batches for n in b.prefill_tokens)
    assert long.first_token_s == float(-(-4000 // 512))


def test_decodes_run_beside_prefill_chunks():
    kv = KVBlockManager(10_000, 16)
    sched = ColocatedScheduler(kv, SchedulerLimits(1024, 8, chunked_prefill=True))
    dec = Request(0, 0.0, 10, 50)
    run_to_end(sched, [dec], max_iterations=2)  # prefilled, decoding
    long = Request(1, 0.0, 5000, 2)
    sched.enqueue(long)
    batch = sched.next_batch()
    assert batch.decode == [dec] and batch.prefill == [long] and batch.prefill_tokens == [1023]
    assert batch.shape.prefill_tokens + batch.shape.decode_seqs == 1024


def test_chunked_prefill_lowers_ttft_tail_under_long_prompts(tmp_path):
    """A mixed trace (85 % 200-token prompts, 15 % 7,000-token ones): with chunks capped at 512 tokens
    the short prompts no longer wait behind whole long prefills (Sarathi-Serve, OSDI 2024), so their
    TTFT tail drops, and so does the longest inter-token gap (decode stall). The price, also checked:
    long prompts take longer to their first token (their prefill is spread over iterations)."""
    rng = np.random.default_rng(3)
    n = 120
    t = np.cumsum(rng.exponential(0.25, n))
    prompts = np.where(rng.random(n) < 0.15, 7000, 200)
    rows = [(float(a), int(p), 64) for a, p in zip(t, prompts)]
    wl = workload_frame(rows)
    lat = {"kind": "op_level", "profile": "a100_sxm-aiconfigurator"}
    base = {"max_num_batched_tokens": 8192, "max_num_seqs": 64}
    dep_plain = colocated("plain", lat=lat)
    dep_chunk = colocated("chunked", lat=lat, enable_chunked_prefill=True, max_num_batched_tokens=2048,
                          long_prefill_token_threshold=512)
    data = experiment([dep_plain, dep_chunk], scheduler=base)
    data["model"] = "Llama-3.1-70B"  # 128k context
    exp = load(tmp_path, data)
    out = {}
    for plan in plan_deployments(exp):
        df = check_invariants(plan, wl, simulate(plan, wl))
        out[plan.name] = df
    short = lambda df: df[df.prompt_tokens == 200]  # noqa: E731
    long = lambda df: df[df.prompt_tokens == 7000]  # noqa: E731
    assert all((df.status == "completed").all() for df in out.values())
    assert short(out["chunked"]).ttft_s.quantile(0.9) < 0.5 * short(out["plain"]).ttft_s.quantile(0.9)
    assert out["chunked"].itl_max_s.max() < 0.5 * out["plain"].itl_max_s.max()
    assert long(out["chunked"]).ttft_s.mean() > long(out["plain"]).ttft_s.mean()


def test_chunked_prefill_serves_requests_longer_than_the_budget(tmp_path):
    dep = colocated("c", lat=latency("constant", 0.01), enable_chunked_prefill=True)
    exp = load(tmp_path, experiment([dep], scheduler={"max_num_batched_tokens": 512, "max_num_seqs": 8}))
    (plan,) = plan_deployments(exp)
    wl = workload_frame([(0.0, 3000, 20), (0.0, 400, 113)])
    df = check_invariants(plan, wl, simulate(plan, wl))
    assert (df.status == "completed").all()
    # the 3000-token prompt needs ceil(3000 / 512) = 6 iterations of 10 ms (the other shares them)
    assert df.loc[0, "ttft_s"] == pytest.approx(6 * 0.01)


# ---- preemption: recompute and swap ----------------------------------------------------------------------

def _pressure_rows(seed=7, n=60):
    rng = np.random.default_rng(seed)
    return [(float(t), int(p), int(o)) for t, p, o in zip(
        np.cumsum(rng.uniform(0, 0.3, n)), rng.integers(100, 1500, n), rng.integers(50, 300, n))]


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_appears_when_memory_is_short_and_not_otherwise(tmp_path, mode):
    wl = workload_frame(_pressure_rows())
    tight = colocated("tight", kv_blocks=150, instances=2, max_num_seqs=32, preemption_mode=mode)
    roomy = colocated("roomy", instances=2, max_num_seqs=32, preemption_mode=mode)
    exp = load(tmp_path, experiment([tight, roomy]))
    res = {}
    for plan in plan_deployments(exp):
        sim = simulate(plan, wl)
        res[plan.name] = (check_invariants(plan, wl, sim), sim)
    assert res["tight"][0].preemptions.sum() > 0
    assert res["roomy"][0].preemptions.sum() == 0
    swaps = res["tight"][0].swaps.sum()
    assert (swaps > 0) == (mode == "swap")
    if mode == "swap":
        assert swaps == res["tight"][1].instances.swaps.sum()


def test_swap_keeps_computed_kv_and_charges_the_host_link(tmp_path):
    """Swap re-prefills nothing (fewer prefill tokens than recompute) and the swap time is blocks x
    bytes per block per GPU / host link bandwidth, charged to the iterations that swap."""
    wl = workload_frame(_pressure_rows())
    deps = [colocated(m, kv_blocks=150, instances=2, max_num_seqs=32, preemption_mode=m) for m in ("recompute", "swap")]
    exp = load(tmp_path, experiment(deps))
    plans = {p.name: p for p in plan_deployments(exp)}
    sims = {name: simulate(plan, wl) for name, plan in plans.items()}
    prompt_tokens = int(wl.prompt_tokens.sum())
    computed = {name: int(sim.instances.prefill_tokens_computed.sum()) for name, sim in sims.items()}
    assert computed["recompute"] > prompt_tokens
    swap_df = requests_frame(sims["swap"].requests, "swap", "w")
    recomputed = swap_df.preemptions.sum() - swap_df.swaps.sum()
    assert computed["swap"] == prompt_tokens if recomputed == 0 else computed["swap"] < computed["recompute"]
    pool_plan = plans["swap"].pools[0]
    space = SwapSpace(10, pool_plan.kv_bytes_per_token_per_gpu * 16, pool_plan.gpu.host_link_gbps * 1e9 / 8)
    # A100: PCIe Gen4 x16 = 252 Gb/s; Llama-2-70B at TP 8: 2 x 80 layers x 1 KV head x 128 x 2 B = 40,960 B/token/GPU
    assert pool_plan.kv_bytes_per_token_per_gpu == 40_960
    assert space.transfer_s(100) == pytest.approx(100 * 16 * 40_960 / (16e9 * 128 / 130 * 16 / 8))


def test_swap_falls_back_to_recompute_when_host_space_is_full():
    for host_blocks, expect_swaps in ((2, False), (100, True)):
        kv = KVBlockManager(12, 16)
        swap = SwapSpace(capacity_blocks=host_blocks, bytes_per_block=1000, host_link_bytes_per_s=1e6)
        sched = ColocatedScheduler(kv, SchedulerLimits(4096, 8), swap)
        reqs = [Request(i, 0.0, 60, 100) for i in range(3)]  # 4 blocks each at first, 10 at the end
        run_to_end(sched, reqs)
        assert all(r.phase is Phase.FINISHED and r.generated == 100 for r in reqs)
        assert sched.preemptions > 0
        # a victim larger than the free host space is recomputed instead
        assert (sched.swaps == sched.preemptions) if expect_swaps else (sched.swaps == 0)
        assert sched.swap_used_blocks == 0 and not sched.swapped and kv.used_blocks == 0


def test_swap_in_precedes_new_admissions():
    kv = KVBlockManager(12, 16)
    swap = SwapSpace(capacity_blocks=100, bytes_per_block=1000, host_link_bytes_per_s=1e6)
    sched = ColocatedScheduler(kv, SchedulerLimits(4096, 8), swap)
    a, b = Request(0, 0.0, 60, 100), Request(1, 0.0, 60, 100)
    for r in (a, b):
        sched.enqueue(r)
    t = 0.0
    while not sched.swapped:
        batch = sched.next_batch()
        t += 1
        sched.complete(batch, 1, [t], 0.0)
    victim_blocks = sched.swap_used_blocks
    assert batch.preempted and victim_blocks > 0 and batch.swap_s == pytest.approx(victim_blocks * 1000 / 1e6)
    late = Request(2, t, 10, 2)
    sched.enqueue(late)
    waited = 0
    while sched.swapped:
        batch = sched.next_batch()
        t += 1
        if sched.swapped:  # not swapped back in yet: nothing new is admitted
            assert late not in batch.prefill
            waited += 1
        sched.complete(batch, 1, [t], 0.0)
    assert waited > 0
    assert batch.swap_s == pytest.approx(victim_blocks * 1000 / 1e6)  # the swap-in pays the copy back
    run_to_end(sched, [])
    assert late.phase is Phase.FINISHED and b.phase is Phase.FINISHED and a.phase is Phase.FINISHED


# ---- prefix caching --------------------------------------------------------------------------------------

def test_prefix_cache_reuses_publishes_and_evicts_lru():
    kv = KVBlockManager(40, 16, prefix_unit_tokens=64)  # a unit = 4 blocks
    sched = ColocatedScheduler(kv, SchedulerLimits(4096, 8))
    a = Request(0, 0.0, 200, 2)
    a.hash_ids = (1, 2, 3, 4)
    run_to_end(sched, [a])
    # a computed 200 tokens: units 1, 2, 3 are full (192 tokens) and cached; unit 4 is partial
    assert set(kv.cache) == {1, 2, 3} and kv.evictable_blocks == 12 and kv.used_blocks == 12
    b = Request(1, 0.0, 200, 2)
    b.hash_ids = (1, 2, 9, 10)
    assert sched.cached_prefix_tokens(b) == 128
    batches = run_to_end(sched, [b])
    assert b.prefix_hit_tokens == 128 and batches[0].prefill_tokens == [72]
    assert batches[0].shape.prefill_square_tokens == 72 * (72 + 2 * 128)
    assert kv.cache.keys() >= {1, 2, 3, 9} and all(v == 0 for v in kv.cache.values())
    # a big request needs more than the free blocks: the least recently used units go first (3, then 1, 2 ...)
    c = Request(2, 0.0, 16 * 30, 2)
    run_to_end(sched, [c])
    assert 3 not in kv.cache and kv.evicted_units >= 1
    kv.check_drained("test")


def test_whole_prompt_hit_still_computes_one_token():
    kv = KVBlockManager(40, 16, prefix_unit_tokens=64)
    sched = ColocatedScheduler(kv, SchedulerLimits(4096, 8))
    a, b = Request(0, 0.0, 128, 2), Request(1, 0.0, 128, 2)
    a.hash_ids = b.hash_ids = (5, 6)
    run_to_end(sched, [a])
    batches = run_to_end(sched, [b])
    assert b.prefix_hit_tokens == 64 and batches[0].prefill_tokens == [64]  # the last unit is recomputed


def test_prefix_cache_on_a_prefill_instance_survives_the_handoff():
    kv = KVBlockManager(40, 16, prefix_unit_tokens=64)
    sched = PrefillOnlyScheduler(kv, SchedulerLimits(4096, 8))
    a = Request(0, 0.0, 130, 5)
    a.hash_ids = (1, 2, 3)
    sched.enqueue(a)
    batch = sched.next_batch()
    done = sched.complete(batch, 1, [1.0], 0.0)
    assert done.handed_off == [a] and kv.cache == {1: 1, 2: 1}
    sched.release(a)
    assert kv.cache == {1: 0, 2: 0} and kv.evictable_blocks == 8
    kv.check_drained("prefill")


def _mooncake_frame(n: int) -> pd.DataFrame:
    rows = [json.loads(line) for line in MOONCAKE.read_text().splitlines()[:n]]
    df = workload_frame([(r["timestamp"] / 1000.0, r["input_length"], r["output_length"]) for r in rows])
    df["hash_ids"] = [r["hash_ids"] for r in rows]
    return df


def test_mooncake_prefix_hits_are_real_and_bounded(tmp_path):
    """Replaying the Mooncake trace with its hash_ids: hits happen, each request's hits never exceed the
    prefix it shares with an earlier request, and caching lowers TTFT. KV stays within capacity."""
    wl = _mooncake_frame(300)
    lat = {"kind": "op_level", "profile": "h100_sxm-aiconfigurator"}
    on = colocated("on", gpu="H100-SXM", tp=8, lat=lat, enable_prefix_caching=True, enable_chunked_prefill=True)
    off = colocated("off", gpu="H100-SXM", tp=8, lat=lat, enable_chunked_prefill=True)
    data = experiment([on, off], scheduler={"max_num_batched_tokens": 8192, "max_num_seqs": 64})
    data["model"] = "Llama-3.1-70B"  # 128k context: Mooncake prompts run to tens of thousands of tokens
    exp = load(tmp_path, data)
    res = {}
    for plan in plan_deployments(exp):
        sim = simulate(plan, wl)
        res[plan.name] = (check_invariants(plan, wl, sim), sim)
    df_on, sim_on = res["on"]
    df_off, _ = res["off"]
    assert df_off.prefix_hit_tokens.sum() == 0
    hits = df_on.prefix_hit_tokens.to_numpy()
    assert hits.sum() > 0
    seen: list[tuple[int, ...]] = []
    for hashes, hit, prompt in zip(wl.hash_ids, hits, wl.prompt_tokens):
        shared = max((_common_prefix(hashes, h) for h in seen), default=0)
        assert hit <= shared * 512 and hit <= prompt - 1 and hit % 512 == 0
        seen.append(tuple(hashes))
    inst = sim_on.instances
    assert (inst.kv_peak_blocks <= inst.kv_capacity_blocks).all()
    computed = int(inst.prefill_tokens_computed.sum())
    if df_on.preemptions.sum() == 0:  # every prompt token is either reused or computed, once
        assert computed == int(wl.prompt_tokens.sum() - hits.sum())
    else:
        assert computed > int(wl.prompt_tokens.sum() - hits.sum())
    assert df_on.ttft_s.mean() < df_off.ttft_s.mean()


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def test_prefix_unit_must_be_whole_blocks(tmp_path):
    dep = colocated("c", enable_prefix_caching=True, prefix_unit_tokens=500)
    exp = load(tmp_path, experiment([dep]))
    with pytest.raises(ConfigError, match="prefix_unit_tokens: 500 is not a multiple of block_size 16"):
        plan_deployments(exp)


def test_default_settings_are_the_old_scheduler(tmp_path):
    """The new knobs default off: an experiment with them spelled out at their defaults gives the same
    frame as one without them."""
    wl = workload_frame(_pressure_rows())
    plain = colocated("a", kv_blocks=150, instances=2, max_num_seqs=32)
    spelled = colocated("a", kv_blocks=150, instances=2, max_num_seqs=32, enable_chunked_prefill=False,
                        preemption_mode="recompute", enable_prefix_caching=False)
    frames = []
    for dep in (plain, spelled):
        d = tmp_path / str(len(frames))
        d.mkdir()
        (plan,) = plan_deployments(load(d, experiment([dep])))
        frames.append(requests_frame(simulate(plan, wl).requests, "a", "w"))
    pd.testing.assert_frame_equal(frames[0], frames[1])
