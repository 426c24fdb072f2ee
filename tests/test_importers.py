"""Specification of the importers of public measurements (``pdsim/profiles/importers/``).

The synthetic raw files below follow the upstream column layouts (aiconfigurator's Parquet tables and
system yaml; vidur's ``mlp.csv`` and network CSVs) with a few rows each, so these tests do not need
the raw data. They pin the unit conversion (ms -> s), the decode context rule (keys attended =
``isl + step - 1``), message bytes (elements x dtype bytes, per-rank share for all_gather), the
window / dtype filters, the duplicate rules, and that the result loads and validates. The last tests
read the committed profiles under ``gpu_profiles/``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from pdsim.cli import app
from pdsim.errors import ProfileError
from pdsim.profiles.format import TABLES, load_profile
from pdsim.profiles.importers import shipped_imports
from pdsim.profiles.importers.aiconfigurator import SYSTEM_GPUS, import_aiconfigurator
from pdsim.profiles.importers.vidur import DEVICES, import_vidur

ROOT = Path(__file__).resolve().parents[1]
GPU_PROFILES = ROOT / "gpu_profiles"
COMMIT = "095f58a51c4ca8e61b66ec108d86f223f8d559ce"
DEVICE = "NVIDIA H100 80GB HBM3"


# --------------------------------------------------------------------------------------------------
# Synthetic aiconfigurator tree
# --------------------------------------------------------------------------------------------------


def _common(op_name: str, kernel: str, n: int, version: str = "0.24.0", framework: str = "VLLM") -> dict:
    return {"framework": [framework] * n, "version": [version] * n, "device": [DEVICE] * n,
            "op_name": [op_name] * n, "kernel_source": [kernel] * n}


def _write(path: Path, rows: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


def _attn_rows(op_name: str, rows: list[tuple]) -> dict:
    """rows: (kernel, batch, isl, heads, kv_heads, head_dim, kv_dtype, step, window, latency_ms)."""
    cols = ["kernel_source", "batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim", "kv_cache_dtype",
            "step", "window_size", "latency"]
    d = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    n = len(rows)
    out = {"framework": ["VLLM"] * n, "version": ["0.24.0"] * n, "device": [DEVICE] * n, "op_name": [op_name] * n}
    out.update(d)
    out["beam_width"] = [1] * n
    out["attn_dtype"] = ["bfloat16"] * n
    return out


def make_aiconfigurator_tree(root: Path, system: str = "h100_sxm") -> Path:
    """A flat copy (systems/ + data/ + COMMIT + LICENSE) with a few rows per table."""
    (root / "systems").mkdir(parents=True)
    (root / "systems" / f"{system}.yaml").write_text(yaml.safe_dump(
        {"data_dir": f"data/{system}", "gpu": {"mem_capacity": 85899345920, "mem_bw": 3350000000000}}))
    (root / "COMMIT").write_text(f"{COMMIT} 2026-08-21 15:49:09 +0800\n")
    (root / "LICENSE").write_text("Apache License 2.0 (test copy)\n")
    data = root / "data" / system
    # gemm: an older version directory must be ignored (newest version wins)
    _write(data / "gemm/vllm/0.9.0/gemm_perf.parquet", {
        **_common("gemm", "old", 1, "0.9.0"), "gemm_dtype": ["bfloat16"], "m": [1], "n": [64], "k": [64], "latency": [99.0]})
    _write(data / "gemm/vllm/0.24.0/gemm_perf.parquet", {
        **_common("gemm", "torch.nn.functional.linear", 5),
        "gemm_dtype": ["bfloat16", "bfloat16", "fp8", "fp8_block", "nvfp4"],
        "m": [1, 16, 1, 1, 1], "n": [64, 64, 64, 64, 64], "k": [64, 64, 64, 64, 64],
        "latency": [0.002, 0.004, 0.0015, 0.001, 0.0008]})
    _write(data / "attention/vllm/0.24.0/context_attention_perf.parquet", _attn_rows("context_attention", [
        ("vllm_flash_attn_fa3", 1, 128, 8, 8, 128, "bfloat16", 0, 0, 0.05),
        ("vllm_flash_attn_fa3", 1, 128, 8, 8, 128, "bfloat16", 0, 0, 0.07),   # repeat: median 0.06
        ("vllm_flash_attn_fa3", 2, 128, 8, 8, 128, "bfloat16", 0, 0, 0.09),
        ("vllm_flash_attn_fa4", 2, 128, 8, 8, 128, "bfloat16", 0, 0, 0.01),   # same key, fewer rows: dropped
        ("vllm_flash_attn_fa4", 1, 256, 8, 1, 512, "bfloat16", 0, 0, 0.2),    # only fa4 measured it: kept
        ("vllm_flash_attn_fa3", 1, 128, 8, 8, 128, "bfloat16", 0, 128, 0.03),  # sliding window: dropped
    ]))
    _write(data / "attention/vllm/0.24.0/generation_attention_perf.parquet", _attn_rows("generation_attention", [
        ("vllm_flash_attn_fa3", 4, 1, 8, 1, 128, "bfloat16", 1, 0, 0.010),
        ("vllm_flash_attn_fa3", 4, 1, 8, 1, 128, "bfloat16", 7, 0, 0.011),
        ("vllm_flash_attn_fa3", 4, 1, 8, 1, 128, "fp8", 7, 0, 0.012),
        ("vllm_flash_attn_fa3", 4, 1, 8, 1, 128, "bfloat16", 7, 1024, 0.009),  # sliding window: dropped
    ]))
    ops = ["all_reduce", "all_gather", "reduce_scatter", "alltoall", "all_reduce"]
    _write(data / "comm/nccl/2.29.2/nccl_perf.parquet", {
        **_common("x", "NCCL", 5, "2.29.2", "TRTLLM"), "op_name": ops,
        "nccl_dtype": ["half", "half", "half", "half", "int8"], "num_gpus": [2, 4, 4, 4, 2],
        "message_size": [1024, 1024, 1024, 1024, 2048], "latency": [0.010, 0.020, 0.015, 0.030, 0.011]})
    _write(data / "comm/vllm/0.24.0/custom_allreduce_perf.parquet", {
        **_common("all_reduce", "vLLM_custom_graph", 3, framework="vLLM"),
        "kernel_source": ["vLLM_custom_graph", "vLLM_custom_eager", "vLLM_custom_graph"],
        "allreduce_dtype": ["bfloat16"] * 3, "num_gpus": [2, 2, 8], "message_size": [128, 128, 8192],
        "latency": [0.004, 0.020, 0.006], "backend": ["vllm_graph", "vllm_eager", "vllm_graph"]})
    # moe: balanced bf16 / fp8 rows are kept; fp8_block and power-law rows are dropped (tests/test_moe.py)
    _write(data / "moe/vllm/0.24.0/moe_perf.parquet", {
        **_common("moe", "vllm_unquantizedfusedmoe_triton_tritonexperts", 5),
        "moe_dtype": ["bfloat16", "bfloat16", "fp8", "fp8_block", "bfloat16"],
        "num_tokens": [1, 8, 1, 1, 1], "hidden_size": [4096] * 5, "inter_size": [14336] * 5, "topk": [2] * 5,
        "num_experts": [8] * 5, "moe_tp_size": [2] * 5, "moe_ep_size": [1] * 5,
        "distribution": ["balanced", "balanced", "balanced", "balanced", "power_law_1.01"],
        "latency": [0.16, 0.49, 0.37, 0.3, 0.15]})
    (data / "mla").mkdir()  # a table kind the format has not: named in the notes
    return root


@pytest.fixture
def aic(tmp_path):
    src = make_aiconfigurator_tree(tmp_path / "aic")
    return import_aiconfigurator(src, "h100_sxm", tmp_path / "out" / "h100_sxm-aiconfigurator")


def test_aiconfigurator_gemm_units_dtypes_and_newest_version(aic):
    g = aic.table("gemm").set_index(["dtype", "m", "n", "k"])
    assert set(g.index.get_level_values("dtype")) == {"bf16", "fp8"}  # fp8_block and nvfp4 dropped
    assert g.loc[("bf16", 1, 64, 64), "latency_s"] == pytest.approx(0.002e-3)  # ms -> s
    assert g.loc[("bf16", 16, 64, 64), "latency_s"] == pytest.approx(0.004e-3)
    assert g.loc[("fp8", 1, 64, 64), "latency_s"] == pytest.approx(0.0015e-3)
    assert len(g) == 3  # the 0.9.0 directory was not read
    assert "fp8_block (1 rows)" in aic.meta.notes and "nvfp4 (1 rows)" in aic.meta.notes


def test_aiconfigurator_prefill_window_filter_kernel_choice_and_repeats(aic):
    p = aic.table("attention_prefill").set_index(["batch_size", "seq_len", "num_heads", "num_kv_heads", "head_dim"])
    assert len(p) == 3
    assert p.loc[(1, 128, 8, 8, 128), "latency_s"] == pytest.approx(0.06e-3)  # median of the repeat
    assert p.loc[(1, 128, 8, 8, 128), "source_rows"] == 2
    # fa3 has the most rows: it wins the key both measured; fa4 keeps the key only it measured
    assert p.loc[(2, 128, 8, 8, 128), "kernel_source"] == "vllm_flash_attn_fa3"
    assert p.loc[(2, 128, 8, 8, 128), "latency_s"] == pytest.approx(0.09e-3)
    assert p.loc[(1, 256, 8, 1, 512), "kernel_source"] == "vllm_flash_attn_fa4"
    assert not (p.latency_s == pytest.approx(0.03e-3)).any()  # the sliding-window row is gone


def test_aiconfigurator_decode_context_is_the_keys_attended(aic):
    d = aic.table("attention_decode")
    assert len(d) == 3  # window row dropped
    # upstream isl=1, step=input_len: the query attends to step keys (= isl + step - 1)
    assert sorted(d.context_len) == [1, 7, 7]
    row = d[(d.context_len == 7) & (d.kv_dtype == "fp8")].iloc[0]
    assert row.latency_s == pytest.approx(0.012e-3)
    assert row.batch_size == 4 and row.num_heads == 8 and row.num_kv_heads == 1


def test_aiconfigurator_decode_refuses_undocumented_isl(tmp_path):
    src = make_aiconfigurator_tree(tmp_path / "aic")
    f = src / "data/h100_sxm/attention/vllm/0.24.0/generation_attention_perf.parquet"
    df = pd.read_parquet(f)
    df.loc[0, "isl"] = 100
    df.to_parquet(f, index=False)
    with pytest.raises(ProfileError, match="isl != 1"):
        import_aiconfigurator(src, "h100_sxm", tmp_path / "out")


def test_aiconfigurator_collectives_bytes_and_backends(aic):
    c = aic.table("collective").set_index(["op", "backend", "dtype", "world_size", "message_bytes"])
    assert set(c.index.get_level_values("op")) == {"all_reduce", "all_gather", "reduce_scatter"}  # alltoall dropped
    # nccl: 1024 half elements = 2048 bytes, each rank's whole buffer for all_reduce / reduce_scatter
    assert c.loc[("all_reduce", "nccl", "fp16", 2, 2048), "latency_s"] == pytest.approx(0.010e-3)
    assert c.loc[("reduce_scatter", "nccl", "fp16", 4, 2048), "latency_s"] == pytest.approx(0.015e-3)
    # all_gather: nccl-tests sizes the gathered output; each of 4 ranks contributes 2048 / 4 bytes
    assert c.loc[("all_gather", "nccl", "fp16", 4, 512), "latency_s"] == pytest.approx(0.020e-3)
    assert "int8" in aic.meta.notes and "alltoall" in aic.meta.notes  # dropped, and said so
    # vLLM custom all-reduce: elements x 2 bytes (bf16), graph and eager kept apart
    assert c.loc[("all_reduce", "vllm_custom_graph", "bf16", 2, 256), "latency_s"] == pytest.approx(0.004e-3)
    assert c.loc[("all_reduce", "vllm_custom_eager", "bf16", 2, 256), "latency_s"] == pytest.approx(0.020e-3)
    assert c.loc[("all_reduce", "vllm_custom_graph", "bf16", 8, 16384), "latency_s"] == pytest.approx(0.006e-3)
    assert len(c) == 6


def test_aiconfigurator_meta_and_provenance(aic, tmp_path):
    m = aic.meta
    assert m.source_kind == "imported" and m.device_type == "cuda" and m.vendor == "NVIDIA"
    assert m.device_name == DEVICE and m.gpu == "H100-SXM" and m.memory_bytes == 85899345920
    assert m.device_count == 8
    assert m.source.commit == COMMIT and m.source.license.startswith("Apache-2.0")
    assert m.source.repository == "https://github.com/ai-dynamo/aiconfigurator"
    assert (tmp_path / "out" / "aiconfigurator.LICENSE").read_text().startswith("Apache License")
    assert any(f.endswith("gemm/vllm/0.24.0/gemm_perf.parquet") for f in m.source.files)
    assert m.software.framework == "vllm 0.24.0" and m.software.nccl == "2.29.2"
    assert m.command.startswith("pdsim profiles import aiconfigurator ") and "--system h100_sxm" in m.command
    assert "not imported: mla" in m.notes  # skipped tables are named
    again = load_profile(aic.path)
    for t in again.meta.tables:
        assert len(again.table(t)) == again.meta.tables[t].rows


# --------------------------------------------------------------------------------------------------
# Synthetic vidur tree
# --------------------------------------------------------------------------------------------------

VIDUR_OPS = ("emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
             "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")


def _mlp_rows(dims: dict, rows: list[tuple[int, int, float]], ops=VIDUR_OPS) -> list[dict]:
    """rows: (num_tokens, tp, base_ms); op i gets median base_ms * (i + 1)."""
    out = []
    for tokens, tp, base in rows:
        r = {}
        for i, op in enumerate(ops):
            med = base * (i + 1)
            r.update({f"time_stats.{op}.min": med * 0.9, f"time_stats.{op}.max": med * 1.1,
                      f"time_stats.{op}.mean": med, f"time_stats.{op}.median": med, f"time_stats.{op}.std": 0.01})
        r.update(dims)
        r.update({"num_tokens": tokens, "num_tensor_parallel_workers": tp})
        out.append(r)
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def make_vidur_tree(root: Path) -> Path:
    comp = root / "profiling" / "compute" / "h100"
    llama = dict(n_head=4, n_kv_head=2, n_embd=64, n_expanded_embd=128, vocab_size=1000, use_gated_mlp=True)
    _write_csv(comp / "meta-llama" / "Tiny-A" / "mlp.csv", _mlp_rows(llama, [(8, 1, 0.001), (16, 2, 0.002), (8, 1, 0.003)]))
    # a second model with the same shapes: its keys merge with Tiny-A's (median)
    _write_csv(comp / "meta-llama" / "Tiny-B" / "mlp.csv", _mlp_rows(llama, [(8, 1, 0.005)]))
    phi = dict(n_head=4, n_kv_head=4, n_embd=32, n_expanded_embd=80, vocab_size=1000, use_gated_mlp=False)
    phi_ops = tuple(o for o in VIDUR_OPS if o != "post_attention_layernorm")
    _write_csv(comp / "microsoft" / "phi-2" / "mlp.csv", _mlp_rows(phi, [(4, 1, 0.001)], phi_ops))
    net = root / "profiling" / "network" / "h100_dgx"
    ar = [{"": i, "time_stats.all_reduce.min": 0.01, "time_stats.all_reduce.max": 0.03, "time_stats.all_reduce.mean": 0.02,
           "time_stats.all_reduce.median": med, "time_stats.all_reduce.std": 0.001, "rank": 0, "num_workers": w,
           "size": size, "collective": "all_reduce", "devices_per_node": dpn, "max_devices_per_node": 8}
          for i, (w, dpn, size, med) in enumerate([(2, 2, 2048, 0.020), (8, 8, 2048, 0.030), (8, 4, 2048, 0.300)])]
    _write_csv(net / "all_reduce.csv", ar)
    sr = [{"": 0, "time_stats.send_recv.min": 0.01, "time_stats.send_recv.max": 0.03, "time_stats.send_recv.mean": 0.02,
           "time_stats.send_recv.median": 0.015, "time_stats.send_recv.std": 0.001, "rank": 0, "num_workers": 2,
           "size": 10240, "collective": "send_recv", "devices_per_node": 2, "max_devices_per_node": 8}]
    _write_csv(net / "send_recv.csv", sr)
    (root / "LICENSE").write_text("MIT License (test copy)\n")
    return root


@pytest.fixture
def vid(tmp_path):
    src = make_vidur_tree(tmp_path / "vidur")
    return import_vidur(src, "h100", tmp_path / "out" / "h100-vidur", commit="7d47513363ec447a741ac5e47241580b47724fbf")


def test_vidur_gemm_shapes_units_and_merge(vid):
    g = vid.table("gemm").set_index(["dtype", "m", "n", "k"])
    assert set(g.index.get_level_values("dtype")) == {"fp16"}
    # Tiny (head_dim 16): QKV n = (4 + 2*2) * 16 / tp, k = 64; O n = 64, k = 4*16/tp;
    # up (gated) n = 2 * 128 / tp, k = 64; down n = 64, k = 128 / tp. Op i's median is base * (i + 1).
    med = 0.003  # m = 8, TP 1: Tiny-A 0.001 and its repeat 0.003, Tiny-B 0.005 -> median 0.003
    assert g.loc[("fp16", 8, 128, 64), "latency_s"] == pytest.approx(3 * med / 1000)  # attn_pre_proj, ms -> s
    assert g.loc[("fp16", 8, 128, 64), "source_rows"] == 3
    assert g.loc[("fp16", 8, 64, 64), "latency_s"] == pytest.approx(5 * med / 1000)  # attn_post_proj
    assert g.loc[("fp16", 8, 256, 64), "latency_s"] == pytest.approx(7 * med / 1000)  # mlp_up_proj
    assert g.loc[("fp16", 8, 64, 128), "latency_s"] == pytest.approx(9 * med / 1000)  # mlp_down_proj
    # m = 16, TP 2 (base 0.002): O k = 64 / 2; up n = 2 * 128 / 2; QKV (64, 64) and down (64, 64) share a key
    assert g.loc[("fp16", 16, 64, 32), "latency_s"] == pytest.approx(5 * 0.002 / 1000)
    assert g.loc[("fp16", 16, 128, 64), "latency_s"] == pytest.approx(7 * 0.002 / 1000)
    assert g.loc[("fp16", 16, 64, 64), "latency_s"] == pytest.approx((3 + 9) / 2 * 0.002 / 1000)
    assert g.loc[("fp16", 16, 64, 64), "source_rows"] == 2
    # phi-2 (plain MLP, head_dim 8): up n = 80, k = 32 (op 6 of its list, which has no post-attention norm)
    assert g.loc[("fp16", 4, 80, 32), "latency_s"] == pytest.approx(6 * 0.001 / 1000)
    assert len(g) == 4 + 3 + 4  # Tiny m=8, Tiny m=16 (one shared key), phi-2


def test_vidur_elementwise_mapping(vid):
    e = vid.table("elementwise").set_index(["op", "dtype", "num_tokens", "width"])
    ops = set(e.index.get_level_values("op"))
    assert ops == {"rmsnorm", "layernorm", "silu_mul", "gelu", "rope", "add", "embedding"}
    assert e.loc[("silu_mul", "fp16", 8, 128), "latency_s"] == pytest.approx(8 * 0.003 / 1000)  # mlp_act, op 8
    assert ("silu_mul", "fp16", 16, 64) in e.index  # 128 / TP 2
    assert ("rope", "fp16", 8, (4 + 2) * 16) in e.index and ("rope", "fp16", 16, 48) in e.index
    # both norms of a Llama block are rmsnorm of width n_embd: input (op 2) and post-attention (op 6) merge,
    # median of {2, 6} x {0.001, 0.003, 0.005} ms = 0.008 ms
    assert e.loc[("rmsnorm", "fp16", 8, 64), "latency_s"] == pytest.approx(0.008 / 1000)
    assert e.loc[("rmsnorm", "fp16", 8, 64), "source_rows"] == 6
    assert e.loc[("embedding", "fp16", 8, 64), "latency_s"] == pytest.approx(0.003 / 1000)
    assert e.loc[("add", "fp16", 8, 64), "latency_s"] == pytest.approx(10 * 0.003 / 1000)
    assert ("layernorm", "fp16", 4, 32) in e.index and ("gelu", "fp16", 4, 80) in e.index
    # phi-2's partial rope and 3-input add are dropped
    assert ("rope", "fp16", 4, (4 + 4) * 8) not in e.index and ("add", "fp16", 4, 32) not in e.index


def test_vidur_network_intra_node_bytes(vid):
    c = vid.table("collective").set_index(["op", "backend", "dtype", "world_size", "message_bytes"])
    assert len(c) == 3  # the 8-rank row over 2 nodes is dropped
    assert c.loc[("all_reduce", "nccl", "fp16", 2, 2048), "latency_s"] == pytest.approx(0.020e-3)
    assert c.loc[("all_reduce", "nccl", "fp16", 8, 2048), "latency_s"] == pytest.approx(0.030e-3)
    assert c.loc[("send_recv", "nccl", "fp16", 2, 10240), "latency_s"] == pytest.approx(0.015e-3)


def test_vidur_meta(vid, tmp_path):
    m = vid.meta
    assert m.source_kind == "imported" and m.gpu == "H100-SXM" and m.device_count == 8
    assert m.source.commit == "7d47513363ec447a741ac5e47241580b47724fbf"
    assert "attention" in m.notes and "aiconfigurator" in m.notes
    assert not vid.has("attention_prefill") and not vid.has("attention_decode")
    assert (tmp_path / "out" / "vidur.LICENSE").is_file()
    assert all(f.startswith("data/profiling/") for f in m.source.files)
    for t in m.tables:
        vid.table(t)


def test_cli_import_and_errors(tmp_path):
    src = make_aiconfigurator_tree(tmp_path / "aic")
    out = tmp_path / "p" / "h100_sxm-aiconfigurator"
    r = CliRunner().invoke(app, ["profiles", "import", "aiconfigurator", str(src), "--system", "h100_sxm", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "h100_sxm-aiconfigurator" in r.output
    assert load_profile(out).meta.command == f"pdsim profiles import aiconfigurator {src} --system h100_sxm --out {out}"
    r = CliRunner().invoke(app, ["profiles", "import", "aiconfigurator", str(src), "--system", "nope", "--out", str(out)])
    assert r.exit_code == 2 and "nope.yaml" in r.output
    r = CliRunner().invoke(app, ["profiles", "import", "vidur", str(src), "--system", "h100_sxm"])
    assert r.exit_code != 0


# --------------------------------------------------------------------------------------------------
# Committed profiles
# --------------------------------------------------------------------------------------------------

COMMITTED = sorted(p for p in GPU_PROFILES.glob("*") if p.is_dir() and p.name.endswith(("-aiconfigurator", "-vidur")))


def test_every_shipped_import_is_committed():
    assert sorted(s.name for s in shipped_imports()) == [p.name for p in COMMITTED]
    assert (GPU_PROFILES / "aiconfigurator.LICENSE").is_file() and (GPU_PROFILES / "vidur.LICENSE").is_file()


def _gpu_names() -> set[str]:
    with open(ROOT / "pdsim" / "data" / "gpu_specs.csv", newline="") as fh:
        return {row["gpu"] for row in csv.DictReader(fh)}


def test_gpu_mappings_name_rows_of_gpu_specs():
    names = _gpu_names()
    for gpu in [*SYSTEM_GPUS.values(), *(d.gpu for d in DEVICES.values())]:
        assert gpu is None or gpu in names


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_imported_profile_loads_and_validates(path):
    prof = load_profile(path)
    m = prof.meta
    assert m.name == path.name and m.source_kind == "imported"
    assert m.source.commit and len(m.source.commit) == 40 and m.source.repository and m.source.license
    assert m.source.files and m.command.startswith("pdsim profiles import ")
    assert m.gpu is None or m.gpu in _gpu_names()
    assert m.tables
    for t, info in m.tables.items():
        assert t in TABLES
        assert len(prof.table(t)) == info.rows  # sha256 checked and table validated on read
    if path.name.endswith("-aiconfigurator"):
        assert {"gemm", "attention_prefill", "attention_decode", "collective"} <= set(m.tables)
    else:
        assert {"gemm", "elementwise", "collective"} <= set(m.tables)
