"""Specifications of the live reference engine (pdsim.live.engine) and ``pdsim live``: a real-time
replay completes every request with ordered timestamps and the trace's token counts, never exceeds the
KV capacity, preempts (and still finishes) under a tight KV cache, refuses what can never fit, writes
the simulator's request columns, and batching does not change the greedy tokens."""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from pdsim.cli import app  # noqa: E402
from pdsim.errors import ConfigError  # noqa: E402
from pdsim.live.engine import ITERATION_COLUMNS, EngineConfig, LiveEngine, prompt_token_ids  # noqa: E402
from pdsim.live.hostmem import SETTINGS, retain_freed_memory  # noqa: E402
from pdsim.live.model import LlamaModel  # noqa: E402
from pdsim.live.workload import trace_requests  # noqa: E402
from pdsim.metrics.records import REQUEST_COLUMNS  # noqa: E402
from pdsim.workload import load_trace  # noqa: E402

SMALL = {  # a small Llama so the tests run in seconds on 2 cores
    "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 1000, "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def small_cfg_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("model") / "small.json"
    p.write_text(json.dumps(SMALL))
    return str(p)


def tiny_workload(n=20, max_prompt=48, max_output=12, rate_scale=4.0) -> pd.DataFrame:
    """The first n requests of the tiny trace, capped and sped up, as ``pdsim live`` reads them."""
    return trace_requests(trace=Path("traces/tiny/tiny.csv"), trace_format="auto", rate_scale=rate_scale,
                          window_start_s=0.0, window_duration_s=None, max_requests=n, max_prompt_tokens=max_prompt,
                          max_output_tokens=max_output, seed=0)[1]


def check_result(result, workload, capacity_blocks, block_size):
    by_id = {r.id: r for r in result.requests}
    assert sorted(by_id) == workload["request_id"].tolist()
    for w in workload.itertuples(index=False):
        r = by_id[w.request_id]
        assert r.finish_s == r.finish_s, f"request {r.id} did not finish"
        assert w.arrival_s <= r.prefill_start_s <= r.first_token_s <= r.finish_s
        times = result.token_times_s[r.id]
        assert len(times) == len(result.token_ids[r.id]) == w.output_tokens
        assert times == sorted(times) and times[0] == r.first_token_s and times[-1] == r.finish_s
    it = result.iterations_frame()
    assert list(it.columns) == ITERATION_COLUMNS
    assert (it["kv_blocks_used"] <= capacity_blocks).all()
    assert (it["kv_tokens_cached"] <= capacity_blocks * block_size).all()
    assert (it["start_s"].diff().dropna() > 0).all()
    # the host's issue time of the forward pass is part of the step (all of it, on a CPU, but the sampling)
    assert (it["enqueue_s"] > 0).all() and (it["enqueue_s"] <= it["duration_s"]).all()


def test_real_time_replay_completes_every_request(small_cfg_path):
    wl = tiny_workload()
    cfg = EngineConfig(model_config=small_cfg_path, kv_capacity_blocks=256, block_size=16)
    result = LiveEngine(cfg).run(wl)
    check_result(result, wl, 256, 16)
    # arrivals honoured on the wall clock: the run lasts at least until the last arrival
    assert result.wall_s >= wl["arrival_s"].max()
    assert all(r.preemptions == 0 for r in result.requests)


def test_tight_kv_preempts_and_still_finishes(small_cfg_path):
    wl = tiny_workload(n=12, max_prompt=64, max_output=16, rate_scale=20.0)
    cfg = EngineConfig(model_config=small_cfg_path, kv_capacity_blocks=6, block_size=16, watermark_fraction=0.0)
    result = LiveEngine(cfg).run(wl)
    check_result(result, wl, 6, 16)
    assert result.preemptions > 0
    assert sum(r.preemptions for r in result.requests) == result.preemptions
    assert result.iterations_frame()["preempted"].any()


def test_batching_does_not_change_greedy_tokens(small_cfg_path):
    wl = tiny_workload(n=8, max_prompt=32, max_output=8, rate_scale=50.0)
    cfg = EngineConfig(model_config=small_cfg_path, kv_capacity_blocks=256, seed=3)
    engine = LiveEngine(cfg)
    result = engine.run(wl)
    assert result.iterations_frame()["decode_seqs"].max() > 1  # requests really were batched
    alone = LlamaModel(SMALL, seed=3, kv_block_tokens=16)
    for w in wl.itertuples(index=False):
        prompt = prompt_token_ids(3, w.request_id, w.prompt_tokens, SMALL["vocab_size"])
        toks = [alone.step(prefill=[("x", prompt)])["x"]]
        while len(toks) < w.output_tokens:
            toks.append(alone.step(decode=[("x", toks[-1])])["x"])
        alone.free("x")
        assert result.token_ids[w.request_id] == toks, f"request {w.request_id}"


def test_chunked_prefill_splits_prompts_and_keeps_the_greedy_tokens(small_cfg_path):
    """With ``chunked_prefill`` and a budget smaller than the prompts, prefills run in chunks beside the
    running decodes (iterations mix both), a prompt longer than the budget is served (unchunked it is
    refused), tight KV still preempts and recomputes, and every request's greedy tokens are those of the
    unchunked engine on the same prompts and seed."""
    wl = tiny_workload(n=10, max_prompt=48, max_output=10, rate_scale=50.0)
    plain = LiveEngine(EngineConfig(model_config=small_cfg_path, kv_capacity_blocks=256, seed=3)).run(wl)
    for blocks in (256, 7):
        cfg = EngineConfig(model_config=small_cfg_path, kv_capacity_blocks=blocks, block_size=16, seed=3,
                           max_num_batched_tokens=20, chunked_prefill=True, watermark_fraction=0.0)
        result = LiveEngine(cfg).run(wl)
        check_result(result, wl, blocks, 16)
        it = result.iterations_frame()
        assert it["prefill_tokens"].max() <= 20 and ((it["prefill_tokens"] > 0) & (it["decode_seqs"] > 0)).any()
        assert len(it) > len(plain.iterations_frame())  # the long prompts took several iterations
        for w in wl.itertuples(index=False):
            assert result.token_ids[w.request_id] == plain.token_ids[w.request_id], f"request {w.request_id}"
        if blocks == 7:
            assert result.preemptions > 0
    with pytest.raises(ConfigError, match="exceeds max_num_batched_tokens 20"):  # unchunked: refused
        LiveEngine(EngineConfig(model_config=small_cfg_path, max_num_batched_tokens=20)).run(wl)


def test_cli_chunked_prefill_reaches_the_manifest_and_the_simulation(tmp_path, small_cfg_path):
    from typer.testing import CliRunner

    from pdsim.cli import app

    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["live", "--trace", "traces/tiny/tiny.csv", "--rate-scale", "8", "--max-requests", "10",
                                   "--max-prompt-tokens", "48", "--max-output-tokens", "6", "--model-config", small_cfg_path,
                                   "--max-num-batched-tokens", "24", "--chunked-prefill", "--threads", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "manifest.json").read_text())["config"]["chunked_prefill"] is True
    assert (pd.read_csv(out / "requests.csv")["prompt_tokens"] > 24).any()
    res = CliRunner().invoke(app, ["validate", "--live-run", str(out), "--out", str(tmp_path / "val")])
    assert res.exit_code == 0, res.output
    assert "chunked prefill on" in (tmp_path / "val" / "report.md").read_text()
    sim = pd.read_csv(tmp_path / "val" / "requests.csv")
    assert (sim["status"] == "completed").all() and len(sim) == 10  # unchunked, the long prompts would be rejected


