"""Specification of the workload ring: trace readers, synthetic arrivals, workload building, config."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from pdsim.config.workload import (
    FixedLengths,
    GammaWorkload,
    PoissonWorkload,
    TraceLengths,
    TraceWorkload,
    WorkloadSpec,
)
from pdsim.errors import ConfigError, TraceError
from pdsim.workload import build_workload, gamma_arrivals_s, load_trace, poisson_arrivals_s

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO / "traces"
AZURE_CODE = TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv"
AZURE_CONV = TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
MOONCAKE_CONV = TRACES / "mooncake" / "conversation_trace.jsonl"
TINY = TRACES / "tiny" / "tiny.csv"

WORKLOAD = TypeAdapter(WorkloadSpec)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def assert_sorted_from_zero(df: pd.DataFrame) -> None:
    t = df["arrival_s"].to_numpy()
    assert t[0] == 0.0
    assert np.all(np.diff(t) >= 0)


# ------------------------------------------------------------------------------------- real traces


@pytest.mark.parametrize(
    ("path", "rows", "mean_prompt", "mean_output", "span_s"),
    [
        (AZURE_CODE, 8_819, 2048, 27.9, 3435.9),
        (AZURE_CONV, 19_366, 1155, 211, 3501.7),
        (MOONCAKE_CONV, 12_031, 12_035, 343, 3537.0),
    ],
    ids=["azure-code", "azure-conv", "mooncake-conv"],
)
def test_real_traces_match_provenance(path, rows, mean_prompt, mean_output, span_s):
    df = load_trace(path)
    assert len(df) == rows
    assert_sorted_from_zero(df)
    assert df["arrival_s"].dtype == np.float64
    assert df["prompt_tokens"].dtype == np.int64
    assert df["output_tokens"].dtype == np.int64
    assert df["prompt_tokens"].mean() == pytest.approx(mean_prompt, abs=1.0)
    assert df["output_tokens"].mean() == pytest.approx(mean_output, abs=0.5)
    assert df["arrival_s"].iloc[-1] == pytest.approx(span_s, abs=0.1)
    assert (df["prompt_tokens"] >= 1).all() and (df["output_tokens"] >= 1).all()
    assert isinstance(df.index, pd.RangeIndex)


def test_azure_first_rows_are_converted_exactly():
    df = load_trace(AZURE_CODE, "azure")
    # 2023-11-16 18:17:03.9799600,4808,10 then 2023-11-16 18:17:04.0319600,3180,8
    assert df.loc[0, ["prompt_tokens", "output_tokens"]].tolist() == [4808, 10]
    assert df.loc[1, ["prompt_tokens", "output_tokens"]].tolist() == [3180, 8]
    assert df.loc[1, "arrival_s"] == pytest.approx(0.052, abs=1e-9)
    assert list(df.columns) == ["arrival_s", "prompt_tokens", "output_tokens"]


def test_mooncake_keeps_hash_ids_and_converts_ms():
    df = load_trace(MOONCAKE_CONV, "mooncake")
    assert list(df.columns) == ["arrival_s", "prompt_tokens", "output_tokens", "hash_ids"]
    assert df.loc[0, "hash_ids"] == list(range(14))
    assert df.loc[0, ["prompt_tokens", "output_tokens"]].tolist() == [6758, 500]
    assert all(isinstance(h, list) for h in df["hash_ids"])
    # Each hash block covers 512 tokens: ceil(input_length / 512) blocks.
    blocks = df["hash_ids"].map(len).to_numpy()
    assert np.array_equal(blocks, np.ceil(df["prompt_tokens"].to_numpy() / 512).astype(int))
    assert df["arrival_s"].iloc[-1] == pytest.approx(3536.999)


@pytest.mark.parametrize(("path", "fmt"), [(AZURE_CODE, "azure"), (MOONCAKE_CONV, "mooncake"), (TINY, "csv")])
def test_auto_detection_equals_explicit_format(path, fmt):
    pd.testing.assert_frame_equal(load_trace(path), load_trace(path, fmt))


def test_tiny_trace():
    df = load_trace(TINY)
    assert len(df) == 40
    assert_sorted_from_zero(df)
    assert df["arrival_s"].iloc[-1] == 6.0


def test_conv_trace_loads_fast():
    best_s = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        load_trace(AZURE_CONV)
        best_s = min(best_s, time.perf_counter() - t0)
    assert best_s < 0.5


# --------------------------------------------------------------------------------------- bad input

CSV_HEADER = "arrival_s,prompt_tokens,output_tokens\n"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(TraceError, match="nope.csv") as exc:
        load_trace(path)
    assert "not found" in str(exc.value)


@pytest.mark.parametrize(
    ("name", "text", "fmt"),
    [
        ("header_only.csv", CSV_HEADER, "auto"),
        ("zero_bytes.csv", "", "auto"),
        ("blank_lines.csv", CSV_HEADER + "\n\n", "csv"),
        ("empty.jsonl", "\n", "mooncake"),
        ("blank.jsonl", "\n\n", "auto"),
        ("azure_empty.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n", "azure"),
    ],
)
def test_empty_trace(tmp_path, name, text, fmt):
    path = write(tmp_path, name, text)
    with pytest.raises(TraceError, match="trace is empty") as exc:
        load_trace(path, fmt)
    assert name in str(exc.value)


def test_missing_columns_are_named_with_columns_found(tmp_path):
    path = write(tmp_path, "cols.csv", "arrival_s,prompt_tokens,out\n0,10,5\n")
    with pytest.raises(TraceError) as exc:
        load_trace(path, "csv")
    msg = str(exc.value)
    assert "cols.csv:1:" in msg
    assert "missing column(s) output_tokens" in msg
    assert "found columns: arrival_s, prompt_tokens, out" in msg


def test_missing_azure_column_auto(tmp_path):
    path = write(tmp_path, "az.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.9799600,10\n")
    with pytest.raises(TraceError, match="missing column\\(s\\) GeneratedTokens") as exc:
        load_trace(path)
    assert "TIMESTAMP, ContextTokens" in str(exc.value)


def test_undetectable_format(tmp_path):
    path = write(tmp_path, "what.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(TraceError, match="cannot detect") as exc:
        load_trace(path)
    assert "what.csv" in str(exc.value) and "a, b, c" in str(exc.value)


@pytest.mark.parametrize(
    ("rows", "line", "column", "value_text"),
    [
        ("0,10,5\n1,abc,5\n", 3, "prompt_tokens", "'abc'"),
        ("0,10,5\n1,10,5\n2,10,x7\n", 4, "output_tokens", "'x7'"),
        ("0,10,5\nsoon,10,5\n", 3, "arrival_s", "'soon'"),
        ("0,10,5\n1,0,5\n", 3, "prompt_tokens must be >= 1", "got 0"),
        ("0,10,5\n1,-4,5\n", 3, "prompt_tokens must be >= 1", "got -4"),
        ("0,10,5\n1,10,5\n2,10,5\n3,10,5\n4,10,5\n5,10,5\n6,10,0\n", 8, "output_tokens must be >= 1", "got 0"),
        ("0,10,-2\n", 2, "output_tokens must be >= 1", "got -2"),
        ("0,10,5\n1,10.5,5\n", 3, "prompt_tokens must be an integer", "10.5"),
        ("0,10,5\n1,,5\n", 3, "prompt_tokens is missing", ""),
        ("0,10,5\n1,10,5\n0.5,10,5\n", 4, "arrival_s goes back in time", "0.5"),
        ("0,10,5\ninf,10,5\n", 3, "arrival_s must be a finite number", "inf"),
    ],
)
def test_bad_csv_rows_name_file_line_column_value(tmp_path, rows, line, column, value_text):
    path = write(tmp_path, "bad.csv", CSV_HEADER + rows)
    with pytest.raises(TraceError) as exc:
        load_trace(path)
    msg = str(exc.value)
    assert f"bad.csv:{line}: " in msg
    assert column in msg
    assert value_text in msg


def test_unsorted_message_says_which_line_goes_back(tmp_path):
    path = write(tmp_path, "unsorted.csv", CSV_HEADER + "0,1,1\n2.5,1,1\n2.0,1,1\n")
    with pytest.raises(TraceError) as exc:
        load_trace(path)
    assert "unsorted.csv:4: arrival_s goes back in time: got 2.0 after 2.5 on line 3" in str(exc.value)


def test_blank_lines_do_not_shift_line_numbers(tmp_path):
    path = write(tmp_path, "gaps.csv", CSV_HEADER + "0,10,5\n\n1,10,5\n\n2,10,0\n")
    with pytest.raises(TraceError, match="gaps.csv:6: output_tokens must be >= 1, got 0"):
        load_trace(path)
    ok = write(tmp_path, "gaps_ok.csv", CSV_HEADER + "0,10,5\n\n1,10,5\n\n")
    assert load_trace(ok)["prompt_tokens"].tolist() == [10, 10]


AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def test_azure_unparseable_timestamp(tmp_path):
    text = AZURE_HEADER + "2023-11-16 18:17:03.9799600,10,5\n2023-11-16 25:99:00.0000000,10,5\n"
    path = write(tmp_path, "az_ts.csv", text)
    with pytest.raises(TraceError) as exc:
        load_trace(path, "azure")
    msg = str(exc.value)
    assert "az_ts.csv:3: TIMESTAMP is not a valid timestamp" in msg
    assert "2023-11-16 25:99:00.0000000" in msg


def test_azure_time_going_back_and_bad_tokens(tmp_path):
    text = AZURE_HEADER + "2023-11-16 18:17:03.9799600,10,5\n2023-11-16 18:17:03.9799599,10,5\n"
    path = write(tmp_path, "az_back.csv", text)
    with pytest.raises(TraceError, match="az_back.csv:3: TIMESTAMP goes back in time") as exc:
        load_trace(path)
    assert "18:17:03.9799599" in str(exc.value)
    text = AZURE_HEADER + "2023-11-16 18:17:03.9799600,10,5\n2023-11-16 18:17:04.0000000,0,5\n"
    path = write(tmp_path, "az_zero.csv", text)
    with pytest.raises(TraceError, match="az_zero.csv:3: ContextTokens must be >= 1, got 0"):
        load_trace(path)


def test_azure_sub_microsecond_resolution(tmp_path):
    text = AZURE_HEADER + "2023-11-16 18:17:03.9799600,10,5\n2023-11-16 18:17:03.9799601,10,5\n"
    df = load_trace(write(tmp_path, "az_100ns.csv", text))
    assert df["arrival_s"].tolist() == [0.0, pytest.approx(1e-7, abs=1e-12)]


def mooncake_line(ts, inp, out, hashes=(0,)):
    return json.dumps({"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": list(hashes)})


def test_mooncake_bad_rows(tmp_path):
    lines = [mooncake_line(0, 100, 5), mooncake_line(10, 100, 0)]
    path = write(tmp_path, "mc.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(TraceError, match="mc.jsonl:2: output_length must be >= 1, got 0"):
        load_trace(path)
    lines = [mooncake_line(0, 100, 5), mooncake_line(10, 100, 5), mooncake_line(5, 100, 5)]
    path = write(tmp_path, "mc_back.jsonl", "\n".join(lines))
    with pytest.raises(TraceError, match="mc_back.jsonl:3: timestamp goes back in time: got 5 after 10"):
        load_trace(path)
    lines = [mooncake_line(0, 100, 5), '{"timestamp": 3, "input_length": "many", "output_length": 1}']
    path = write(tmp_path, "mc_nan.jsonl", "\n".join(lines))
    with pytest.raises(TraceError, match="mc_nan.jsonl:2: input_length must be an integer, got 'many'"):
        load_trace(path)


def test_jsonl_invalid_json_line(tmp_path):
    lines = [mooncake_line(0, 100, 5), "", mooncake_line(1, 100, 5), '{"timestamp": 2, "input_len']
    path = write(tmp_path, "broken.jsonl", "\n".join(lines))
    with pytest.raises(TraceError, match="broken.jsonl:4: invalid JSON") as exc:
        load_trace(path)
    assert '"timestamp": 2' in str(exc.value)


def test_generic_jsonl(tmp_path):
    rows = [{"arrival_s": 1.5, "prompt_tokens": 3, "output_tokens": 2}, {"arrival_s": 2.0, "prompt_tokens": 4, "output_tokens": 1}]
    path = write(tmp_path, "gen.jsonl", "\n".join(json.dumps(r) for r in rows))
    df = load_trace(path)
    assert df["arrival_s"].tolist() == [0.0, 0.5]
    assert df["prompt_tokens"].tolist() == [3, 4]


def test_unknown_format(tmp_path):
    with pytest.raises(TraceError, match="unknown trace format 'parquet'"):
        load_trace(TINY, "parquet")


# ------------------------------------------------------------------------------- trace workloads


def trace_spec(path: Path, **kw) -> TraceWorkload:
    return WORKLOAD.validate_python({"kind": "trace", "path": str(path), **kw})


def test_build_trace_workload_columns_and_ids():
    df = build_workload(trace_spec(Path("tiny/tiny.csv")), TRACES, np.random.SeedSequence(0))
    assert list(df.columns) == ["request_id", "arrival_s", "prompt_tokens", "output_tokens"]
    assert df["request_id"].tolist() == list(range(40))
    assert df["request_id"].dtype == np.int64
    pd.testing.assert_frame_equal(df.drop(columns="request_id"), load_trace(TINY))


def test_rate_scale_halves_the_span():
    base = build_workload(trace_spec(AZURE_CONV), REPO, np.random.SeedSequence(0))
    fast = build_workload(trace_spec(AZURE_CONV, rate_scale=2.0), REPO, np.random.SeedSequence(0))
    assert len(fast) == len(base) == 19_366
    assert fast["arrival_s"].iloc[-1] == base["arrival_s"].iloc[-1] / 2
    np.testing.assert_array_equal(fast["arrival_s"].to_numpy(), base["arrival_s"].to_numpy() / 2)
    np.testing.assert_array_equal(fast["prompt_tokens"].to_numpy(), base["prompt_tokens"].to_numpy())


def test_window_selects_and_rebases_to_window_start():
    full = load_trace(TINY)
    spec = trace_spec(TINY, window_start_s=1.1, window_duration_s=2.0)
    df = build_workload(spec, REPO, np.random.SeedSequence(0))
    expected = full[(full["arrival_s"] >= 1.1) & (full["arrival_s"] < 3.1)]
    assert len(df) == len(expected) == 12
    np.testing.assert_allclose(df["arrival_s"], expected["arrival_s"].to_numpy() - 1.1, rtol=0, atol=1e-12)
    assert df["arrival_s"].iloc[0] == pytest.approx(0.1)  # first arrival keeps its offset from the start
    assert df["request_id"].tolist() == list(range(12))
    assert df["prompt_tokens"].tolist() == expected["prompt_tokens"].tolist()


def test_window_on_original_axis_then_rate_scale_then_max_requests():
    spec = trace_spec(AZURE_CONV, window_start_s=600, window_duration_s=300, rate_scale=4.0, max_requests=50)
    df = build_workload(spec, REPO, np.random.SeedSequence(0))
    full = load_trace(AZURE_CONV)
    expected = full[(full["arrival_s"] >= 600) & (full["arrival_s"] < 900)].head(50)
    assert len(df) == 50
    np.testing.assert_allclose(df["arrival_s"], (expected["arrival_s"].to_numpy() - 600) / 4.0, rtol=1e-12)
    assert df["output_tokens"].tolist() == expected["output_tokens"].tolist()
    unlimited = build_workload(trace_spec(AZURE_CONV, window_start_s=600, window_duration_s=300), REPO, np.random.SeedSequence(0))
    assert (unlimited["arrival_s"] < 300).all() and len(unlimited) > 50


def test_max_requests_keeps_the_first():
    df = build_workload(trace_spec(MOONCAKE_CONV, max_requests=7), REPO, np.random.SeedSequence(0))
    assert len(df) == 7
    assert "hash_ids" in df.columns
    assert df.loc[0, "hash_ids"] == list(range(14))


def test_empty_window_is_a_config_error():
    with pytest.raises(ConfigError, match="holds no requests"):
        build_workload(trace_spec(TINY, window_start_s=100.0), REPO, np.random.SeedSequence(0))


def test_missing_trace_in_workload_names_resolved_path(tmp_path):
    with pytest.raises(TraceError, match="missing.csv"):
        build_workload(trace_spec(Path("missing.csv")), tmp_path, np.random.SeedSequence(0))


# --------------------------------------------------------------------------------- synthetic


def test_poisson_mean_rate_within_four_sigma():
    rate_rps, n = 7.0, 200_000
    t = poisson_arrivals_s(rate_rps, np.random.default_rng(1), n=n)
    assert t.shape == (n,) and t.dtype == np.float64
    assert t[0] > 0 and np.all(np.diff(t) >= 0)
    mean_gap_s = t[-1] / n
    se = (1 / rate_rps) / math.sqrt(n)  # exponential: std = mean
    assert abs(mean_gap_s - 1 / rate_rps) < 4 * se
    gaps = np.diff(t, prepend=0.0)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=4 * math.sqrt(2.0 / n) + 4 / math.sqrt(n))


def test_poisson_duration_count_within_four_sigma():
    rate_rps, duration_s = 50.0, 2_000.0
    t = poisson_arrivals_s(rate_rps, np.random.default_rng(2), duration_s=duration_s)
    expected = rate_rps * duration_s
    assert abs(len(t) - expected) < 4 * math.sqrt(expected)
    assert (t < duration_s).all() and t[0] > 0


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_rate_and_cv_within_four_sigma(cv):
    rate_rps, n = 3.0, 200_000
    t = gamma_arrivals_s(rate_rps, cv, np.random.default_rng(3), n=n)
    gaps = np.diff(t, prepend=0.0)
    assert abs(gaps.mean() - 1 / rate_rps) < 4 * cv * (1 / rate_rps) / math.sqrt(n)
    # Delta method: Var(s^2) ~ sigma^4 (2 + 6/k) / n for Gamma(k); relative se of CV combines it with the
    # relative se of the mean (covariance ignored, which only widens the bound).
    shape = 1 / cv**2
    rel_se = math.sqrt((2 + 6 / shape) / (4 * n) + cv**2 / n)
    assert abs(gaps.std() / gaps.mean() - cv) < 4 * rel_se * cv


def test_gamma_duration_mode_bursty_count():
    t = gamma_arrivals_s(10.0, 3.0, np.random.default_rng(4), duration_s=500.0)
    # Renewal CLT: count variance ~ rate * duration * cv^2.
    assert abs(len(t) - 5_000) < 4 * math.sqrt(5_000 * 9.0)
    assert (t < 500.0).all()


@pytest.mark.parametrize("fn", [poisson_arrivals_s, lambda r, rng, **kw: gamma_arrivals_s(r, 1.5, rng, **kw)])
def test_arrivals_need_exactly_one_stop(fn):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="exactly one"):
        fn(1.0, rng)
    with pytest.raises(ValueError, match="exactly one"):
        fn(1.0, rng, n=3, duration_s=1.0)
    with pytest.raises(ValueError, match="rate_rps"):
        fn(0.0, rng, n=3)


def test_arrivals_use_only_the_passed_generator():
    np.random.seed(123)
    a = poisson_arrivals_s(2.0, np.random.default_rng(9), n=100)
    np.random.seed(456)
    b = poisson_arrivals_s(2.0, np.random.default_rng(9), n=100)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- synthetic workloads


def synthetic_spec(kind: str = "poisson", **kw):
    base = {"kind": kind, "rate_rps": 5.0, "num_requests": 500, "lengths": {"kind": "trace", "path": "tiny/tiny.csv"}}
    if kind == "gamma":
        base["cv"] = 2.0
    base.update(kw)
    return WORKLOAD.validate_python(base)


@pytest.mark.parametrize("kind", ["poisson", "gamma"])
def test_synthetic_workload_is_deterministic(kind):
    spec = synthetic_spec(kind)
    ss = np.random.SeedSequence(2024)
    a = build_workload(spec, TRACES, ss)
    b = build_workload(spec, TRACES, ss)  # same object again: not mutated
    c = build_workload(spec, TRACES, np.random.SeedSequence(2024))
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    d = build_workload(spec, TRACES, np.random.SeedSequence(2025))
    assert not np.array_equal(a["arrival_s"].to_numpy(), d["arrival_s"].to_numpy())
    assert not np.array_equal(a["prompt_tokens"].to_numpy(), d["prompt_tokens"].to_numpy())


def test_synthetic_workload_frame():
    df = build_workload(synthetic_spec(), TRACES, np.random.SeedSequence(7))
    assert list(df.columns) == ["request_id", "arrival_s", "prompt_tokens", "output_tokens"]
    assert df["request_id"].tolist() == list(range(500))
    assert df["arrival_s"].iloc[0] > 0 and np.all(np.diff(df["arrival_s"]) >= 0)
    tiny = load_trace(TINY)
    pairs = set(zip(tiny["prompt_tokens"], tiny["output_tokens"]))
    sampled = set(zip(df["prompt_tokens"], df["output_tokens"]))
    assert sampled <= pairs  # sampled jointly: every pair exists in the trace
    assert len(sampled) > 30  # with replacement over 500 draws, almost every pair appears


def test_synthetic_fixed_lengths_and_duration():
    spec = synthetic_spec(
        num_requests=None, duration_s=100.0, lengths={"kind": "fixed", "prompt_tokens": 128, "output_tokens": 16}
    )
    df = build_workload(spec, Path("/nonexistent"), np.random.SeedSequence(1))
    assert (df["prompt_tokens"] == 128).all() and (df["output_tokens"] == 16).all()
    assert df["prompt_tokens"].dtype == np.int64
    assert (df["arrival_s"] < 100.0).all()
    assert abs(len(df) - 500) < 4 * math.sqrt(500)


def test_lengths_and_arrivals_are_independent_streams():
    fixed = synthetic_spec(lengths={"kind": "fixed", "prompt_tokens": 1, "output_tokens": 1})
    sampled = synthetic_spec()
    a = build_workload(fixed, TRACES, np.random.SeedSequence(3))
    b = build_workload(sampled, TRACES, np.random.SeedSequence(3))
    np.testing.assert_array_equal(a["arrival_s"].to_numpy(), b["arrival_s"].to_numpy())


# ------------------------------------------------------------------------------------------ config


def test_config_discriminates_on_kind_and_defaults():
    spec = WORKLOAD.validate_python({"kind": "trace", "path": "x.csv"})
    assert isinstance(spec, TraceWorkload)
    assert (spec.format, spec.rate_scale, spec.window_start_s, spec.window_duration_s, spec.max_requests) == (
        "auto", 1.0, 0.0, None, None
    )
    gamma = synthetic_spec("gamma")
    assert isinstance(gamma, GammaWorkload) and isinstance(gamma.lengths, TraceLengths)
    poisson = synthetic_spec(lengths={"kind": "fixed", "prompt_tokens": 2, "output_tokens": 3})
    assert isinstance(poisson, PoissonWorkload) and isinstance(poisson.lengths, FixedLengths)


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "trace", "path": "x.csv", "rate_scale": 0},
        {"kind": "trace", "path": "x.csv", "window_start_s": -1},
        {"kind": "trace", "path": "x.csv", "window_duration_s": 0},
        {"kind": "trace", "path": "x.csv", "max_requests": 0},
        {"kind": "trace", "path": "x.csv", "format": "parquet"},
        {"kind": "trace", "path": "x.csv", "typo": 1},
        {"kind": "poisson", "rate_rps": 1.0, "lengths": {"kind": "fixed", "prompt_tokens": 1, "output_tokens": 1}},
        {
            "kind": "poisson", "rate_rps": 1.0, "duration_s": 5, "num_requests": 5,
            "lengths": {"kind": "fixed", "prompt_tokens": 1, "output_tokens": 1},
        },
        {"kind": "poisson", "rate_rps": 0, "num_requests": 5, "lengths": {"kind": "fixed", "prompt_tokens": 1, "output_tokens": 1}},
        {"kind": "gamma", "rate_rps": 1, "num_requests": 5, "lengths": {"kind": "fixed", "prompt_tokens": 1, "output_tokens": 1}},
        {"kind": "gamma", "rate_rps": 1, "cv": 0, "num_requests": 5, "lengths": {"kind": "fixed", "prompt_tokens": 1, "output_tokens": 1}},
        {"kind": "poisson", "rate_rps": 1, "num_requests": 5, "lengths": {"kind": "fixed", "prompt_tokens": 0, "output_tokens": 1}},
        {"kind": "closed_loop", "path": "x.csv"},
    ],
)
def test_config_rejects_invalid(data):
    with pytest.raises(ValidationError):
        WORKLOAD.validate_python(data)


def test_config_is_frozen():
    spec = WORKLOAD.validate_python({"kind": "trace", "path": "x.csv"})
    with pytest.raises(ValidationError):
        spec.rate_scale = 2.0  # type: ignore[misc]


# -------------------------------------------------------------------------------------- properties

trace_rows = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False),
        st.integers(min_value=1, max_value=10**7),
        st.integers(min_value=1, max_value=10**6),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=trace_rows, start_s=st.floats(min_value=0.0, max_value=1e6, allow_nan=False))
def test_valid_csv_traces_round_trip_exactly(tmp_path, rows, start_s):
    arrival = start_s + np.cumsum([0.0] + [gap for gap, _, _ in rows[1:]])
    frame = pd.DataFrame(
        {
            "arrival_s": arrival.astype(np.float64),
            "prompt_tokens": np.array([p for _, p, _ in rows], dtype=np.int64),
            "output_tokens": np.array([o for _, _, o in rows], dtype=np.int64),
        }
    )
    path = tmp_path / "prop.csv"
    frame.to_csv(path, index=False)
    loaded = load_trace(path)
    expected = frame.assign(arrival_s=frame["arrival_s"] - frame["arrival_s"].iloc[0])
    pd.testing.assert_frame_equal(loaded, expected, check_exact=True)
    jsonl = tmp_path / "prop.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")))
    pd.testing.assert_frame_equal(load_trace(jsonl), expected, check_exact=True)


def test_row_with_more_fields_than_header(tmp_path):
    path = write(tmp_path, "wide.csv", CSV_HEADER + "0,1,1,9\n")
    with pytest.raises(TraceError, match="wide.csv:2: the row has more fields than the header"):
        load_trace(path)
    path = write(tmp_path, "wide2.csv", CSV_HEADER + "0,1,1\n1,1,1,9\n")
    with pytest.raises(TraceError, match="wide2.csv: cannot parse CSV.*line 3"):
        load_trace(path)


def test_streams_are_the_documented_children_of_the_seed_sequence():
    df = build_workload(synthetic_spec(), TRACES, np.random.SeedSequence(11))
    arrivals_ss, lengths_ss = np.random.SeedSequence(11).spawn(2)
    expected_t = poisson_arrivals_s(5.0, np.random.default_rng(arrivals_ss), n=500)
    np.testing.assert_array_equal(df["arrival_s"].to_numpy(), expected_t)
    tiny = load_trace(TINY)
    idx = np.random.default_rng(lengths_ss).integers(0, len(tiny), size=500)
    np.testing.assert_array_equal(df["prompt_tokens"].to_numpy(), tiny["prompt_tokens"].to_numpy()[idx])
