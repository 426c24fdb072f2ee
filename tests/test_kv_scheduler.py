"""Specification of the KV block manager, the batch schedulers and the routers (pure domain ring).

Everything here runs without SimPy: schedulers are stepped by hand with ``next_batch`` /
``complete`` exactly as the engine loop would, one iteration at a time, and the multi-iteration
``decode_horizon`` is checked against that hand stepping.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdsim.core.kv import KVBlockManager, blocks_for
from pdsim.core.request import Phase, Request
from pdsim.errors import ConfigError, InvariantViolation
from pdsim.routing.routers import LeastTokensRouter, RoundRobinRouter, make_router
from pdsim.scheduling.batch import (
    ColocatedScheduler,
    DecodeOnlyScheduler,
    PrefillOnlyScheduler,
    SchedulerLimits,
)


def colocated(capacity=10_000, block_size=16, watermark=0, tokens=8192, seqs=256) -> ColocatedScheduler:
    return ColocatedScheduler(KVBlockManager(capacity, block_size, watermark), SchedulerLimits(tokens, seqs))


def req(i, prompt, output, t=0.0) -> Request:
    return Request(i, t, prompt, output)


def step(sched, t=1.0):
    """One iteration by hand: form the batch, run it, apply it. Returns (batch, completion) or None."""
    batch = sched.next_batch()
    if batch is None:
        return None
    return batch, sched.complete(batch, 1, [t], 0.0)


# ---- KV block manager --------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens,bs,blocks", [(0, 16, 0), (1, 16, 1), (16, 16, 1), (17, 16, 2), (32, 16, 2), (33, 16, 3), (5, 1, 5)])
def test_blocks_for(tokens, bs, blocks):
    assert blocks_for(tokens, bs) == blocks


def test_ensure_and_free():
    kv = KVBlockManager(10, 4)
    kv.ensure(1, 5)  # 2 blocks
    kv.ensure(2, 4)  # 1 block
    assert (kv.used_blocks, kv.free_blocks, kv.held) == (3, 7, {1: 2, 2: 1})
    kv.ensure(1, 8)  # still 2 blocks
    assert kv.used_blocks == 3
    kv.ensure(1, 9)  # 3 blocks
    assert kv.held[1] == 3 and kv.used_blocks == 4
    assert kv.extra_blocks(1, 20) == 2 and kv.extra_blocks(1, 3) == 0
    assert kv.free(1) == 3 and kv.used_blocks == 1
    assert kv.free(1) == 0  # freeing twice is harmless
    assert kv.free(2) == 1 and kv.used_blocks == 0 and kv.held == {}
    assert kv.peak_used_blocks == 4


def test_over_allocation_raises_invariant_violation():
    kv = KVBlockManager(4, 16)
    kv.ensure(1, 48)  # 3 blocks
    with pytest.raises(InvariantViolation):
        kv.ensure(2, 17)  # 2 blocks, 1 free
    assert kv.used_blocks == 3 and 2 not in kv.held  # nothing half-done
    with pytest.raises(ValueError):
        KVBlockManager(0, 16)


def test_watermark_applies_to_admission_not_growth():
    kv = KVBlockManager(10, 16, watermark_blocks=2)
    kv.ensure(1, 16 * 7)  # 7 used, 3 free
    assert kv.can_admit(2, 16)  # 1 block: 3 - 2 >= 1
    assert not kv.can_admit(2, 32)  # 2 blocks would eat the watermark
    assert kv.can_grow(1, 16 * 10)  # growth may use the watermark: 3 more blocks
    assert not kv.can_grow(1, 16 * 10 + 1)  # 4 more: over capacity


# ---- colocated scheduler: limits and FCFS ------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(
    prompts=st.lists(st.tuples(st.integers(1, 700), st.integers(1, 40)), min_size=1, max_size=30),
    tokens=st.integers(700, 3000),
    seqs=st.integers(1, 12),
    capacity=st.integers(60, 400),
    block_size=st.sampled_from([1, 4, 16]),
)
def test_every_batch_respects_token_budget_and_seq_cap(prompts, tokens, seqs, capacity, block_size):
    sched = colocated(capacity=capacity, block_size=block_size, tokens=tokens, seqs=seqs)
    reqs = [req(i, p, o) for i, (p, o) in enumerate(prompts)
            if blocks_for(p + o, block_size) <= capacity]  # what the plan would not reject
    for r in reqs:
        sched.enqueue(r)
    admitted_order = []
    finished = []
    for it in range(20_000):
        out = step(sched, float(it))
        if out is None:
            break
        batch, done = out
        assert sum(batch.prefill_tokens) + len(batch.decode) <= tokens
        assert len(batch.prefill) + len(batch.decode) <= seqs
        assert sched.kv.used_blocks <= sched.kv.capacity_blocks
        admitted_order += [r.id for r in batch.prefill if r.preemptions == 0 and r.id not in admitted_order]
        finished += [r.id for r in done.finished]
    assert not sched.has_work
    assert sorted(finished) == [r.id for r in reqs]  # each exactly once
    assert all(r.generated == r.output_tokens for r in reqs)
    assert admitted_order == sorted(admitted_order)  # first admissions happen in arrival order (FCFS)
    assert sched.kv.used_blocks == 0 and sched.load_tokens == 0


def test_head_of_line_blocks_smaller_requests():
    sched = colocated(tokens=100)
    a, b, c = req(0, 60, 5), req(1, 60, 5), req(2, 10, 5)
    for r in (a, b, c):
        sched.enqueue(r)
    batch = sched.next_batch()
    assert batch.prefill == [a] and batch.prefill_tokens == [60]  # c would fit the budget but waits behind b
    assert list(sched.waiting) == [b, c]


def test_decodes_take_one_token_each_of_the_budget():
    sched = colocated(tokens=64)
    runners = [req(i, 8, 10) for i in range(4)]
    for r in runners:
        sched.enqueue(r)
    step(sched)  # 4 x 8 = 32 prompt tokens
    sched.enqueue(req(9, 60, 3))  # 60 + 4 decodes = 64 <= 64: fits
    batch = sched.next_batch()
    assert len(batch.decode) == 4 and [r.id for r in batch.prefill] == [9]
    sched.complete(batch, 1, [2.0], 0.0)
    sched.enqueue(req(10, 60, 3))  # now 5 decodes: 60 + 5 > 64
    batch = sched.next_batch()
    assert batch.prefill == [] and len(batch.decode) == 5


def test_seq_cap_limits_admission():
    sched = colocated(seqs=3)
    for i in range(5):
        sched.enqueue(req(i, 10, 4))
    batch = sched.next_batch()
    assert [r.id for r in batch.prefill] == [0, 1, 2]
    sched.complete(batch, 1, [1.0], 0.0)
    batch = sched.next_batch()
    assert batch.prefill == [] and len(batch.decode) == 3


# ---- preemption by recompute -----------------------------------------------------------------------

def test_preemption_victim_is_most_recent_and_requeued_first():
    sched = colocated(capacity=6, block_size=4)
    a, b, c = req(0, 8, 3), req(1, 8, 3), req(2, 4, 3)
    for r in (a, b, c):
        sched.enqueue(r)
    batch, _ = step(sched, 1.0)  # 2 + 2 + 1 blocks, 1 free
    assert batch.prefill == [a, b, c] and sched.kv.free_blocks == 1
    d = req(3, 4, 2)
    sched.enqueue(d)

    batch = sched.next_batch()  # a grows into the free block; b cannot -> c (the tail) is preempted
    assert batch.preempted
    assert batch.decode == [a, b] and batch.prefill == []  # nothing admitted in a preempting iteration
    assert list(sched.waiting) == [c, d]  # victim at the front
    assert c.phase is Phase.QUEUED and c.kv_tokens == 0 and c.id not in sched.kv.held
    assert c.preemptions == 1 and sched.preemptions == 1 and a.preemptions == b.preemptions == 0
    assert c.generated == 1 and c.prefill_tokens_needed == 4 + 1
    assert sched.decode_horizon(batch, 1000) == 1  # no window over a preempting step
    sched.complete(batch, 1, [2.0], 0.0)

    re_prefill = None
    for it in range(3, 50):
        out = step(sched, float(it))
        if out is None:
            break
        batch, _ = out
        if c in batch.prefill:
            re_prefill = batch.prefill_tokens[batch.prefill.index(c)]
            assert c.generated == 2 and c.kv_tokens == 5  # the recompute emitted the next token
    assert re_prefill == 5  # prompt (4) + the token generated before preemption
    assert all(r.phase is Phase.FINISHED and r.generated == r.output_tokens for r in (a, b, c, d))
    assert c.first_token_s == 1.0  # TTFT is the first prefill's, not the recompute's
    assert sched.kv.used_blocks == 0


def test_lone_request_that_cannot_grow_preempts_itself():
    # the tail of the running list is the victim, even when it is the request that needs the block
    sched = colocated(capacity=2, block_size=4)
    a = req(0, 8, 5)
    sched.enqueue(a)
    step(sched)  # a holds 2 blocks (8 tokens), needs a third to decode
    batch = sched.next_batch()
    assert batch is None or batch.decode == []
    assert a.preemptions == 1 and list(sched.waiting) == [a]


# ---- decode horizon ----------------------------------------------------------------------------------

def _stepped_run_length(sched, decode_ids) -> int:
    """Iterations stepping one at a time before the batch changes (inclusive of the first finish)."""
    n = 0
    while True:
        batch = sched.next_batch()
        if batch is None or batch.preempted or batch.prefill or [r.id for r in batch.decode] != decode_ids:
            return n
        done = sched.complete(batch, 1, [float(n)], 0.0)
        n += 1
        if done.finished:
            return n


def _prepare(capacity, block_size, specs):
    sched = colocated(capacity=capacity, block_size=block_size)
    for i, (p, o) in enumerate(specs):
        sched.enqueue(req(i, p, o))
    step(sched)  # prefill everyone
    return sched


@pytest.mark.parametrize("specs", [[(10, 50), (20, 30), (5, 80)], [(100, 7), (3, 200)], [(1, 2), (1, 400)]])
def test_horizon_is_first_finish_when_kv_is_plentiful(specs):
    sched = _prepare(100_000, 16, specs)
    batch = sched.next_batch()
    assert batch.is_pure_decode and not batch.preempted
    k = sched.decode_horizon(batch, 1_000_000)
    assert k == min(o for _, o in specs) - 1  # one token came from the prefill
    assert sched.decode_horizon(batch, 3) == min(3, k)
    assert sched.decode_horizon(batch, 1) == 1


@pytest.mark.parametrize("capacity,block_size,specs", [
    (12, 4, [(8, 100), (8, 100), (4, 100)]),
    (20, 16, [(30, 500), (100, 500), (1, 500)]),
    (9, 1, [(2, 50), (3, 50)]),
    (40, 8, [(33, 60), (17, 300), (60, 300), (2, 300)]),
])
def test_horizon_is_cut_when_kv_is_short_and_matches_hand_stepping(capacity, block_size, specs):
    sched = _prepare(capacity, block_size, specs)
    batch = sched.next_batch()
    assert batch.is_pure_decode and not batch.preempted
    k = sched.decode_horizon(batch, 1_000_000)
    first_finish = min(o for _, o in specs) - 1
    assert k < first_finish  # KV, not a finish, ends the window

    # the stepper starts from the same state, before next_batch reserved iteration 0
    stepper = _prepare(capacity, block_size, specs)
    n = _stepped_run_length(stepper, [r.id for r in batch.decode])
    assert k == n

    # Applying the window in one go lands in the state the stepper reached after k iterations.
    sched.complete(batch, k, [float(i) for i in range(k)], 0.0)
    ref = _prepare(capacity, block_size, specs)
    for i in range(k):
        b = ref.next_batch()
        ref.complete(b, 1, [float(i)], 0.0)
    assert [(r.generated, r.kv_tokens) for r in sched.running] == [(r.generated, r.kv_tokens) for r in ref.running]
    assert sched.kv.held == ref.kv.held and sched.kv.used_blocks == ref.kv.used_blocks
    # and the step after the window is the one that preempts (or finishes)
    nxt = ref.next_batch()
    assert nxt.preempted


@settings(max_examples=60, deadline=None)
@given(
    specs=st.lists(st.tuples(st.integers(1, 200), st.integers(2, 120)), min_size=1, max_size=8),
    block_size=st.sampled_from([1, 2, 16]),
    slack=st.integers(0, 60),
)
def test_horizon_equals_hand_stepping(specs, block_size, slack):
    need = sum(blocks_for(p + 1, block_size) for p, _ in specs)
    capacity = need + slack
    sched = _prepare(capacity, block_size, specs)
    batch = sched.next_batch()
    if batch is None or not batch.is_pure_decode or batch.preempted:
        return
    k = sched.decode_horizon(batch, 1_000_000)
    stepper = _prepare(capacity, block_size, specs)
    n = _stepped_run_length(stepper, [r.id for r in batch.decode])
    assert k == n


# ---- prefill-only and decode-only roles ----------------------------------------------------------------

def test_prefill_only_hands_off_and_holds_blocks_until_release():
    sched = PrefillOnlyScheduler(KVBlockManager(100, 16), SchedulerLimits(4096, 16))
    a, one = req(0, 40, 10), req(1, 20, 1)
    sched.enqueue(a)
    sched.enqueue(one)
    batch = sched.next_batch()
    done = sched.complete(batch, 1, [0.5], 0.0)
    assert done.handed_off == [a] and done.finished == [one]
    assert a.phase is Phase.TRANSFER and a.generated == 1 and a.kv_tokens == 40 and a.first_token_s == 0.5
    assert one.phase is Phase.FINISHED and one.finish_s == 0.5
    assert sched.kv.held == {0: 3}  # a's 3 blocks stay; the finished request's are freed
    assert not sched.running and sched.next_batch() is None  # nothing decodes here
    sched.release(a)
    assert sched.kv.used_blocks == 0 and sched.load_tokens == 0


def _transferred(i, kv_tokens, output=5):
    r = req(i, kv_tokens, output)
    r.kv_tokens, r.generated, r.phase = kv_tokens, 1, Phase.TRANSFER
    return r


def test_decode_only_reserves_fcfs_and_accepts():
    sched = DecodeOnlyScheduler(KVBlockManager(10, 16, watermark_blocks=1), SchedulerLimits(4096, 8))
    rs = [_transferred(i, n) for i, n in enumerate([64, 100, 16, 32])]  # 4, 7, 1, 2 blocks
    for r in rs:
        sched.offer(r)
    started = sched.reserve_pending()
    assert started == [rs[0]]  # r1 needs 7 > 10 - 4 - watermark: it blocks r2 behind it (FCFS)
    assert sched.kv.held == {0: 4} and sched.in_transfer == 1
    assert not sched.has_work  # a reserved transfer is not work until it arrives
    sched.accept(rs[0])
    assert sched.running == [rs[0]] and rs[0].phase is Phase.DECODE and sched.in_transfer == 0
    assert sched.reserve_pending() == []
    for it in range(4):  # r0 decodes its remaining 4 tokens
        batch = sched.next_batch()
        assert batch.decode == [rs[0]] and batch.prefill == []
        sched.complete(batch, 1, [float(it)], 0.0)
    assert rs[0].phase is Phase.FINISHED and sched.kv.used_blocks == 0
    started = sched.reserve_pending()
    assert started == [rs[1], rs[2]]  # 7 + 1 blocks; r3 (2 blocks) would eat the watermark
    assert sched.in_transfer == 2 and list(sched.pending) == [rs[3]]
    for r in started:
        sched.accept(r)
    assert sched.running == [rs[1], rs[2]] and sched.in_transfer == 0


def test_decode_only_seat_cap_counts_transfers_in_flight():
    sched = DecodeOnlyScheduler(KVBlockManager(1000, 16), SchedulerLimits(4096, 3))
    rs = [_transferred(i, 16) for i in range(5)]
    for r in rs:
        sched.offer(r)
    assert sched.reserve_pending() == rs[:3]  # running + in transfer + waiting < max_num_seqs
    assert sched.reserve_pending() == []
    sched.accept(rs[0])
    assert sched.reserve_pending() == []  # accepted requests still hold a seat
    batch = sched.next_batch()
    sched.complete(batch, 4, [1.0, 2.0, 3.0, 4.0], 1.0)  # r0 finishes (1 + 4 = 5 tokens)
    assert rs[0].phase is Phase.FINISHED
    assert sched.reserve_pending() == [rs[3]]
    assert list(sched.pending) == [rs[4]]


# ---- routers ----------------------------------------------------------------------------------------

class _Inst:
    def __init__(self, load):
        self.load = load

    def load_tokens(self, now_s):
        return self.load


def test_round_robin_cycles():
    r = RoundRobinRouter()
    insts = [_Inst(0), _Inst(0), _Inst(0)]
    assert [r.choose(insts, 0.0) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    insts[0].load = 10**9  # ignores load
    assert r.choose(insts, 0.0) == 1


@pytest.mark.parametrize("loads,expected", [([5, 3, 3, 7], 1), ([0, 0, 0], 0), ([9, 8, 7, 7], 2), ([4], 0), ([2, 1], 1)])
def test_least_tokens_picks_lowest_load_lowest_index(loads, expected):
    assert LeastTokensRouter().choose([_Inst(v) for v in loads], 0.0) == expected


def test_make_router():
    assert make_router("least_tokens").name == "least_tokens" and make_router("round_robin").name == "round_robin"
    with pytest.raises(ConfigError):
        make_router("random")