def test_refuses_requests_that_can_never_fit(small_cfg_path):
    engine = LiveEngine(EngineConfig(model_config=small_cfg_path, kv_capacity_blocks=2, block_size=16))
    wl = tiny_workload(n=3, max_prompt=40, max_output=4)
    with pytest.raises(ConfigError, match=r"request 0: needs 3 KV blocks .* capacity is 2 blocks \(32 tokens\)"):
        engine.run(wl)
    engine = LiveEngine(EngineConfig(model_config=small_cfg_path, max_num_batched_tokens=20))
    with pytest.raises(ConfigError, match="exceeds max_num_batched_tokens 20"):
        engine.run(wl)
    with pytest.raises(ConfigError, match="max_position_embeddings 1024"):
        engine.check_request(7, 1000, 30)
    with pytest.raises(ConfigError, match="max_num_seqs must be an integer >= 1, got 0"):
        EngineConfig(max_num_seqs=0)


def test_cli_writes_run_directory(tmp_path, small_cfg_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "live", "--trace", "traces/tiny/tiny.csv", "--max-requests", "10", "--rate-scale", "8",
        "--max-prompt-tokens", "32", "--max-output-tokens", "6", "--model-config", small_cfg_path,
        "--threads", "1", "--ttft-slo-s", "2", "--tpot-slo-s", "0.5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "completed 10/10" in res.output and "TTFT p50/p90 ms" in res.output
    req = pd.read_csv(out / "requests.csv")
    assert list(req.columns) == REQUEST_COLUMNS
    assert (req["status"] == "completed").all() and req["kv_transfer_s"].isna().all()
    assert req["output_tokens"].tolist() == load_trace("traces/tiny/tiny.csv")["output_tokens"].clip(upper=6).iloc[:10].tolist()
    assert pd.read_parquet(out / "requests.parquet").shape == req.shape
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[0, "completed"] == 10 and summary.loc[0, "slo_attainment"] == 1.0
    it = pd.read_csv(out / "iterations.csv")
    assert list(it.columns) == ITERATION_COLUMNS and (it["kv_blocks_used"] <= it["kv_capacity_blocks"]).all()
    tokens = pd.read_csv(out / "tokens.csv")
    assert len(tokens) == req["output_tokens"].sum()
    man = json.loads((out / "manifest.json").read_text())
    assert man["torch_version"] == torch.__version__ and man["threads"] == 1 and man["seed"] == 0
    assert man["config"]["kv_capacity_blocks"] == 2048
    assert man["host_allocator"] == retain_freed_memory()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"),
                    reason="glibc only")
