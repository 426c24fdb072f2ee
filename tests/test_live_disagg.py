"""Specifications of the disaggregated live engine (pdsim.live.disagg) and ``pdsim live --mode
disaggregated``: a prefill and a decode worker process with a real gloo KV transfer finish every request
exactly once with the trace's token counts and ordered timestamps; the KV sent is exactly the prompt's
(its size, and the greedy tokens equal the colocated engine's on the same prompts and seed, even when the
decode worker preempts); transfer times are recorded and positive; the iteration logs respect the roles
and the KV capacity; what can never run (a model that does not fit, requests too large, mismatched
workers) is refused before any process starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from pdsim.cli import app  # noqa: E402
from pdsim.errors import ConfigError  # noqa: E402
from pdsim.live.disagg import TRANSFER_COLUMNS, DisaggregatedEngine  # noqa: E402
from pdsim.live.engine import (  # noqa: E402
    ITERATION_COLUMNS,
    EngineConfig,
    LiveEngine,
    check_fits,
    memory_need_bytes,
)
from pdsim.live.workload import trace_requests  # noqa: E402
from pdsim.metrics.records import REQUEST_COLUMNS, requests_frame  # noqa: E402

SMALL = {  # a small Llama so the workers start and run in seconds
    "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 1000, "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
}
KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 32 * 4  # K and V x layers x kv_heads x head_dim x fp32


@pytest.fixture(scope="module")
def small_cfg_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("model") / "small.json"
    p.write_text(json.dumps(SMALL))
    return str(p)


def workload(n=24, max_prompt=48, max_output=12, rate_scale=8.0) -> pd.DataFrame:
    """The first n requests of the tiny trace, capped and sped up, as ``pdsim live`` reads them."""
    return trace_requests(trace=Path("traces/tiny/tiny.csv"), trace_format="auto", rate_scale=rate_scale,
                          window_start_s=0.0, window_duration_s=None, max_requests=n, max_prompt_tokens=max_prompt,
                          max_output_tokens=max_output, seed=0)[1]


@pytest.fixture(scope="module")
def runs(small_cfg_path):
    """One disaggregated run (the decode worker's KV is tight, so it preempts) and the colocated engine
    on the same requests, seed and thread count."""
    wl = workload(rate_scale=40.0)
    prefill = EngineConfig(model_config=small_cfg_path, kv_capacity_blocks=64, seed=5)
    decode = EngineConfig(model_config=small_cfg_path, kv_capacity_blocks=10, watermark_fraction=0.0, seed=5)
    dis = DisaggregatedEngine(prefill, decode, threads=1).run(wl)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        col = LiveEngine(EngineConfig(model_config=small_cfg_path, kv_capacity_blocks=256, seed=5)).run(wl)
    finally:
        torch.set_num_threads(old)
    return wl, dis, col, prefill, decode


def test_every_request_finishes_exactly_once(runs):
    wl, dis, _, _, _ = runs
    assert sorted(r.id for r in dis.requests) == wl["request_id"].tolist()  # once each
    by_id = {r.id: r for r in dis.requests}
    for w in wl.itertuples(index=False):
        r = by_id[w.request_id]
        times = dis.token_times_s[r.id]
        assert len(times) == len(dis.token_ids[r.id]) == r.generated == w.output_tokens
        assert w.arrival_s <= r.prefill_start_s <= r.first_token_s == times[0]
        assert times == sorted(times) and times[-1] == r.finish_s
    df = requests_frame(dis.requests, "live", "tiny")
    assert list(df.columns) == REQUEST_COLUMNS and (df["status"] == "completed").all()
    two_plus = df["output_tokens"] > 1
    assert two_plus.any() and (~two_plus).any()  # the trace has one-token requests too (they stay on prefill)
    assert df.loc[two_plus, "kv_transfer_s"].gt(0).all() and df.loc[~two_plus, "kv_transfer_s"].isna().all()
    assert df.loc[two_plus, "decode_wait_s"].ge(0).all()
    assert (df.loc[two_plus, "kv_transfer_bytes"] == df.loc[two_plus, "prompt_tokens"] * KV_BYTES_PER_TOKEN).all()


def test_greedy_tokens_equal_the_colocated_engine(runs):
    wl, dis, col, _, _ = runs
    assert dis.preemptions > 0  # the decode worker re-prefilled some requests locally
    for rid in wl["request_id"]:
        assert dis.token_ids[rid] == col.token_ids[rid], f"request {rid}"


def test_chunked_prefill_on_both_workers_keeps_the_greedy_tokens(small_cfg_path, runs):
    """Both workers chunk prefills within a 24-token budget (the decode worker's re-prefills after its
    preemptions too): every request finishes with the colocated engine's greedy tokens, and no
    iteration of either worker prefills more than the budget."""
    wl, _, col, _, _ = runs
    prefill = EngineConfig(model_config=small_cfg_path, kv_capacity_blocks=64, seed=5, max_num_batched_tokens=24,
                           chunked_prefill=True)
    decode = EngineConfig(model_config=small_cfg_path, kv_capacity_blocks=10, watermark_fraction=0.0, seed=5,
                          max_num_batched_tokens=24, chunked_prefill=True)
    dis = DisaggregatedEngine(prefill, decode, threads=1).run(wl)
    for rid in wl["request_id"]:
        assert dis.token_ids[rid] == col.token_ids[rid], f"request {rid}"
        assert len(dis.token_times_s[rid]) == len(dis.token_ids[rid])
    p, d = dis.worker_iterations_frame("prefill"), dis.worker_iterations_frame("decode")
    assert p["prefill_tokens"].max() <= 24 and d["prefill_tokens"].max() <= 24
    assert (wl["prompt_tokens"] > 24).any()  # some prompts really were split


def test_transfers_move_exactly_the_prompt_kv(runs):
    wl, dis, _, _, _ = runs
    tr = dis.transfers_frame()
    assert list(tr.columns) == TRANSFER_COLUMNS
    multi = wl[wl["output_tokens"] > 1]
    assert tr["request_id"].tolist() == multi["request_id"].tolist()
    assert tr["kv_tokens"].tolist() == multi["prompt_tokens"].tolist()
    assert (tr["kv_bytes"] == tr["kv_tokens"] * KV_BYTES_PER_TOKEN).all()
    assert (tr["kv_transfer_s"] > 0).all()
    assert np.allclose(tr["kv_transfer_s"], tr["recv_done_s"] - tr["ready_s"])
    assert (tr["send_start_s"] >= tr["ready_s"]).all() and (tr["send_end_s"] >= tr["send_start_s"]).all()
    assert (tr["recv_done_s"] >= tr["send_start_s"]).all()
    # the decode side decodes a request only after its KV arrived: its second token comes later
    for row in tr.itertuples(index=False):
        assert dis.token_times_s[row.request_id][1] > row.recv_done_s


def test_worker_logs_respect_roles_and_capacity(runs):
    _, dis, _, prefill, decode = runs
    p, d = dis.worker_iterations_frame("prefill"), dis.worker_iterations_frame("decode")
    assert list(p.columns) == list(d.columns) == ITERATION_COLUMNS
    assert (p["decode_seqs"] == 0).all() and (p["prefill_seqs"] > 0).all()
    assert (d["decode_seqs"] > 0).any() and d["preempted"].any()
    assert (d.loc[d["prefill_seqs"] > 0, "iteration"] > 0).all()  # only re-prefills after preemptions
    for frame, cfg in ((p, prefill), (d, decode)):
        assert (frame["kv_blocks_used"] <= cfg.kv_capacity_blocks).all()
        assert (frame["kv_tokens_cached"] <= cfg.kv_capacity_tokens).all()
        assert (frame["duration_s"] > 0).all() and (frame["host_s"] >= 0).all()
        assert (frame["start_s"].diff().dropna() > 0).all()


def test_refuses_what_can_never_run(small_cfg_path):
    cfg = EngineConfig(model_config=small_cfg_path)
    w, kv = memory_need_bytes(cfg, SMALL)
    assert kv == cfg.kv_capacity_tokens * KV_BYTES_PER_TOKEN and w > 1000 * 128 * 4
    one = EngineConfig(model_config=small_cfg_path, memory_bytes=w + kv)  # room for one engine, not two
    LiveEngine(one)
    with pytest.raises(ConfigError, match=r"does not fit on cpu: prefill worker: weights .*; decode worker"):
        DisaggregatedEngine(one, one)
    with pytest.raises(ConfigError, match=r"does not fit on cpu: engine: weights"):
        LiveEngine(EngineConfig(model_config=small_cfg_path, memory_bytes=w + kv - 1))
    huge = {**SMALL, "hidden_size": 1 << 20, "intermediate_size": 1 << 22, "num_hidden_layers": 64}
    with pytest.raises(ConfigError, match="does not fit"):  # the real host memory, before allocating
        check_fits([("engine", cfg, huge)])
    with pytest.raises(ConfigError, match="must share seed"):
        DisaggregatedEngine(cfg, EngineConfig(model_config=small_cfg_path, seed=1))
    with pytest.raises(ConfigError, match="NCCL between GPUs is not implemented"):
        c = EngineConfig(model_config=small_cfg_path, device="cuda")
        DisaggregatedEngine(c, c)
    eng = DisaggregatedEngine(EngineConfig(model_config=small_cfg_path, kv_capacity_blocks=4, watermark_fraction=0.0),
                              EngineConfig(model_config=small_cfg_path, kv_capacity_blocks=8, watermark_fraction=0.0))
    eng.check_request(0, 64, 60)  # the prefill worker holds the prompt only; decode prompt + output
    with pytest.raises(ConfigError, match=r"request 1: needs 5 KV blocks \(65 tokens"):
        eng.check_request(1, 65, 2)
    with pytest.raises(ConfigError, match=r"request 2: needs 9 KV blocks \(130 tokens"):
        eng.check_request(2, 64, 66)
    with pytest.raises(ConfigError, match="request 2: needs 9 KV blocks"):  # run refuses before spawning
        eng.run(pd.DataFrame({"request_id": [2], "arrival_s": [0.0], "prompt_tokens": [64], "output_tokens": [66]}))


def test_cli_disaggregated_run_directory(tmp_path, small_cfg_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "live", "--mode", "disaggregated", "--trace", "traces/tiny/tiny.csv", "--max-requests", "10",
        "--rate-scale", "8", "--max-prompt-tokens", "32", "--max-output-tokens", "6", "--model-config",
        small_cfg_path, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "completed 10/10" in res.output and "1 thread(s) each" in res.output
    req = pd.read_csv(out / "requests.csv")
    assert list(req.columns) == REQUEST_COLUMNS and (req["status"] == "completed").all()
    multi = req["output_tokens"] > 1
    assert req.loc[multi, "kv_transfer_s"].gt(0).all()
    tokens = pd.read_csv(out / "tokens.csv")
    assert len(tokens) == req["output_tokens"].sum()
    tr = pd.read_csv(out / "transfers.csv")
    assert len(tr) == multi.sum() and list(tr.columns) == TRANSFER_COLUMNS
    for role in ("prefill", "decode"):
        assert list(pd.read_csv(out / f"iterations_{role}.csv").columns) == ITERATION_COLUMNS
    assert not (out / "iterations.csv").exists()
    man = json.loads((out / "manifest.json").read_text())
    assert man["mode"] == "disaggregated" and man["threads"] == 1
    assert set(man["workers"]) == {"prefill", "decode"}
    assert pd.read_csv(out / "summary.csv").loc[0, "kind"] == "disaggregated"


def test_cli_bad_mode_exits_2(tmp_path):
    res = CliRunner().invoke(app, ["live", "--mode", "split", "--trace", "traces/tiny/tiny.csv", "--out",
                                   str(tmp_path / "x")])
    assert res.exit_code == 2 and "--mode must be colocated or disaggregated, got 'split'" in res.output


def test_a_failing_worker_is_reported_not_hung(tmp_path):
    """A worker that fails (here: its model config vanished after the coordinator's checks) ends the run
    with InvariantViolation carrying the worker's error; both processes are gone afterwards."""
    from pdsim.errors import InvariantViolation

    path = tmp_path / "gone.json"
    path.write_text(json.dumps(SMALL))
    cfg = EngineConfig(model_config=str(path), kv_capacity_blocks=64)
    engine = DisaggregatedEngine(cfg, cfg)
    path.unlink()
    with pytest.raises(InvariantViolation, match=r"(prefill|decode) worker failed:(.|\n)*file not found"):
        engine.run(workload(n=4), timeout_s=120)
