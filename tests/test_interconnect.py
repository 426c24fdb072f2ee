"""Specification of the interconnect model (pdsim.hardware.topology, docs/interconnect.md).

Analytic checks on one request (link time = latency + bytes / bandwidth; serialisation; the layer-wise
tail; the host-staged path as the sum of its steps; compression), invariants on loaded runs, and one
behaviour (a slower NIC gives longer transfers and TPOT). Experiments are built as dicts and loaded
through ``load_experiment_file``, like the CLI. The model is Llama-2-70B (80 layers, 8 KV heads of 128,
fp16 KV: 327,680 bytes per token) with the constant latency model, so every time is known by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pdsim.config.load import load_experiment_file
from pdsim.errors import ConfigError
from pdsim.hardware.gpus import load_gpu_catalog
from pdsim.hardware.topology import (
    copy_model_from_profiles,
    intra_node_link,
    layerwise_tail_s,
    place_instances,
)
from pdsim.metrics.records import requests_frame
from pdsim.profiles.format import find_profile
from pdsim.sim.cluster import simulate
from pdsim.sim.plan import plan_deployments

KV_BYTES_PER_TOKEN = 2 * 80 * 8 * 128 * 2  # Llama-2-70B, fp16
LAYERS = 80
CATALOG = load_gpu_catalog()
H100, MI300X = CATALOG["H100-SXM"], CATALOG["MI300X"]


def pool(gpu: str, tp: int = 4, instances: int = 1, iteration_s: float = 0.05) -> dict:
    return {"gpu": gpu, "tp": tp, "instances": instances, "router": "round_robin",
            "latency": {"kind": "constant", "iteration_s": iteration_s}}


def deployment(prefill: dict, decode: dict, topology: dict | None, name: str = "d", **extra) -> dict:
    d = {"name": name, "kind": "disaggregated", "prefill": prefill, "decode": decode, **extra}
    if topology is not None:
        d["topology"] = topology
    return d


def plans(tmp_path: Path, deployments: list[dict], model: dict | str = "Llama-2-70b-hf"):
    data = {
        "name": "t", "seed": 0, "model": model, "slo": {"ttft_s": 1.0, "tpot_s": 0.1},
        "deployments": deployments,
        "workloads": {"w": {"kind": "poisson", "rate_rps": 1.0, "num_requests": 1,
                            "lengths": {"kind": "fixed", "prompt_tokens": 8, "output_tokens": 2}}},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return plan_deployments(load_experiment_file(path))


def frame(rows: list[tuple[float, int, int]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["arrival_s", "prompt_tokens", "output_tokens"]).astype(
        {"arrival_s": "float64", "prompt_tokens": "int64", "output_tokens": "int64"})
    df.insert(0, "request_id", np.arange(len(df), dtype=np.int64))
    return df


def run(plan, rows) -> pd.DataFrame:
    result = simulate(plan, frame(rows))
    return requests_frame(result.requests, plan.name, "w")


CROSS = {"prefill": pool("H100-SXM"), "decode": pool("MI300X")}


# ---- placement ---------------------------------------------------------------------------------------------

def test_pack_placement_fills_nodes_prefill_then_decode():
    p, d = place_instances([("H100-SXM", 5, 4), ("H100-SXM", 3, 4)], gpus_per_node=8, separate=False)
    assert [s.nodes for s in p] == [(0,), (0,), (1,), (1,), (2,)]
    assert [s.nodes for s in d] == [(2,), (3,), (3,)]  # decode/0 shares node 2 with prefill/4
    assert d[0].slots == ((2, 4), (2, 5), (2, 6), (2, 7))


def test_another_gpu_type_or_separate_starts_a_new_node():
    _, d = place_instances([("H100-SXM", 5, 4), ("MI300X", 3, 4)], 8, separate=False)
    assert [s.nodes for s in d] == [(3,), (3,), (4,)]
    _, d = place_instances([("H100-SXM", 5, 4), ("H100-SXM", 3, 4)], 8, separate=True)
    assert [s.nodes for s in d] == [(3,), (3,), (4,)]


def test_instances_larger_than_a_node_take_whole_nodes():
    (p,) = place_instances([("H100-SXM", 2, 16)], 8, separate=False)
    assert [s.nodes for s in p] == [(0, 1), (2, 3)]
    with pytest.raises(ConfigError, match="gpus_per_node"):
        place_instances([("H100-SXM", 1, 12)], 8, separate=False)


def test_nics_serve_the_gpus_of_their_rail():
    (p,) = place_instances([("H100-SXM", 2, 4)], 8, separate=False)
    assert p[0].nics(8, 8) == ((0, 0), (0, 1), (0, 2), (0, 3))
    assert p[1].nics(8, 2) == ((0, 1),)
    assert p[0].nics(8, 1) == p[1].nics(8, 1) == ((0, 0),)  # one NIC per node: shared


@pytest.mark.parametrize("gpu, kind, gbytes_per_s", [
    ("H100-SXM", "nvlink", 450.0),       # NVLink 4: 900 GB/s bidirectional
    ("A100-80GB-SXM", "nvlink", 300.0),  # NVLink 3: 600 GB/s bidirectional
    ("MI300X", "xgmi", 64.0),            # one of 7 Infinity Fabric links of 128 GB/s bidirectional
    ("L4", "pcie", 32.0),                # PCIe Gen4 x16, no NVLink
    ("H100-PCIe", "pcie", 64.0),         # PCIe Gen5 x16
])
def test_intra_node_kind_and_bandwidth_by_gpu(gpu, kind, gbytes_per_s):
    link = intra_node_link(CATALOG[gpu], "auto", None, 2e-6, "t")
    assert (link.kind, link.bytes_per_s) == (kind, gbytes_per_s * 1e9)
    assert intra_node_link(CATALOG[gpu], "pcie", 10.0, 0.0, "t").bytes_per_s == 10e9  # overrides win


def test_host_staged_inside_one_node_skips_the_nic(tmp_path):
    (plan,) = plans(tmp_path, [deployment(pool("H100-SXM"), pool("H100-SXM"), {"path": "host_staged"})])
    row = run(plan, [(0.0, 300, 2)]).iloc[0]
    pcie = 16 * 32e9 * 128 / 130 / 8
    assert row.kv_transfer_path == "host_staged" and row.kv_transfer_network_s == 0.0
    assert row.kv_transfer_d2h_s == row.kv_transfer_h2d_s == pytest.approx(300 * KV_BYTES_PER_TOKEN / 4 / pcie, rel=1e-12)
    assert row.kv_convert_s == 0.0  # same vendor, TP and block size: no conversion


# ---- layer-wise tail -----------------------------------------------------------------------------------------

def _pipeline_end(total_s: float, prefill_s: float, layers: int) -> float:
    """Brute force: layer i is ready at i T / L; transfers of X / L each, one at a time, in order."""
    end = 0.0
    for i in range(1, layers + 1):
        end = max(end, i * prefill_s / layers) + total_s / layers
    return end - prefill_s


@pytest.mark.parametrize("total_s, prefill_s, layers, expected", [
    (1.0, 0.4, 4, 0.7),      # transfer-bound: 1.0 - 3 * 0.1
    (0.08, 0.4, 80, 0.001),  # compute-bound: one layer's transfer remains
    (0.5, 0.0, 80, 0.5),     # nothing to overlap with
])
def test_layerwise_tail_known_cases(total_s, prefill_s, layers, expected):
    assert layerwise_tail_s(total_s, prefill_s, layers) == pytest.approx(expected, rel=1e-12)
    if prefill_s > 0:
        assert layerwise_tail_s(total_s, prefill_s, layers) == pytest.approx(_pipeline_end(total_s, prefill_s, layers), rel=1e-9)


def test_layerwise_tail_matches_the_pipeline_on_random_cases():
    rng = np.random.default_rng(7)
    for _ in range(200):
        x, t, n = float(rng.uniform(1e-4, 2.0)), float(rng.uniform(1e-4, 2.0)), int(rng.integers(1, 130))
        assert layerwise_tail_s(x, t, n) == pytest.approx(_pipeline_end(x, t, n), rel=1e-9, abs=1e-12)


# ---- analytic checks through the simulator -------------------------------------------------------------------

def test_single_nic_transfer_is_latency_plus_bytes_over_bandwidth(tmp_path):
    # H100 -> A100: two GPU types, so two nodes; both NVIDIA: direct RDMA. One 400 Gb/s NIC per node.
    (plan,) = plans(tmp_path, [deployment(pool("H100-SXM"), pool("A100-80GB-SXM"),
                                          {"nic_gbps": 400, "nics_per_node": 1, "nic_latency_s": 1e-5})])
    df = run(plan, [(0.0, 100, 3)])
    nbytes = 100 * KV_BYTES_PER_TOKEN
    expected = 1e-5 + nbytes / (400e9 / 8)
    row = df.iloc[0]
    assert row.kv_transfer_path == "network"
    assert row.kv_transfer_bytes == nbytes
    assert row.kv_transfer_network_s == pytest.approx(expected, rel=1e-12)
    assert row.kv_transfer_s == pytest.approx(expected, rel=1e-9)
    assert row.kv_transfer_queue_s == 0.0
    assert row.kv_transfer_d2h_s == row.kv_transfer_h2d_s == row.kv_convert_s == row.kv_compress_s == 0.0
    # the transfer delays the second token: TPOT = (transfer + one decode iteration) / 1 with 2 decode tokens
    assert row.finish_s - row.first_token_s == pytest.approx(expected + 2 * 0.05, rel=1e-9)


def test_rdma_rate_is_set_by_the_end_with_fewer_nics(tmp_path):
    # TP-8 prefill (8 NICs of its node) -> TP-4 decode (the 4 NICs of its GPUs): 4 x 400 Gb/s.
    (plan,) = plans(tmp_path, [deployment(pool("H100-SXM", tp=8), pool("A100-80GB-SXM", tp=4), {})])
    df = run(plan, [(0.0, 100, 2)])
    nbytes = 100 * KV_BYTES_PER_TOKEN
    network = 5e-6 + nbytes / (4 * 400e9 / 8)
    reshard = nbytes / 4 / (CATALOG["A100-80GB-SXM"].mem_bw_bytes_per_s / 2)  # TP 8 -> 4: one d2d pass
    assert df.kv_transfer_network_s[0] == pytest.approx(network, rel=1e-12)
    assert df.kv_convert_s[0] == pytest.approx(reshard, rel=1e-12)
    assert df.kv_transfer_s[0] == pytest.approx(network + reshard, rel=1e-9)


def test_intra_node_transfer_uses_nvlink_of_all_gpus(tmp_path):
    (plan,) = plans(tmp_path, [deployment(pool("H100-SXM"), pool("H100-SXM"), {})])
    df = run(plan, [(0.0, 200, 2)])
    nbytes = 200 * KV_BYTES_PER_TOKEN
    expected = 2e-6 + nbytes / (4 * 450e9)  # 4 GPUs each side, 450 GB/s per GPU per direction (NVLink 4)
    assert df.kv_transfer_path[0] == "intra_node"
    assert df.kv_transfer_s[0] == pytest.approx(expected, rel=1e-9)


def test_two_transfers_on_one_link_serialise(tmp_path):
    (plan,) = plans(tmp_path, [deployment(pool("H100-SXM"), pool("A100-80GB-SXM"),
                                          {"nic_gbps": 100, "nics_per_node": 1, "nic_latency_s": 0.0})])
    df = run(plan, [(0.0, 500, 2), (0.0, 500, 2)])  # one prefill iteration, both hand off together
    one = 500 * KV_BYTES_PER_TOKEN / (100e9 / 8)
    assert sorted(df.kv_transfer_s) == pytest.approx([one, 2 * one], rel=1e-9)
    assert sorted(df.kv_transfer_queue_s) == pytest.approx([0.0, one], rel=1e-9)


def test_two_prefill_nodes_share_the_decode_nic(tmp_path):
    # Two prefill instances of 8 GPUs (two nodes) send to one decode instance with one NIC per node.
    (plan,) = plans(tmp_path, [deployment(pool("H100-SXM", tp=8, instances=2), pool("A100-80GB-SXM", tp=8),
                                          {"nic_gbps": 100, "nics_per_node": 1, "nic_latency_s": 0.0})])
    df = run(plan, [(0.0, 500, 2), (0.0, 500, 2)])
    assert set(df.prefill_instance) == {0, 1}
    one = 500 * KV_BYTES_PER_TOKEN / (100e9 / 8)
    assert sorted(df.kv_transfer_s) == pytest.approx([one, 2 * one], rel=1e-9)


def _cross_vendor_steps(nbytes: int, wire: int, nic_bytes_per_s: float, lanes: int, latency_s: float) -> dict:
    """The host-staged path by hand for TP-4 H100 -> TP-4 MI300X without profiles (datasheet fallbacks)."""
    per_gpu = 1 / 4  # 8 KV heads over TP 4, all layers
    h100_pcie = 16 * 32e9 * 128 / 130 / 8  # PCIe Gen5 x16, bytes/s per direction
    mi300x_pcie = h100_pcie  # also Gen5 in gpu_specs.csv
    return {
        "d2h": per_gpu * wire / h100_pcie,
        "network": latency_s + wire / (lanes * nic_bytes_per_s),
        "h2d": per_gpu * wire / mi300x_pcie,
        "convert": per_gpu * nbytes / (MI300X.mem_bw_bytes_per_s / 2),  # read + write at HBM bandwidth
    }


def test_cross_vendor_path_is_the_sum_of_its_steps(tmp_path):
    (plan,) = plans(tmp_path, [deployment(**CROSS, topology={"nic": "roce", "nic_gbps": 200})])
    topo = plan.topology
    assert topo.path == "host_staged" and "vendors differ" in topo.path_reason and topo.convert
    df = run(plan, [(0.0, 300, 2)])
    nbytes = 300 * KV_BYTES_PER_TOKEN
    steps = _cross_vendor_steps(nbytes, nbytes, 200e9 / 8, lanes=4, latency_s=5e-6)  # 4 NICs per TP-4 instance
    row = df.iloc[0]
    assert row.kv_transfer_path == "host_staged"
    assert row.kv_transfer_d2h_s == pytest.approx(steps["d2h"], rel=1e-12)
    assert row.kv_transfer_network_s == pytest.approx(steps["network"], rel=1e-12)
    assert row.kv_transfer_h2d_s == pytest.approx(steps["h2d"], rel=1e-12)
    assert row.kv_convert_s == pytest.approx(steps["convert"], rel=1e-12)
    assert row.kv_compress_s == 0.0
    assert row.kv_transfer_s == pytest.approx(sum(steps.values()), rel=1e-9)


def test_path_override_and_same_vendor_auto(tmp_path):
    direct, same = plans(tmp_path, [
        deployment(**CROSS, topology={"path": "direct"}, name="a"),
        deployment(pool("H100-SXM"), pool("A100-80GB-SXM"), {}, name="b"),
    ])
    assert direct.topology.path == "direct" and direct.topology.path_reason == "configured"
    assert same.topology.path == "direct" and same.topology.convert is False  # same vendor, TP, block size
    df = run(direct, [(0.0, 300, 2)])
    assert df.kv_transfer_path[0] == "network" and df.kv_transfer_d2h_s[0] == 0.0
    assert df.kv_convert_s[0] > 0  # the layouts of two vendors still differ


def test_compression_halves_the_wire_bytes_and_adds_the_quantize_passes(tmp_path):
    plain, packed = plans(tmp_path, [
        deployment(**CROSS, topology={"nic_gbps": 100}, name="plain"),
        deployment(**CROSS, topology={"nic_gbps": 100, "kv_compression_bits": 8}, name="int8"),
    ])
    a, b = run(plain, [(0.0, 400, 2)]).iloc[0], run(packed, [(0.0, 400, 2)]).iloc[0]
    nbytes = 400 * KV_BYTES_PER_TOKEN
    assert a.kv_transfer_bytes == nbytes and b.kv_transfer_bytes == nbytes // 2
    steps = _cross_vendor_steps(nbytes, nbytes // 2, 100e9 / 8, lanes=4, latency_s=5e-6)
    quantize = (nbytes / 4 + nbytes / 8) / H100.mem_bw_bytes_per_s  # read fp16 + write int8, per GPU
    dequantize = (nbytes / 8 + nbytes / 4) / MI300X.mem_bw_bytes_per_s
    assert b.kv_compress_s == pytest.approx(quantize + dequantize, rel=1e-12)
    assert b.kv_transfer_network_s - 5e-6 == pytest.approx((a.kv_transfer_network_s - 5e-6) / 2, rel=1e-12)
    assert b.kv_transfer_s == pytest.approx(sum(steps.values()) + quantize + dequantize, rel=1e-9)


def test_compression_must_use_fewer_bits_than_the_kv(tmp_path):
    with pytest.raises(ConfigError, match="kv_compression_bits"):
        plans(tmp_path, [deployment(**CROSS, topology={"kv_compression_bits": 8})],
              model={"name": "Llama-2-70b-hf", "kv_dtype": "fp8"})


def test_layerwise_streaming_leaves_the_tail(tmp_path):
    # Slow NIC so that the transfer outlasts the prefill: tail = X - (L - 1) T / L.
    prefill_s = 0.05
    (plan,) = plans(tmp_path, [deployment(pool("H100-SXM", iteration_s=prefill_s), pool("A100-80GB-SXM"),
                                          {"nic_gbps": 10, "nics_per_node": 1, "nic_latency_s": 0.0, "layerwise": True})])
    df = run(plan, [(0.0, 1000, 2)])
    total = 1000 * KV_BYTES_PER_TOKEN / (10e9 / 8)
    tail = total - (LAYERS - 1) * prefill_s / LAYERS
    assert total > prefill_s
    assert df.kv_transfer_s[0] == pytest.approx(tail, rel=1e-9)
    assert df.kv_transfer_hidden_s[0] == pytest.approx(total - tail, rel=1e-9)
    assert df.kv_transfer_network_s[0] == pytest.approx(total, rel=1e-12)  # the step itself is uncontended X


def test_copy_model_reads_the_profile_memcpy_table():
    prof = find_profile("mi300x-derived")
    table = prof.table("memcpy")
    row = table[(table.direction == "h2d")].iloc[5]
    model = copy_model_from_profiles([prof], "h2d", math.nan, "unused")
    assert "mi300x-derived" in model.source and "derived" in model.source
    assert model.time_s(int(row["bytes"])) == pytest.approx(float(row["latency_s"]), rel=1e-12)
    fallback = copy_model_from_profiles([], "d2h", 64e9, "PCIe spec")
    assert fallback.time_s(64e9) == 1.0 and fallback.source == "PCIe spec"


# ---- configuration errors --------------------------------------------------------------------------------------

def test_kv_link_and_topology_are_exclusive(tmp_path):
    with pytest.raises(ConfigError, match="either kv_link"):
        plans(tmp_path, [deployment(**CROSS, topology={}, kv_link={"kind": "ethernet"})])


def test_more_nics_than_gpus_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="nics_per_node"):
        plans(tmp_path, [deployment(**CROSS, topology={"nics_per_node": 16})])


# ---- invariants and behaviour under load ---------------------------------------------------------------------

def _load_rows(n: int, seed: int) -> list[tuple[float, int, int]]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(0.05, n))
    return [(float(a), int(p), int(o)) for a, p, o in zip(t, rng.integers(16, 3000, n), rng.integers(1, 120, n))]


@pytest.mark.parametrize("topology", [
    {},
    {"nic": "ethernet", "nics_per_node": 1},
    {"nic_gbps": 25, "nics_per_node": 1, "layerwise": True, "kv_compression_bits": 4},
    {"placement": "separate", "path": "host_staged"},
])
def test_no_request_lost_and_ports_and_blocks_released(tmp_path, topology):
    decode = pool("H100-SXM", instances=2)
    decode["scheduler"] = {"activation_reserve_gib": 22.0}  # a small KV cache: decode back-pressure
    (plan,) = plans(tmp_path, [deployment(pool("H100-SXM", instances=3, iteration_s=0.02), decode, topology)])
    result = simulate(plan, frame(_load_rows(80, 1)))  # raises InvariantViolation on a lost request or held block
    df = requests_frame(result.requests, plan.name, "w")
    assert (df.status == "completed").sum() + (df.status == "rejected").sum() == 80
    assert (result.instances.kv_peak_blocks <= result.instances.kv_capacity_blocks).all()
    moved = df[(df.status == "completed") & (df.output_tokens > 1)]
    assert len(moved) > 0 and moved.kv_transfer_s.notna().all() and (moved.kv_transfer_bytes > 0).all()
    steps = moved[["kv_transfer_d2h_s", "kv_transfer_network_s", "kv_transfer_h2d_s", "kv_convert_s", "kv_compress_s"]].sum(axis=1)
    np.testing.assert_allclose(moved.kv_transfer_s, moved.kv_transfer_queue_s + steps - moved.kv_transfer_hidden_s,
                               rtol=1e-9, atol=1e-12)
    assert (moved.kv_transfer_queue_s >= 0).all() and (moved.kv_transfer_hidden_s >= 0).all()
    one_token = df[df.output_tokens == 1]
    assert one_token.kv_transfer_s.isna().all() and (one_token.kv_transfer_bytes == 0).all()


def test_slower_nic_gives_longer_transfers_and_higher_tpot(tmp_path):
    gbps = [1000, 100, 10]
    deps = [deployment(**CROSS, topology={"nic": "roce", "nic_gbps": g, "nics_per_node": 1}, name=f"n{g}") for g in gbps]
    rows = _load_rows(60, 3)
    frames = [run(p, rows) for p in plans(tmp_path, deps)]
    transfer = [f.kv_transfer_s.mean() for f in frames]
    network = [f.kv_transfer_network_s.mean() for f in frames]
    tpot = [f.tpot_s.mean() for f in frames]
    assert transfer[0] < transfer[1] < transfer[2]
    assert network[0] < network[1] < network[2]
    assert tpot[0] < tpot[1] < tpot[2]