def test_cpu_engine_keeps_freed_memory_in_the_process(small_cfg_path):
    """On glibc the CPU engine turns off mmap-served allocations and heap trimming (pdsim.live.hostmem),
    so a freed activation is reused by the next iteration instead of being page-faulted in again."""
    LiveEngine(EngineConfig(model_config=small_cfg_path))
    alloc = retain_freed_memory()
    assert alloc["retain_freed_memory"] is True and alloc["allocator"].startswith("glibc ")
    assert alloc["mallopt"] == {name: value for name, (_, value) in SETTINGS.items()}
    assert SETTINGS["M_MMAP_MAX"][1] == 0 and SETTINGS["M_TRIM_THRESHOLD"][1] >= 2**30
    # a large block now comes from the heap (no mmap) and stays there, free, once freed
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):  # glibc < 2.33
        return

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                          "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(64 << 20)
    assert block and libc.mallinfo2().hblkhd < 64 << 20  # not mmap-served
    libc.free(block)
    assert libc.mallinfo2().fordblks >= 64 << 20  # kept by malloc, free for the next iteration


@pytest.mark.parametrize("args, message", [
    (["--kv-capacity-tokens", "64"], "needs 9 KV blocks"),
    (["--max-num-batched-tokens", "100"], "exceeds max_num_batched_tokens 100"),
    (["--rate-scale", "0"], "rate_scale"),
    (["--trace", "missing.csv"], "trace file not found"),
    (["--kv-capacity-tokens", "64", "--kv-capacity-blocks", "4"], "not both"),
    (["--kv-capacity-tokens", str(10**13)], "the model does not fit on cpu: engine: weights"),
])
def test_cli_bad_input_exits_2(tmp_path, args, message):
    base = ["live", "--trace", "traces/tiny/tiny.csv", "--max-requests", "3", "--out", str(tmp_path / "x")]
    if "--trace" in args:
        base = base[:1] + base[3:]
    res = CliRunner().invoke(app, base + args)
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and message in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
