"""Specification of ``pdsim profile`` (profile_tools/): the torch micro-benchmarks that write a measured
profile in format v1.

The quick CPU run goes through the real CLI once (module fixture) and must produce a profile that
``load_profile`` reads and every table of which validates; latencies grow with the work; the metadata
says measured and carries the command. Bad input exits with code 2 and one message, no traceback.
Shapes and grids are checked against hand-computed Megatron/vLLM shard shapes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from pdsim.cli import app  # noqa: E402
from pdsim.errors import ConfigError, ProfileError  # noqa: E402
from pdsim.profiles.format import load_profile  # noqa: E402
from profile_tools.device import match_gpu_name, parse_device  # noqa: E402
from profile_tools.plan import (  # noqa: E402
    DENSE_GEMM_M,
    FULL_TIMING,
    TABLE_ORDER,
    TimingPolicy,
    build_plan,
    gemm_shapes_for,
    resolve_model,
    tiny_model_path,
    token_grid,
)
from profile_tools.timing import Timer, summarize  # noqa: E402

runner = CliRunner()
GPU_CATALOG = {"H100-SXM", "H100-PCIe", "H200-SXM", "A100-80GB-SXM", "A100-40GB-SXM", "L4", "L40S", "A10G", "MI300X",
               "MI325X", "MI250X", "MI210", "B200", "GB200", "B300"}


@pytest.fixture(scope="module")
def quick_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "cpu-quick"
    result = runner.invoke(app, ["profile", "--device", "cpu", "--quick", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    return out, result


def assert_user_error(result, *fragments: str) -> None:
    out = result.output
    assert result.exit_code == 2, (result.exit_code, out, result.exception)
    assert "Traceback" not in out
    assert out.strip().startswith("error:"), out
    for f in fragments:
        assert f in out, (f, out)


# ---- the quick CPU run through the CLI ---------------------------------------------------------

def test_quick_cpu_run_writes_every_table_and_each_validates(quick_profile):
    out, _ = quick_profile
    profile = load_profile(out)
    assert set(profile.meta.tables) == set(TABLE_ORDER)  # every table pdsim profile measures (not moe)
    for table in TABLE_ORDER:
        df = profile.table(table)  # validates columns, positive keys, finite latencies, no duplicates
        assert len(df) > 0
        assert (df["latency_p10_s"] <= df["latency_s"]).all() and (df["latency_s"] <= df["latency_p90_s"]).all()
        assert (df["repeats"] >= 3).all()


def test_quick_cpu_run_metadata_says_measured_and_how(quick_profile):
    out, _ = quick_profile
    meta = load_profile(out).meta
    assert meta.source_kind == "measured"
    assert meta.device_type == "cpu" and meta.gpu is None
    assert meta.mode == "quick"
    assert meta.command.startswith("pdsim profile --device cpu") and "--quick" in meta.command
    assert meta.num_threads == torch.get_num_threads()
    assert meta.software.torch == torch.__version__
    assert meta.memory_bytes and meta.memory_bytes > 0
    assert meta.name == "cpu-quick"
    assert "gloo" in meta.notes and "flushed" in meta.notes


def test_quick_cpu_run_measures_the_tiny_model_shapes(quick_profile):
    out, _ = quick_profile
    profile = load_profile(out)
    gemm = profile.table("gemm")
    shapes = set(zip(gemm["n"], gemm["k"]))
    # tiny Llama: hidden 512, 8 heads / 2 KV heads of 64, intermediate 1536, vocab 32000 (TP 1)
    assert shapes == {(768, 512), (512, 512), (3072, 512), (512, 1536), (32000, 512)}
    assert set(gemm["dtype"]) == {"fp32"}
    prefill = profile.table("attention_prefill")
    assert set(zip(prefill["num_heads"], prefill["num_kv_heads"], prefill["head_dim"])) == {(8, 2, 64)}
    ew = profile.table("elementwise")
    widths = dict(zip(ew["op"], ew["width"]))
    assert widths == {"rmsnorm": 512, "silu_mul": 1536, "rope": 640, "add": 512, "embedding": 512}
    coll = profile.table("collective")
    assert set(coll["backend"]) == {"gloo"} and set(coll["world_size"]) == {2}
    assert set(coll["op"]) == {"all_reduce", "all_gather", "send_recv"}
    assert set(profile.table("memcpy")["direction"]) == {"d2d"}


def test_latency_grows_with_the_work(quick_profile):
    out, _ = quick_profile
    gemm = load_profile(out).table("gemm").set_index(["n", "k", "m"])["latency_s"]
    # 16x the tokens at large m on the LM head (32000 x 512): compute-bound, far above any noise
    assert gemm.loc[(32000, 512, 1024)] > 4 * gemm.loc[(32000, 512, 64)]
    assert gemm.loc[(3072, 512, 1024)] > gemm.loc[(3072, 512, 64)]


def test_progress_lines_go_to_stderr(quick_profile):
    _, result = quick_profile
    for table in TABLE_ORDER:
        assert f"{table}: " in result.output


# ---- bad input -------------------------------------------------------------------------------

def test_unknown_device_is_one_error_without_traceback(tmp_path):
    assert_user_error(runner.invoke(app, ["profile", "--device", "tpu", "--out", str(tmp_path / "x")]), "tpu")
    assert not (tmp_path / "x").exists()


def test_cuda_requested_without_a_gpu_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a usable GPU
    assert_user_error(runner.invoke(app, ["profile", "--device", "cuda", "--quick", "--out", str(tmp_path / "x")]),
                      "cuda", "is_available")


def test_unknown_model_dtype_and_tp_are_user_errors(tmp_path):
    base = ["profile", "--device", "cpu", "--quick", "--out", str(tmp_path / "x")]
    assert_user_error(runner.invoke(app, [*base, "--models", "No-Such-Model"]), "No-Such-Model", "Llama-3.1-8B")
    assert_user_error(runner.invoke(app, [*base, "--dtypes", "int4"]), "int4")
    assert_user_error(runner.invoke(app, [*base, "--tp", "two"]), "--tp")
    assert_user_error(runner.invoke(app, [*base, "--tables", "gemm,flops"]), "flops")


def test_parse_device():
    assert parse_device("cpu").torch_name == "cpu"
    assert parse_device("cuda").torch_name == "cuda:0"
    assert parse_device("cuda:3").index == 3
    with pytest.raises(ProfileError, match="mps"):
        parse_device("mps")


# ---- shapes and grids (pure) -----------------------------------------------------------------

def test_gemm_shard_shapes_of_llama_3_1_70b_at_tp8():
    spec = resolve_model("Llama-3.1-70B")  # hidden 8192, 64 heads / 8 KV of 128, intermediate 28672, vocab 128256
    shapes = {label.split()[-1]: (n, k) for label, n, k in gemm_shapes_for(spec, 8)}
    assert shapes == {
        "qkv": ((8 + 2 * 1) * 128, 8192),
        "o": (8192, 8 * 128),
        "gate_up": (2 * 28672 // 8, 8192),
        "down": (8192, 28672 // 8),
        "lm_head": (128256 // 8, 8192),
    }


def test_models_resolve_from_catalog_and_config_json():
    tiny = resolve_model(str(tiny_model_path()))
    assert (tiny.name, tiny.hidden_size, tiny.num_kv_heads) == ("pdsim-tiny-llama", 512, 2)
    with pytest.raises(ConfigError, match="unknown model"):
        resolve_model("Llama-9-1T")


def test_gpu_full_plan_covers_16k_tokens_every_tp_and_a_generic_grid():
    models = [resolve_model(m) for m in ("Llama-3.1-8B", "Llama-3.1-70B")]
    plan = build_plan("gpu", "full", models, [1, 2, 4, 8], ["bf16", "fp16", "fp8"])
    assert plan.gemm_m[0] == 1 and plan.gemm_m[-1] == 16384
    assert all(2**i in plan.gemm_m for i in range(15)) and 24 in plan.gemm_m and 12288 in plan.gemm_m
    assert {(h.num_heads, h.num_kv_heads, h.head_dim) for h in plan.heads} >= {(32, 8, 128), (4, 1, 128), (8, 1, 128)}
    assert plan.generic_gemm_shapes and all(s.labels == ("generic",) for s in plan.generic_gemm_shapes)
    model_keys = {(s.n, s.k) for s in plan.gemm_shapes}
    assert not model_keys & {(s.n, s.k) for s in plan.generic_gemm_shapes}  # no key measured twice
    quick = build_plan("gpu", "quick", models, [1, 2, 4, 8], ["bf16"])
    assert len(quick.gemm_m) < len(plan.gemm_m) and not quick.generic_gemm_shapes


def test_token_grid_is_log_spaced_and_capped():
    assert token_grid(16, "full") == (1, 2, 3, 4, 6, 8, 12, 16)
    assert token_grid(1000, "quick") == (1, 4, 16, 64, 256, 1000)


def test_cpu_full_plan_matches_the_committed_profile_coverage():
    plan = build_plan("cpu", "full", [resolve_model(str(tiny_model_path()))], [1], ["fp32"])
    assert plan.gemm_m[0] == 1 and plan.gemm_m[-1] >= 4096
    assert plan.gemm_m[:DENSE_GEMM_M] == tuple(range(1, DENSE_GEMM_M + 1))  # every decode batch size
    assert set(plan.gemm_m) > set(token_grid(4096, "full")) and plan.elementwise_tokens == token_grid(4096, "full")
    assert build_plan("cpu", "quick", [resolve_model(str(tiny_model_path()))], [1], ["fp32"]).gemm_m == token_grid(1024, "quick")
    assert plan.prefill_batches == (1, 2, 4, 8) and plan.prefill_seq_lens[0] == 16 and plan.prefill_seq_lens[-1] == 2048
    assert plan.decode_batches[-1] == 64 and plan.decode_context_lens == tuple(2**i for i in range(4, 13))


@pytest.mark.parametrize(("reported", "expected"), [
    ("NVIDIA H200", "H200-SXM"),
    ("NVIDIA H100 80GB HBM3", "H100-SXM"),
    ("NVIDIA H100 PCIe", "H100-PCIe"),
    ("NVIDIA H100 NVL", None),
    ("NVIDIA A100-SXM4-80GB", "A100-80GB-SXM"),
    ("NVIDIA A100-SXM4-40GB", "A100-40GB-SXM"),
    ("NVIDIA A100 80GB PCIe", None),
    ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA L40", None),
    ("AMD Instinct MI300X", "MI300X"),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_gpu_names_match_the_catalog_only_when_clear(reported, expected):
    assert match_gpu_name(reported, GPU_CATALOG) == expected


# ---- timing ----------------------------------------------------------------------------------

class _FakeClock:
    kind = "fake"

    def __init__(self, times):
        self.times = list(times)
        self.calls = 0

    def time_calls(self, fn, n, flush):
        out = []
        for _ in range(n):
            fn()
            out.append(self.times[min(self.calls, len(self.times) - 1)])
            self.calls += 1
        return out


def test_repeat_count_adapts_to_the_op_duration():
    policy = TimingPolicy(warmup_calls=1, min_repeats=3, max_repeats=50, min_total_s=0.1, max_attempts=1,
                          contention_wait_budget_s=0)
    assert policy.repeats_for(1.0) == 3
    assert policy.repeats_for(0.01) == 10
    assert policy.repeats_for(1e-6) == 50
    assert FULL_TIMING.min_repeats >= 5


def test_timer_reports_median_and_spread_of_the_timed_calls():
    calls = []
    clock = _FakeClock([0.5] + [0.01 * i for i in range(1, 12)])  # first call is the warm-up estimate
    policy = TimingPolicy(warmup_calls=1, min_repeats=5, max_repeats=11, min_total_s=1.0, max_attempts=1,
                          contention_wait_budget_s=0)
    m = Timer(clock, policy).measure(lambda: calls.append(1))
    assert m.repeats == 5  # estimate 0.5 s -> ceil(1.0 / 0.5) = 2 -> min_repeats
    assert m.latency_s == pytest.approx(0.03)
    assert m.latency_p10_s < m.latency_s < m.latency_p90_s
    assert len(calls) == 6
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.latency_s == 3.0 and s.repeats == 5


def test_out_dir_gets_no_profile_on_error(tmp_path):
    out = tmp_path / "bad"
    result = runner.invoke(app, ["profile", "--device", "cpu", "--quick", "--models", "nope", "--out", str(out)])
    assert result.exit_code == 2
    assert not Path(out, "profile.yaml").exists()


class _FakeMeter:
    """Reports 'other processes busy' for the first ``busy_attempts`` attempts."""

    def __init__(self, busy_attempts):
        self.busy_attempts = busy_attempts
        self.attempts = 0

    def start(self):
        self.attempts += 1
        return self.attempts

    def other_share(self, started):
        return (0.6 if started <= self.busy_attempts else 0.01), 1.0

    def contended(self, share, wall_s):
        return share > 0.1

    def resolves(self, wall_s):
        return True


def test_contended_points_are_measured_again_and_the_quiet_attempt_kept():
    class Clock:
        kind = "host"

        def __init__(self, meter):
            self.meter = meter

        def time_calls(self, fn, n, flush):
            slow = self.meter.attempts <= self.meter.busy_attempts
            return [0.016 if slow else 0.0003] * n

    meter = _FakeMeter(busy_attempts=2)
    sleeps = []
    policy = TimingPolicy(warmup_calls=1, min_repeats=3, max_repeats=5, min_total_s=0.001, max_attempts=5,
                          contention_wait_budget_s=100)
    timer = Timer(Clock(meter), policy, sleep=sleeps.append, meter=meter)
    m = timer.measure(lambda: None)
    assert m.latency_s == pytest.approx(0.0003) and m.other_cpu_util == pytest.approx(0.01)
    assert sleeps == [0.5, 1.0] and timer.remeasured == 1 and timer.still_contended == 0
    # always busy: gives up after max_attempts and counts the point as still contended
    meter = _FakeMeter(busy_attempts=99)
    timer = Timer(Clock(meter), policy, sleep=lambda s: None, meter=meter)
    m = timer.measure(lambda: None)
    assert meter.attempts == 5 and timer.still_contended == 1 and m.other_cpu_util == pytest.approx(0.6)


def test_host_load_meter_only_reports_what_it_can_resolve():
    from profile_tools.timing import HostLoadMeter

    meter = HostLoadMeter()
    meter.hz, meter.cpus = 100, 2
    assert meter.resolves(0.2) and not meter.resolves(0.02)  # 2 jiffies of 10 ms over 2 CPUs
    assert meter.contended(0.3, 1.0) and not meter.contended(0.05, 1.0)
    assert not meter.contended(0.4, 0.02)  # within rounding noise of a 20 ms interval
    assert meter.contended(0.9, 0.02)


def test_time_budget_shares_follow_the_weights_and_pass_unused_time_on():
    from profile_tools.runner import TABLE_BUDGET_WEIGHTS, table_deadline

    tables = ("gemm", "attention_prefill", "memcpy")
    total = sum(TABLE_BUDGET_WEIGHTS[t] for t in tables)
    assert table_deadline(tables, 0, 100.0, None, 100.0) is None
    first = table_deadline(tables, 0, 100.0, 60.0, 100.0)
    assert first == pytest.approx(100.0 + 60.0 * TABLE_BUDGET_WEIGHTS["gemm"] / total)
    # the first table finished early, at t = 110: the 50 s left are shared by the two remaining tables
    second = table_deadline(tables, 1, 100.0, 60.0, 110.0)
    rest = TABLE_BUDGET_WEIGHTS["attention_prefill"] + TABLE_BUDGET_WEIGHTS["memcpy"]
    assert second == pytest.approx(110.0 + 50.0 * TABLE_BUDGET_WEIGHTS["attention_prefill"] / rest)
    # the budget is spent: the last table gets no time
    assert table_deadline(tables, 2, 100.0, 60.0, 170.0) == pytest.approx(170.0)


def test_a_spent_time_budget_skips_points_and_says_so(tmp_path):
    out = tmp_path / "budget"
    result = runner.invoke(app, ["profile", "--device", "cpu", "--quick", "--tables", "gemm,elementwise",
                                 "--time-budget-s", "0.3", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    profile = load_profile(out)
    notes = profile.meta.notes
    assert "time budget spent" in notes and "--time-budget-s 0.3" in profile.meta.command
    full = build_plan("cpu", "quick", [resolve_model(str(tiny_model_path()))], [1], ["fp32"])
    measured = sum(len(profile.table(t)) for t in profile.meta.tables)
    assert 0 < measured < len(full.gemm_m) * len(full.gemm_shapes) + len(full.elementwise_tokens) * len(full.elementwise_cases)


def test_a_bad_time_budget_is_a_user_error(tmp_path):
    result = runner.invoke(app, ["profile", "--device", "cpu", "--quick", "--time-budget-s", "0", "--out", str(tmp_path / "x")])
    assert_user_error(result, "--time-budget-s must be > 0")


def test_the_flush_can_read_instead_of_write(tmp_path):
    out = tmp_path / "read"
    result = runner.invoke(app, ["profile", "--device", "cpu", "--quick", "--tables", "attention_decode",
                                 "--flush", "read", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    profile = load_profile(out)
    assert "flushed before each call by reading (summing)" in profile.meta.notes
    assert "--flush read" in profile.meta.command and len(profile.table("attention_decode")) > 0
    assert_user_error(runner.invoke(app, ["profile", "--device", "cpu", "--quick", "--flush", "evict",
                                          "--out", str(tmp_path / "x")]), "--flush must be one of")


def _fake_cpu_caches(root: Path, caches: dict[int, list[tuple[int, str, str, str]]]) -> None:
    """A sysfs CPU tree: ``{cpu: [(level, type, size, shared_cpu_list), ...]}``."""
    for cpu, entries in caches.items():
        for i, (level, kind, size, shared) in enumerate(entries):
            d = root / f"cpu{cpu}" / "cache" / f"index{i}"
            d.mkdir(parents=True)
            for name, value in (("level", str(level)), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
                (d / name).write_text(value + "\n")


def test_cpu_cache_sizes_add_up_each_instance_once(tmp_path):
    from profile_tools.device import cpu_cache_bytes

    # two cores with private L1d/L1i/L2 and one shared L3
    per_core = lambda c: [(1, "Data", "48K", str(c)), (1, "Instruction", "64K", str(c)), (2, "Unified", "2048K", str(c)),
                          (3, "Unified", "480M", "0-1")]
    _fake_cpu_caches(tmp_path, {0: per_core(0), 1: per_core(1)})
    root = str(tmp_path)
    assert cpu_cache_bytes(2, root) == 4 * 2**20
    assert cpu_cache_bytes(None, root) == 480 * 2**20
    assert cpu_cache_bytes(1, root) == 96 * 2**10  # data caches only
    assert cpu_cache_bytes(4, root) is None
    assert cpu_cache_bytes(None, str(tmp_path / "missing")) is None


def test_the_flush_level_l2_flushes_only_the_per_core_caches_and_is_recorded(tmp_path):
    from profile_tools.device import cpu_cache_bytes, last_level_cache_bytes
    from profile_tools.ops import L2_FLUSH_MIN_BYTES

    out = tmp_path / "l2"
    result = runner.invoke(app, ["profile", "--device", "cpu", "--quick", "--tables", "gemm",
                                 "--flush-level", "l2", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    meta = load_profile(out).meta
    assert meta.cache is not None and meta.cache.flush == "write" and meta.cache.flush_level == "l2"
    assert meta.cache.flush_bytes == max(L2_FLUSH_MIN_BYTES, 2 * (cpu_cache_bytes(2) or 0))
    assert meta.cache.llc_bytes == last_level_cache_bytes()
    assert "--flush-level l2" in meta.command and "per-core caches only" in meta.notes


def test_the_default_flush_level_is_the_llc_and_is_recorded(quick_profile):
    from profile_tools.device import last_level_cache_bytes

    out, _ = quick_profile
    cache = load_profile(out).meta.cache
    llc = last_level_cache_bytes()
    assert cache is not None and cache.flush_level == "llc" and cache.flush_bytes == max(64 * 2**20, 2 * (llc or 0))


def test_a_bad_flush_level_is_a_user_error(tmp_path):
    assert_user_error(runner.invoke(app, ["profile", "--device", "cpu", "--quick", "--flush-level", "l3",
                                          "--out", str(tmp_path / "x")]), "--flush-level must be one of")


def test_the_flush_level_l2_is_refused_on_a_gpu():
    from profile_tools.device import DeviceInfo
    from profile_tools.ops import make_flush

    gpu = DeviceInfo(parse_device("cuda"), "cuda", "NVIDIA", "NVIDIA H200", "H200-SXM", None, 1)
    with pytest.raises(ConfigError, match="a GPU's L2 is its last-level cache"):
        make_flush(torch, gpu, None, "write", "l2")
