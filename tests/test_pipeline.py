"""Pipeline parallelism: micro-batches in flight, per-stage latency, heterogeneous stages.

Analytic checks use the constant latency model (a flow shop of identical jobs: the k-th of n batches
that arrive together leaves the last stage at ``sum(stage) + k x max(stage)``); invariants run random
workloads through pipelined instances under KV pressure; the op-level stage split is checked against
its own iteration time and the datasheet roofline of the embedding; a heterogeneous pool is checked
against memory arithmetic done here from the model's parameter counts.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdsim.config.load import load_experiment_file
from pdsim.core.request import Phase
from pdsim.errors import CapacityError, ConfigError
from pdsim.hardware.gpus import load_gpu_catalog
from pdsim.latency.base import BatchShape, LatencyModel, pp_layer_split, split_by_layers
from pdsim.latency.constant import ConstantLatencyModel
from pdsim.latency.oplevel import (
    MEM_BW_EFFICIENCY,
    MEM_CONSTANT_LATENCY_S,
    OpLevelModel,
)
from pdsim.latency.stages import StagedLatencyModel
from pdsim.models.arch import load_model_catalog, model_from_hf_config
from pdsim.profiles.format import find_profile, load_profile
from pdsim.scheduling.batch import BatchScheduler
from pdsim.sim.cluster import simulate
from pdsim.sim.plan import DeploymentPlan, plan_deployments

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "gpu_profiles" / "splitwise_sim" / "perf_model.csv"
GIB = 2**30
LLAMA31_70B = model_from_hf_config("Llama-3.1-70B", load_model_catalog()["Llama-3.1-70B"])
LLAMA2_70B = model_from_hf_config("Llama-2-70b-hf", load_model_catalog()["Llama-2-70b-hf"])


# ---- helpers ---------------------------------------------------------------------------------------------

def constant(iteration_s: float) -> dict:
    return {"kind": "constant", "iteration_s": iteration_s}


def table() -> dict:
    return {"kind": "splitwise_table", "path": str(TABLE)}


def plan_for(directory: Path, deployment: dict, model="Llama-2-70b-hf", scheduler: dict | None = None,
             latency_models: dict | None = None) -> DeploymentPlan:
    data = {
        "name": "pp", "seed": 0, "model": model, "slo": {"ttft_s": 1.0, "tpot_s": 0.1},
        "scheduler": scheduler or {}, "latency_models": latency_models or {}, "deployments": [deployment],
        "workloads": {"w": {"kind": "poisson", "rate_rps": 1.0, "num_requests": 1,
                            "lengths": {"kind": "fixed", "prompt_tokens": 8, "output_tokens": 2}}},
    }
    path = Path(directory) / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    (plan,) = plan_deployments(load_experiment_file(path))
    return plan


def colocated(pool: dict) -> dict:
    return {"name": "c", "kind": "colocated", "pool": pool}


def workload(rows: list[tuple[float, int, int]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["arrival_s", "prompt_tokens", "output_tokens"]).astype(
        {"arrival_s": "float64", "prompt_tokens": "int64", "output_tokens": "int64"})
    df.insert(0, "request_id", np.arange(len(df), dtype=np.int64))
    return df


def reserve_gib_for(blocks: int, pp: int, tp: int = 8) -> float:
    """An activation reserve leaving about ``blocks`` KV blocks per Llama-2-70B instance on 80 GB GPUs."""
    weights = LLAMA2_70B.weight_bytes_per_gpu(tp, pp, 2)
    block_bytes = LLAMA2_70B.kv_bytes_per_token_per_gpu(tp, pp, 2) * 16
    return (int(80e9 * 0.9) - weights - blocks * block_bytes - block_bytes // 2) / GIB


def serial(plan: DeploymentPlan) -> DeploymentPlan:
    """The same deployment with each instance running one batch at a time through all its stages
    (the engine before pipelining): one engine stage whose iteration is the whole pass."""
    return dataclasses.replace(plan, pools=tuple(dataclasses.replace(p, pp=1) for p in plan.pools))


@pytest.fixture
def in_flight_monitor(monkeypatch):
    """Checks, outside the engine, that no request is in two batches in flight on one instance."""
    inflight: dict[int, set[int]] = {}
    depth: dict[int, int] = {}
    formed = [0]
    next_batch, complete = BatchScheduler.next_batch, BatchScheduler.complete

    def checked_next_batch(self):
        key = id(self)
        depth[key] = depth.get(key, 0) + 1
        try:
            batch = next_batch(self)
        finally:
            depth[key] -= 1
        if batch is not None and depth[key] == 0:
            ids = [r.id for r in batch.prefill] + [r.id for r in batch.decode]
            assert len(set(ids)) == len(ids)
            held = inflight.setdefault(key, set())
            assert held.isdisjoint(ids), f"requests {sorted(held & set(ids))} in two in-flight batches"
            held.update(ids)
            formed[0] += 1
        return batch

    def checked_complete(self, batch, *args, **kwargs):
        held = inflight.setdefault(id(self), set())
        for r in [*batch.prefill, *batch.decode]:
            held.remove(r.id)
        return complete(self, batch, *args, **kwargs)

    monkeypatch.setattr(BatchScheduler, "next_batch", checked_next_batch)
    monkeypatch.setattr(BatchScheduler, "complete", checked_complete)
    return formed


# ---- layer split and stage-time protocol -------------------------------------------------------------------

def test_layer_split_follows_vllm_get_pp_indices():
    # vLLM gives the remainder to the stages before the last, from the second-to-last backwards
    assert pp_layer_split(80, 1) == (80,)
    assert pp_layer_split(80, 2) == (40, 40)
    assert pp_layer_split(80, 3) == (27, 27, 26)
    assert pp_layer_split(61, 4) == (15, 15, 16, 15)
    assert pp_layer_split(61, 2) == (31, 30)
    assert pp_layer_split(7, 7) == (1,) * 7
    with pytest.raises(ValueError, match="pp must be in"):
        pp_layer_split(4, 5)


def test_default_stage_times_split_the_iteration_by_layers():
    assert split_by_layers(0.3, (80,)) == (0.3,)
    assert split_by_layers(0.3, (40, 40)) == (0.15, 0.15)
    t = split_by_layers(0.8, (27, 27, 26))
    assert sum(t) == pytest.approx(0.8, rel=1e-12) and t[0] == t[1] > t[2]
    lm = ConstantLatencyModel(0.2, (40, 40))
    assert isinstance(lm, LatencyModel)
    assert lm.stage_times_s(BatchShape(decode_seqs=1, decode_context_tokens=10)) == (0.1, 0.1)
    assert lm.iteration_s(BatchShape(decode_seqs=1, decode_context_tokens=10)) == 0.2
    assert lm.stats.lookups == 2


@pytest.fixture(scope="module")
def h100_profile():
    return load_profile(find_profile("h100_sxm-aiconfigurator", REPO / "experiments").path)


SHAPES = [
    BatchShape(decode_seqs=64, decode_context_tokens=64 * 1500),
    BatchShape(prefill_tokens=3000, prefill_seqs=2, decode_seqs=10, decode_context_tokens=9000,
               prefill_square_tokens=2000**2 + 1000**2),
]


@pytest.mark.parametrize("pp", [2, 3, 4])
def test_oplevel_stage_times_add_up_to_the_pass(h100_profile, pp):
    gpu = load_gpu_catalog()["H100-SXM"]
    lm = OpLevelModel([h100_profile], LLAMA31_70B, tp=4, pp=pp, dtype="bf16", gpu=gpu, iteration_overhead_s=1e-3)
    assert lm.stage_layers == pp_layer_split(80, pp)
    for shape in SHAPES:
        stages = lm.stage_times_s(shape)
        assert len(stages) == pp and min(stages) > 0
        assert sum(stages) == pytest.approx(lm.iteration_s(shape), rel=1e-9)
        # a pipeline completes one pass per slowest stage, faster than one per pass
        assert max(stages) < 0.6 * sum(stages)


def test_oplevel_stages_embed_first_and_sample_last(h100_profile):
    gpu = load_gpu_catalog()["H100-SXM"]
    overhead = 1e-3
    even = OpLevelModel([h100_profile], LLAMA31_70B, tp=4, pp=3, dtype="bf16", gpu=gpu, iteration_overhead_s=overhead,
                        stage_layers=(30, 30, 20))
    shifted = OpLevelModel([h100_profile], LLAMA31_70B, tp=4, pp=3, dtype="bf16", gpu=gpu, iteration_overhead_s=overhead,
                           stage_layers=(31, 29, 20))
    for shape in SHAPES:
        t0, t1, t2 = even.stage_times_s(shape)
        tokens = shape.prefill_tokens + shape.decode_seqs
        # stages 0 and 1 run the same layers and both hand off; stage 0 also pays the overhead and the
        # embedding, which the profile lacks: datasheet memory roofline (2 x hidden x 2 bytes per token)
        embed = MEM_CONSTANT_LATENCY_S + 2 * 8192 * 2 * tokens / (gpu.mem_bw_bytes_per_s * MEM_BW_EFFICIENCY)
        assert t0 - t1 == pytest.approx(overhead + embed, rel=1e-6)
        # one layer moved from stage 1 to stage 0 moves one layer's time
        s0, s1, s2 = shifted.stage_times_s(shape)
        assert s0 - t0 == pytest.approx(t1 - s1, rel=1e-9) and s0 - t0 > 0
        assert s2 == t2
        # the last stage samples (final norm, LM head) instead of handing off
        assert sum(even.stage_times_s(shape)) == pytest.approx(even.iteration_s(shape), rel=1e-9)


def test_staged_model_takes_each_stage_from_its_own_model():
    a = ConstantLatencyModel(0.2, (40, 40))
    b = ConstantLatencyModel(0.6, (40, 40))
    lm = StagedLatencyModel([a, b])
    shape = BatchShape(decode_seqs=4, decode_context_tokens=40)
    assert lm.stage_times_s(shape) == (0.1, 0.3)
    assert lm.iteration_s(shape) == pytest.approx(0.4)
    before = lm.stats.lookups
    assert lm.decode_s(4, 40) == pytest.approx(0.4)
    assert lm.stats.lookups == before  # decode_s is pure
    with pytest.raises(ValueError):
        StagedLatencyModel([a])


# ---- the pipelined engine: analytic checks -------------------------------------------------------------------

@pytest.mark.parametrize("pp,n", [(2, 1), (2, 7), (4, 3), (4, 12), (5, 9)])
def test_identical_batches_leave_at_pp_plus_n_minus_one_stage_times(tmp_path, pp, n):
    full_s = 0.4
    plan = plan_for(tmp_path, colocated({"gpu": "A100-80GB-SXM", "tp": 8, "pp": pp, "instances": 1,
                                         "latency": constant(full_s)}),
                    scheduler={"max_num_batched_tokens": 100, "max_num_seqs": 64})
    # one 100-token prompt fills a batch's budget: n one-request batches, all ready at t = 0
    sim = simulate(plan, workload([(0.0, 100, 1)] * n))
    stage_s = full_s / pp  # 80 layers split evenly for pp in (2, 4, 5)
    finish = sorted(r.finish_s for r in sim.requests)
    assert finish == pytest.approx([(pp + k) * stage_s for k in range(n)], rel=1e-12)
    assert max(finish) == pytest.approx((pp + n - 1) * stage_s, rel=1e-12)
    # a lone batch's latency is the whole pass
    assert finish[0] == pytest.approx(full_s, rel=1e-12)
    assert sim.instances.iterations.iloc[0] == n


def test_uneven_pipeline_is_bound_by_its_slowest_stage(tmp_path):
    fast, slow = 0.1, 0.6  # whole-model times; each stage takes half (40 of 80 layers)
    stages = [{"gpu": "A100-80GB-SXM", "layers": 40, "latency": constant(fast)},
              {"gpu": "A100-80GB-SXM", "layers": 40, "latency": constant(slow)}]
    plan = plan_for(tmp_path, colocated({"tp": 8, "instances": 1, "latency": constant(fast), "stages": stages}),
                    scheduler={"max_num_batched_tokens": 100, "max_num_seqs": 64})
    n = 10
    sim = simulate(plan, workload([(0.0, 100, 1)] * n))
    t0, t1 = fast / 2, slow / 2
    finish = sorted(r.finish_s for r in sim.requests)
    assert finish == pytest.approx([t0 + t1 + k * max(t0, t1) for k in range(n)], rel=1e-12)
    # steady state: one batch per slowest stage time
    assert np.diff(finish) == pytest.approx([t1] * (n - 1), rel=1e-9)


def test_decode_tokens_of_one_request_are_a_pass_apart(tmp_path):
    # a request's next token needs its previous one: alone, it sees the whole pass per token
    plan = plan_for(tmp_path, colocated({"gpu": "A100-80GB-SXM", "tp": 8, "pp": 4, "instances": 1,
                                         "latency": constant(0.2)}))
    sim = simulate(plan, workload([(0.5, 64, 5)]), token_times=(times := {}))
    (req,) = sim.requests
    assert req.first_token_s == pytest.approx(0.7) and req.prefill_start_s == 0.5
    assert np.diff(times[req.id]) == pytest.approx([0.2] * 4)
    assert req.finish_s == pytest.approx(0.5 + 5 * 0.2)


def test_pipelining_beats_serial_stages_under_load(tmp_path):
    rng = np.random.default_rng(7)
    n = 300
    rows = list(zip(np.sort(rng.uniform(0, 10, n)).tolist(), rng.integers(100, 1500, n).tolist(),
                    rng.integers(20, 200, n).tolist()))
    wl = workload(rows)
    plan = plan_for(tmp_path, colocated({"gpu": "A100-80GB-SXM", "tp": 8, "pp": 2, "instances": 1, "latency": table()}),
                    scheduler={"max_num_seqs": 128})
    piped = simulate(plan, wl)
    one_at_a_time = simulate(serial(plan), wl)
    out_tokens = wl.output_tokens.sum()
    tput_piped = out_tokens / piped.end_s
    tput_serial = out_tokens / one_at_a_time.end_s
    assert tput_piped > 1.3 * tput_serial
    # decode windows stay for the serial (pp = 1) engine; the pipeline steps per micro-batch
    assert (one_at_a_time.instances.events < one_at_a_time.instances.iterations).all()
    assert (piped.instances.events == piped.instances.iterations).all()


def test_pp1_engine_unchanged_by_stage_split(tmp_path):
    # a pp = 1 pool runs the windowed engine; its latency has one stage equal to the iteration
    plan = plan_for(tmp_path, colocated({"gpu": "A100-80GB-SXM", "tp": 8, "instances": 1, "latency": table()}))
    assert plan.pools[0].stage_layers == (80,)
    lm = plan.pools[0].build_latency()
    shape = BatchShape(prefill_tokens=700, prefill_seqs=1, decode_seqs=3, decode_context_tokens=900)
    assert lm.stage_times_s(shape) == (lm.iteration_s(shape),)


# ---- invariants ------------------------------------------------------------------------------------------

@st.composite
def pipelined_scenarios(draw):
    n = draw(st.integers(1, 30))
    rows, t = [], 0.0
    for _ in range(n):
        t += draw(st.floats(0.0, 0.5, allow_nan=False))
        rows.append((t, draw(st.integers(1, 2500)), draw(st.integers(1, 120))))
    pp = draw(st.sampled_from([2, 3, 4]))
    lat = draw(st.sampled_from([table(), constant(0.02), constant(0.3)]))
    kv_blocks = draw(st.sampled_from([None, 60, 150, 400]))

    def pool(gpu):
        p = {"gpu": gpu, "tp": 8, "pp": pp, "instances": draw(st.integers(1, 2)), "latency": lat}
        if kv_blocks is not None:  # an activation reserve that leaves about kv_blocks blocks: preemption
            p["scheduler"] = {"activation_reserve_gib": reserve_gib_for(kv_blocks, pp)}
        return p

    kind = draw(st.sampled_from(["colocated", "disaggregated"]))
    if kind == "colocated":
        dep = colocated(pool(draw(st.sampled_from(["A100-80GB-SXM", "H100-SXM"]))))
    else:
        dep = {"name": "d", "kind": "disaggregated", "prefill": pool("H100-SXM"), "decode": pool("A100-80GB-SXM"),
               "kv_link": {"kind": "infiniband"}}
    scheduler = {"max_num_seqs": draw(st.integers(1, 16)), "max_num_batched_tokens": draw(st.integers(2000, 8192)),
                 "block_size": 16}
    return rows, dep, scheduler, pp


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.function_scoped_fixture])
@given(pipelined_scenarios())
def test_pipelined_invariants(in_flight_monitor, scenario):
    rows, dep, scheduler, pp = scenario
    with tempfile.TemporaryDirectory() as d:
        plan = plan_for(Path(d), dep, scheduler=scheduler)
    assert all(p.pp == pp for p in plan.pools)
    wl = workload(rows)
    formed_before = in_flight_monitor[0]  # the fixture lives across Hypothesis examples
    sim = simulate(plan, wl)  # raises InvariantViolation on a lost request or a leaked KV block
    assert len(sim.requests) == len(rows)
    for req in sim.requests:
        assert req.phase in (Phase.FINISHED, Phase.REJECTED)
        if req.phase is Phase.FINISHED:
            assert req.generated == req.output_tokens
            assert req.arrival_s <= req.prefill_start_s <= req.first_token_s <= req.finish_s
        else:
            assert req.reject_reason and req.generated == 0
    inst = sim.instances
    assert (inst.kv_peak_blocks <= inst.kv_capacity_blocks).all()
    assert (inst.utilization <= 1 + 1e-9).all()
    assert in_flight_monitor[0] - formed_before == int(inst.iterations.sum())


@pytest.mark.parametrize("scheduler", [
    {},
    {"enable_chunked_prefill": True, "long_prefill_token_threshold": 256},
    {"preemption_mode": "swap"},
], ids=["recompute", "chunked", "swap"])
@pytest.mark.parametrize("kind", ["colocated", "disaggregated"])
def test_pipelined_invariants_under_preemption(tmp_path, in_flight_monitor, scheduler, kind):
    # about 300 KV blocks per instance: long requests preempt each other while other batches are in flight
    pool = {"gpu": "A100-80GB-SXM", "tp": 8, "pp": 2, "instances": 1, "latency": table(),
            "scheduler": {"activation_reserve_gib": reserve_gib_for(300, 2)}}
    dep = colocated(pool) if kind == "colocated" else {
        "name": "d", "kind": "disaggregated", "prefill": dict(pool, gpu="H100-SXM"), "decode": pool,
        "kv_link": {"kind": "infiniband"}}
    plan = plan_for(tmp_path, dep, scheduler={"max_num_seqs": 32, **scheduler})
    rng = np.random.default_rng(3)
    n = 60
    rows = list(zip(np.sort(rng.uniform(0, 2, n)).tolist(), rng.integers(200, 1200, n).tolist(),
                    rng.integers(50, 400, n).tolist()))
    sim = simulate(plan, workload(rows))
    assert int(sim.instances.preemptions.sum()) > 0
    assert all(r.phase is Phase.FINISHED and r.generated == r.output_tokens for r in sim.requests)
    assert (sim.instances.kv_peak_blocks <= sim.instances.kv_capacity_blocks).all()
    assert in_flight_monitor[0] == int(sim.instances.iterations.sum())


# ---- heterogeneous stages --------------------------------------------------------------------------------

HET_LATENCY = {"h100": {"kind": "op_level", "profile": "h100_sxm-aiconfigurator"},
               "a100": {"kind": "op_level", "profile": "a100_sxm-aiconfigurator"}}
HET_MODEL = {"name": "Llama-3.1-70B", "max_context_tokens": 8192, "dtype": "bf16"}


def het_pool(**kw) -> dict:
    pool = {"tp": 4, "instances": 2, "latency": "h100",
            "stages": [{"gpu": "H100-SXM", "layers": 48}, {"gpu": "A100-80GB-SXM", "layers": 32, "latency": "a100"}]}
    pool.update(kw)
    return pool


def test_heterogeneous_pool_plans_memory_per_stage(tmp_path):
    plan = plan_for(tmp_path, colocated(het_pool()), model=HET_MODEL, latency_models=HET_LATENCY,
                    scheduler={"max_num_batched_tokens": 8192, "max_num_seqs": 128})
    pool = plan.pools[0]
    m = LLAMA31_70B
    catalog = load_gpu_catalog()
    assert pool.pp == 2 and pool.stage_layers == (48, 32) and pool.gpus == 16
    # per GPU at tp 4: every matrix splits exactly (64 q heads, 8 kv heads, 28672, vocab 128256), norms replicate
    layer = (m.attention_params() + m.mlp_params()) // 4 + 2 * m.norm_params()
    vocab_shard = m.vocab_size * m.hidden_size // 4
    h100, a100 = pool.stages
    assert (h100.gpu.name, a100.gpu.name) == ("H100-SXM", "A100-80GB-SXM")
    assert h100.weight_bytes_per_gpu == 2 * (48 * layer + vocab_shard)
    assert a100.weight_bytes_per_gpu == 2 * (32 * layer + m.norm_params() + vocab_shard)
    kv_heads_per_gpu = 8 // 4
    for stage in (h100, a100):
        kv_tok = 2 * stage.layers * kv_heads_per_gpu * 128 * 2
        assert stage.kv_bytes_per_token_per_gpu == kv_tok
        budget = int(stage.gpu.memory_bytes * 0.9) - stage.weight_bytes_per_gpu - pool.activation_bytes_per_gpu
        assert stage.capacity_blocks == budget // (kv_tok * 16)
    assert pool.capacity_blocks == min(h100.capacity_blocks, a100.capacity_blocks)
    price = catalog["H100-SXM"].price_usd_per_hour + catalog["A100-80GB-SXM"].price_usd_per_hour
    assert pool.usd_per_hour == pytest.approx(2 * 4 * price)
    assert plan.usd_per_hour == pytest.approx(pool.usd_per_hour)
    # stage latency from each GPU's own profile: the A100 stage is slower per layer than the H100's
    lm = pool.build_latency()
    t_h100, t_a100 = lm.stage_times_s(SHAPES[0])
    assert t_a100 / 32 > t_h100 / 48
    assert pool.describe()["stages"][1]["gpu"] == "A100-80GB-SXM"


@pytest.mark.usefixtures("in_flight_monitor")  # checks, as the pool runs, that no request is in two batches
def test_heterogeneous_pool_runs(tmp_path):
    plan = plan_for(tmp_path, colocated(het_pool()), model=HET_MODEL, latency_models=HET_LATENCY,
                    scheduler={"max_num_batched_tokens": 8192, "max_num_seqs": 64})
    rng = np.random.default_rng(1)
    n = 80
    rows = list(zip(np.sort(rng.uniform(0, 5, n)).tolist(), rng.integers(50, 2000, n).tolist(),
                    rng.integers(1, 100, n).tolist()))
    sim = simulate(plan, workload(rows))
    assert all(r.phase is Phase.FINISHED and r.generated == r.output_tokens for r in sim.requests)
    assert sim.latency_stats["colocated"]["lookups"] > 0
    assert (sim.instances.gpu == "H100-SXM+A100-80GB-SXM").all()
    assert plan.pools[0].gpu.name == "H100-SXM"  # the pool's nominal GPU is its first stage's


def test_stages_with_one_gpu_type_split_layers_unevenly(tmp_path):
    plan = plan_for(tmp_path, colocated({"gpu": "A100-80GB-SXM", "tp": 8, "instances": 1, "latency": table(),
                                         "stages": [{"layers": 50}, {"layers": 30}]}))
    pool = plan.pools[0]
    assert pool.pp == 2 and pool.stage_layers == (50, 30)
    shape = BatchShape(decode_seqs=8, decode_context_tokens=8000)
    t = pool.build_latency().stage_times_s(shape)
    assert t[0] / t[1] == pytest.approx(50 / 30)
    # the 30-layer stage has room for more blocks; the instance holds what its fuller stage holds
    assert pool.stages[1].capacity_blocks > pool.stages[0].capacity_blocks == pool.capacity_blocks


@pytest.mark.parametrize("pool,error,match", [
    (het_pool(stages=[{"gpu": "H100-SXM", "layers": 48}, {"gpu": "A100-80GB-SXM", "layers": 30, "latency": "a100"}]),
     ConfigError, r"stages: layers \[48, 30\] sum to 78; Llama-3.1-70B has 80 layers"),
    (het_pool(pp=3), ConfigError, r"pp: 3 does not match the 2 stages"),
    (het_pool(stages=[{"layers": 48}, {"gpu": "A100-80GB-SXM", "layers": 32}]), ConfigError, r"stages\[0\]\.gpu: required"),
    (het_pool(stages=[{"gpu": "H100-SXM", "layers": 80}]), ConfigError, r"at least 2 stages, got 1"),
    (het_pool(price_usd_per_gpu_hour=3.0), ConfigError, r"price_usd_per_gpu_hour: ambiguous"),
    (het_pool(stages=[{"gpu": "H100-SXM", "layers": 48}, {"gpu": "A100-80GB-SXM", "layers": 32}]),
     ConfigError, r"stages\[1\]\.latency: profiles .* measured on \['H100-SXM'\], not on this stage's A100-80GB-SXM"),
    (het_pool(stages=[{"gpu": "H100-SXM", "layers": 76}, {"gpu": "A100-80GB-SXM", "layers": 4, "latency": "a100"}], tp=1),
     CapacityError, r"stages\[0\]: 76 layers of Llama-3.1-70B do not fit on H100-SXM"),
    (het_pool(stages=[{"gpu": "H900", "layers": 40}, {"gpu": "A100-80GB-SXM", "layers": 40, "latency": "a100"}]),
     ConfigError, r"stages\[0\]\.gpu"),
])
def test_stage_config_errors_name_field_and_value(tmp_path, pool, error, match):
    with pytest.raises(error, match=match):
        plan_for(tmp_path, colocated(pool), model=HET_MODEL, latency_models=HET_LATENCY)


def test_pp_above_the_layers_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"pool\.pp: 81 stages exceed the 80 layers"):
        plan_for(tmp_path, colocated({"gpu": "A100-80GB-SXM", "tp": 8, "pp": 81, "instances": 1, "latency": constant(0.1)}))
