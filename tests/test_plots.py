"""Plots and report rendered from a synthetic, schema-correct run directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pdsim.errors import PdsimError
from pdsim.plots import (
    cost_vs_goodput,
    deployment_colors,
    ecdf,
    latency_cdf,
    load_run_dir,
    render_run_dir,
    slo_attainment_bars,
    throughput_cost_bars,
)

DEPLOYMENTS = ("colo-4xH100", "disagg-2p2d-H100")
WORKLOADS = ("chat", "summarize")
SLO = {"ttft_s": 0.25, "tpot_s": 0.05, "percentile": 90, "attainment_target": 0.9}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _requests(rng: np.random.Generator, n: int = 400) -> pd.DataFrame:
    frames = []
    for d_i, deployment in enumerate(DEPLOYMENTS):
        for w_i, workload in enumerate(WORKLOADS):
            arrival = np.sort(rng.uniform(0.0, 60.0, n))
            prompt = rng.integers(50, 2000, n)
            output = rng.integers(1, 400, n)
            output[:20] = 1  # 1-token outputs: TPOT undefined
            ttft = rng.lognormal(np.log(0.08 + 0.05 * d_i), 1.2, n)  # spans > 2 decades
            tpot = np.where(output > 1, rng.lognormal(np.log(0.02 + 0.01 * w_i), 0.3, n), np.nan)
            e2e = ttft + np.nan_to_num(tpot) * (output - 1)
            status = np.full(n, "completed", dtype=object)
            reason = np.full(n, "", dtype=object)
            if deployment == DEPLOYMENTS[1] and workload == WORKLOADS[1]:
                status[-30:] = "rejected"
                reason[-30:] = "kv_capacity"
            done = status == "completed"
            disagg = deployment.startswith("disagg")
            frames.append(
                pd.DataFrame(
                    {
                        "deployment": deployment,
                        "workload": workload,
                        "request_id": np.arange(n),
                        "arrival_s": arrival,
                        "prompt_tokens": prompt,
                        "output_tokens": output,
                        "status": status,
                        "reject_reason": reason,
                        "first_token_s": np.where(done, arrival + ttft, np.nan),
                        "finish_s": np.where(done, arrival + e2e, np.nan),
                        "ttft_s": np.where(done, ttft, np.nan),
                        "tpot_s": np.where(done, tpot, np.nan),
                        "e2e_s": np.where(done, e2e, np.nan),
                        "queue_s": np.where(done, ttft * 0.3, np.nan),
                        "kv_transfer_s": np.where(done & disagg, 0.004, np.nan),
                        "prefill_instance": "p0",
                        "decode_instance": "d0" if disagg else "p0",
                        "preemptions": 0,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def _summary(requests: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (deployment, workload), g in requests.groupby(["deployment", "workload"], sort=True):
        done = g[g["status"] == "completed"]
        good = done[(done["ttft_s"] <= SLO["ttft_s"]) & ~(done["tpot_s"] > SLO["tpot_s"])]
        duration = float(g["arrival_s"].max())
        gpus = 4
        usd_h = 4 * (3.0 if deployment.startswith("colo") else 3.5)
        tok_s = float(done["output_tokens"].sum()) / duration
        row = {"deployment": deployment, "workload": workload,
               "kind": "disaggregated" if deployment.startswith("disagg") else "colocated",
               "requests": len(g), "completed": len(done), "rejected": len(g) - len(done)}  # fmt: skip
        for metric in ("ttft", "tpot", "e2e"):
            for p in (50, 90, 99):
                row[f"{metric}_p{p}_s"] = float(np.nanpercentile(done[f"{metric}_s"], p))
        row |= {
            "output_tokens_per_s": tok_s,
            "requests_per_s": len(done) / duration,
            "slo_attainment": len(good) / len(g),
            "goodput_rps": len(good) / duration,
            "gpus": gpus,
            "usd_per_hour": usd_h,
            "usd_per_million_output_tokens": usd_h / (tok_s * 3600.0) * 1e6,
        }
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    requests = _requests(rng)
    d = tmp_path / "run"
    d.mkdir()
    requests.to_parquet(d / "requests.parquet", index=False)
    _summary(requests).to_csv(d / "summary.csv", index=False)
    slo_yaml = "\n".join(f"  {k}: {v}" for k, v in SLO.items())
    (d / "config.resolved.yaml").write_text(f"name: splitwise-mini\nseed: 7\nslo:\n{slo_yaml}\n")
    (d / "manifest.json").write_text(json.dumps({"pdsim_version": "0.1.0", "seed": 7, "hashes": {}}))
    return d


def _expected_pngs() -> set[str]:
    names = {"cost_vs_goodput.png", "slo_attainment.png", "throughput_cost.png"}
    names |= {f"{m}_cdf_{w}.png" for m in ("ttft", "tpot", "e2e") for w in WORKLOADS}
    return names


def test_render_run_dir_writes_every_png_and_report(run_dir: Path) -> None:
    written = render_run_dir(run_dir)

    plots = run_dir / "plots"
    assert {p.name for p in plots.glob("*.png")} == _expected_pngs()
    assert {p.name for p in written} == _expected_pngs() | {"report.md"}
    for png in plots.glob("*.png"):
        blob = png.read_bytes()
        assert blob[:8] == PNG_MAGIC, png
        assert len(blob) > 5_000, png

    report = (run_dir / "report.md").read_text()
    assert "splitwise-mini" in report
    for deployment in DEPLOYMENTS:
        assert deployment in report
    assert "TTFT <= 250 ms" in report and "TPOT <= 50 ms" in report
    assert "P90" in report and "90%" in report
    for name in _expected_pngs():
        assert f"plots/{name}" in report
    assert report.count("Best goodput per $/h") == len(WORKLOADS)
    assert report.count("Lowest cost per 1M output tokens") == len(WORKLOADS)
    assert "rejected 30 of 400 requests" in report


def test_report_comparison_matches_the_summary(run_dir: Path) -> None:
    render_run_dir(run_dir)
    summary = pd.read_csv(run_dir / "summary.csv")
    report = (run_dir / "report.md").read_text()
    for workload in WORKLOADS:
        rows = summary[summary["workload"] == workload]
        best = rows.loc[(rows["goodput_rps"] / rows["usd_per_hour"]).idxmax(), "deployment"]
        cheapest = rows.loc[rows["usd_per_million_output_tokens"].idxmin(), "deployment"]
        section = report.split(f"## Workload `{workload}`")[1].split("## ")[0]
        assert f"Best goodput per $/h: **{best}**" in section
        assert f"Lowest cost per 1M output tokens: **{cheapest}**" in section


def test_render_reads_csv_when_parquet_absent(run_dir: Path) -> None:
    pd.read_parquet(run_dir / "requests.parquet").to_csv(run_dir / "requests.csv", index=False)
    (run_dir / "requests.parquet").unlink()
    data = load_run_dir(run_dir)
    assert set(data.requests["deployment"]) == set(DEPLOYMENTS)
    assert data.requests["tpot_s"].isna().any()
    assert data.slo.ttft_s == 0.25 and data.slo.attainment_target == 0.9
    assert len(render_run_dir(run_dir)) == len(_expected_pngs()) + 1


@pytest.mark.parametrize("missing", ["summary.csv", "config.resolved.yaml", "manifest.json"])
def test_missing_file_error_names_directory_and_file(run_dir: Path, missing: str) -> None:
    (run_dir / missing).unlink()
    with pytest.raises(PdsimError, match=missing.replace(".", r"\.")) as info:
        render_run_dir(run_dir)
    assert str(run_dir) in str(info.value)


def test_missing_requests_error_names_both_formats(run_dir: Path) -> None:
    (run_dir / "requests.parquet").unlink()
    with pytest.raises(PdsimError, match=r"requests\.parquet or requests\.csv"):
        render_run_dir(run_dir)


def test_missing_slo_key_is_reported(run_dir: Path) -> None:
    (run_dir / "config.resolved.yaml").write_text("slo:\n  ttft_s: 0.25\n  percentile: 90\n")
    with pytest.raises(PdsimError, match=r"config\.resolved\.yaml: slo\.tpot_s is missing"):
        render_run_dir(run_dir)


def test_latency_cdf_one_line_per_deployment(run_dir: Path) -> None:
    requests = pd.read_parquet(run_dir / "requests.parquet")
    fig = latency_cdf(requests, "ttft_s", workload="chat", slo_s=0.25, percentile=90)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    lines = [ln for ln in ax.get_lines() if ln.get_label() in DEPLOYMENTS]
    assert sorted(ln.get_label() for ln in lines) == sorted(DEPLOYMENTS)
    assert ax.get_xscale() == "log"  # lognormal sigma 1.2 spans > 2 decades
    slo_lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("SLO")]
    assert len(slo_lines) == 1 and slo_lines[0].get_xdata()[0] == pytest.approx(250.0)  # ms
    assert "ms" in ax.get_xlabel()
    colors = deployment_colors(DEPLOYMENTS)
    for ln in lines:
        assert ln.get_color() == colors[ln.get_label()]
        assert ln.get_ydata()[-1] == pytest.approx(1.0)


def test_latency_cdf_skips_rejected_and_nan_and_keeps_linear_scale(run_dir: Path) -> None:
    requests = pd.read_parquet(run_dir / "requests.parquet")
    fig = latency_cdf(requests, "tpot_s", workload="summarize", slo_s=None)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == set(DEPLOYMENTS)  # no SLO line when slo_s is None
    sel = requests[(requests["workload"] == "summarize") & (requests["deployment"] == DEPLOYMENTS[1])]
    finite = sel.loc[sel["status"] == "completed", "tpot_s"].dropna()
    assert len(finite) < len(sel)  # the fixture has both rejected and NaN-TPOT rows
    x = lines[DEPLOYMENTS[1]].get_xdata()
    assert np.isfinite(x).all()
    assert x.max() == pytest.approx(finite.max() * 1e3)
    assert ax.get_xscale() == "linear"


def test_latency_cdf_rejects_unknown_metric(run_dir: Path) -> None:
    requests = pd.read_parquet(run_dir / "requests.parquet")
    with pytest.raises(ValueError, match="queue_s"):
        latency_cdf(requests, "queue_s", workload="chat", slo_s=None)


def test_cost_vs_goodput_one_point_per_row(run_dir: Path) -> None:
    summary = pd.read_csv(run_dir / "summary.csv")
    fig = cost_vs_goodput(summary)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
        assert points == len(summary)
        assert {t.get_text() for t in ax.texts} == set(DEPLOYMENTS)


def test_cost_vs_goodput_into_given_axes(run_dir: Path) -> None:
    summary = pd.read_csv(run_dir / "summary.csv")
    host = Figure()
    ax = host.add_subplot()
    assert cost_vs_goodput(summary, ax=ax) is host
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(summary)


def test_slo_attainment_bars_one_bar_per_row_and_target(run_dir: Path) -> None:
    summary = pd.read_csv(run_dir / "summary.csv")
    fig = slo_attainment_bars(summary, target=0.9)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == len(summary)
    heights = sorted(b.get_height() for b in bars)
    assert heights == pytest.approx(sorted(summary["slo_attainment"] * 100))
    targets = [ln for ln in ax.get_lines() if ln.get_label().startswith("target")]
    assert len(targets) == 1 and targets[0].get_ydata()[0] == pytest.approx(90.0)


def test_throughput_cost_bars_two_panels(run_dir: Path) -> None:
    summary = pd.read_csv(run_dir / "summary.csv")
    fig = throughput_cost_bars(summary)
    ax_tput, ax_cost = fig.axes
    assert len(ax_tput.patches) == len(summary) == len(ax_cost.patches)
    assert sorted(p.get_height() for p in ax_cost.patches) == pytest.approx(
        sorted(summary["usd_per_million_output_tokens"])
    )
    colors = deployment_colors(DEPLOYMENTS)
    assert {to_hex(p.get_facecolor()) for p in ax_tput.patches} == set(colors.values())


def test_deployment_colors_are_deterministic() -> None:
    a = deployment_colors(["b", "a", "c", "a"])
    b = deployment_colors(["c", "b", "a"])
    assert a == b and list(a) == ["a", "b", "c"]
    assert len(set(a.values())) == 3


@pytest.mark.parametrize("n", [100_001, 100_000])
def test_ecdf_downsampling_keeps_min_max_and_median(n: int) -> None:
    values = np.random.default_rng(3).lognormal(0.0, 2.0, n)
    values[5] = np.nan
    finite = values[np.isfinite(values)]
    x, y = ecdf(values, max_points=2000)
    assert len(x) <= 2000 + 10
    assert x[0] == finite.min() and x[-1] == finite.max()
    assert y[-1] == 1.0 and np.all(np.diff(x) >= 0) and np.all(np.diff(y) > 0)
    m = len(finite)
    # Both order statistics around the median rank are kept, with their exact ECDF heights.
    sorted_all = np.sort(finite)
    lo, hi = (m - 1) // 2, m // 2
    for rank in (lo, hi):
        k = np.flatnonzero(y == (rank + 1) / m)
        assert len(k) == 1 and x[k[0]] == sorted_all[rank]
    assert np.median(finite) == (x[y == (lo + 1) / m][0] + x[y == (hi + 1) / m][0]) / 2
    if m % 2 == 1:
        assert np.median(finite) in x
    for q in (0.9, 0.99):
        assert np.quantile(finite, q) >= x[0]
        pos = q * (m - 1)
        assert sorted_all[int(np.floor(pos))] in x and sorted_all[int(np.ceil(pos))] in x


def test_ecdf_small_input_is_exact() -> None:
    x, y = ecdf([3.0, 1.0, np.nan, 2.0])
    assert list(x) == [1.0, 2.0, 3.0]
    assert list(y) == pytest.approx([1 / 3, 2 / 3, 1.0])
    ex, ey = ecdf([np.nan])
    assert ex.size == 0 and ey.size == 0
