"""Latency model interpolated from Splitwise's measured ``perf_model.csv``.

Data: ``gpu_profiles/splitwise_sim/perf_model.csv`` from Mutinifni/splitwise-sim (MIT), commit
8f99e7dc9b407f4ce2488d03dd44c0b8b946dab0: prefill (``prompt_time``) and per-token decode
(``token_time``) times in milliseconds measured on DGX-A100 and DGX-H100 for Llama-2-70B (TP 2/4/8)
and BLOOM-176B (TP 8), each point repeated about five times. Two sweeps exist per (model, GPU, TP):
one prompt of 128..8,192 tokens at batch 1, and batches of 1..64 prompts of 512 tokens; decode times
were taken while generating ``token_size`` = 128 tokens, so their mean context is prompt + 64.

What pdsim builds from it (Patel et al., "Splitwise", ISCA 2024 describe the measurements):

- Prefill: time as a function of the batch's total prompt tokens, the median of the repeats at each
  token count; where both sweeps give the same count (512 x b vs one prompt of 512 b tokens) their
  medians are pooled (median of all repeats). Piecewise-linear interpolation.
- Decode: time as a function of batch size at the reference context (576 tokens per sequence),
  piecewise-linear in batch size, plus a context term ``k x (context_tokens - 576 x batch)`` whose slope
  ``k`` (seconds per KV token read) is the least-squares fit of the batch-1 decode times over context
  lengths 192..8,256. Decode time therefore grows with both batch size and context.
- Mixed batches (prefill and decode in one iteration, colocated instances): the iteration costs at
  least what its token load costs on the prefill curve (prompt tokens + one token per decoding
  sequence) and at least what its decode batch costs: ``max(prefill(P + D), decode(D, ctx))``.

Known flaws of the original simulator and what pdsim does about each:

1. Decode time flat in batch size (splitwise-sim queried the decode curve with the wrong variable):
   here decode is looked up by batch size and context; tests/test_latency.py checks it grows with both.
2. Mixed batches multiplied by an unexplained 1.1: no such factor; the ``max`` rule above is stated
   and a user who wants a correction sets the named ``scale`` field, recorded in the manifest.
3. The power-capped H100 rows (``h100-80gb-pcap``) are synthetic (prefill = H100 x 1.30, decode
   identical to H100): they are never loaded; asking for them is a ``ProfileError``.
4. The Llama-2-70B TP2 rows at batch 64 are broken (prefill of 64 x 512 tokens faster than 16 x 512 on
   both GPUs): those rows are dropped (``EXCLUDED_ROWS``) and the load checks that the prefill curve
   never drops by more than 20 % between neighbouring token counts (noise of a few ms at 128-256
   tokens is kept as measured), so a similar defect elsewhere stops the load with the rows named.

Out-of-range policy: above the largest measured token count or batch size the curve is extrapolated
linearly from its last two points; below the smallest measured prompt (128 tokens) prefill time is
clamped to the smallest measurement. Both are counted in ``stats`` and reported in the run summary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pdsim.core.hashing import sha256_file
from pdsim.errors import ProfileError
from pdsim.latency.base import BatchShape, LookupStats, split_by_layers
from pdsim.latency.interp import Curve
from pdsim.profiles.format import require_columns

REQUIRED_COLUMNS = ("model", "hardware", "prompt_size", "batch_size", "token_size", "prompt_time", "token_time", "tensor_parallel")
SYNTHETIC_HARDWARE = {"h100-80gb-pcap": "power-capped H100 rows are synthetic (H100 prefill x 1.30, decode copied)"}
# (model, tensor_parallel, batch_size) -> reason
EXCLUDED_ROWS = {("llama2-70b", 2, 64): "broken: prefill of 64 x 512 tokens is faster than 16 x 512 (both GPUs)"}
# A prefill curve may dip by measurement noise (H100 TP8: 128 tokens 58.2 ms, 256 tokens 51.7 ms);
# a drop of more than this fraction between neighbouring token counts is a defect, not noise.
MAX_PREFILL_DROP = 0.2
DECODE_TOKENS_GENERATED = 128  # token_size of both sweeps used; mean context = prompt + 64
REFERENCE_PROMPT = 512  # prompt length of the batch sweep

# Catalog names -> the file's keys.
MODEL_KEYS = {"Llama-2-70b-hf": "llama2-70b", "bloom": "bloom-176b"}
GPU_KEYS = {"A100-80GB-SXM": "a100-80gb", "H100-SXM": "h100-80gb"}


def load_splitwise_table(path: Path) -> pd.DataFrame:
    """Read and validate ``perf_model.csv`` (times stay in ms here; converted once in the model).

    Raises:
        ProfileError: missing file or columns, non-numeric or non-positive times.
    """
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{path}: latency table not found")
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # pandas raises several types for malformed CSV
        raise ProfileError(f"{path}: cannot read as CSV: {exc}") from None
    require_columns(df, REQUIRED_COLUMNS, str(path))
    for col in ("prompt_size", "batch_size", "token_size", "prompt_time", "token_time", "tensor_parallel"):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | (values <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ProfileError(f"{path}:{i + 2}: {col} must be a positive number, got {df[col].iloc[i]!r}")
        df[col] = values
    return df


class SplitwiseTableModel:
    """Iteration latency of one (model, GPU, TP) from Splitwise's measurements (see module docstring).

    Args:
        path: the ``perf_model.csv`` file.
        model_key / hardware_key: the file's ``model`` and ``hardware`` values (e.g. ``llama2-70b``,
            ``a100-80gb``).
        tensor_parallel: the file's ``tensor_parallel`` value.
        scale: a named multiplicative correction (default 1.0), recorded in the manifest.
        stage_layers: layers per pipeline stage (default one stage). The measurements are of whole
            TP instances without PP, so a stage's time is the iteration time split in proportion to
            its layers (``split_by_layers``: no embedding / LM-head asymmetry, no hand-off time).

    Raises:
        ProfileError: no rows for the keys, synthetic hardware rows asked for, or a non-monotone
            prefill curve.
    """

    def __init__(self, path: Path, model_key: str, hardware_key: str, tensor_parallel: int, scale: float = 1.0,
                 stage_layers: tuple[int, ...] = (1,)):
        path = Path(path)
        self.stage_layers = tuple(int(n) for n in stage_layers)
        if hardware_key in SYNTHETIC_HARDWARE:
            raise ProfileError(f"{path}: hardware {hardware_key!r} is not usable: {SYNTHETIC_HARDWARE[hardware_key]}")
        df = load_splitwise_table(path)
        sel = df[(df.model == model_key) & (df.hardware == hardware_key) & (df.tensor_parallel == tensor_parallel)]
        if sel.empty:
            avail = sorted({(m, h, int(t)) for m, h, t in zip(df.model, df.hardware, df.tensor_parallel) if h not in SYNTHETIC_HARDWARE})
            raise ProfileError(
                f"{path}: no rows for model={model_key!r} hardware={hardware_key!r} tensor_parallel={tensor_parallel}; "
                f"available (model, hardware, tp): {avail}"
            )
        for (m, tp, bs), _reason in EXCLUDED_ROWS.items():
            if m == model_key and tp == tensor_parallel:
                sel = sel[sel.batch_size != bs]
        sel = sel[sel.token_size == DECODE_TOKENS_GENERATED]
        self.name = f"splitwise_table:{model_key}/{hardware_key}/tp{tensor_parallel}"
        self.path = path
        self.model_key, self.hardware_key, self.tensor_parallel = model_key, hardware_key, tensor_parallel
        self.scale = float(scale)
        self.stats = LookupStats()
        self._sha256 = sha256_file(path)

        # Each sweep on its own must not drop (a pooled median could hide a defect in one sweep).
        single = sel[sel.batch_size == 1].groupby("prompt_size")["prompt_time"].median().sort_index()
        batched = sel[sel.prompt_size == REFERENCE_PROMPT].assign(tokens=REFERENCE_PROMPT * sel.batch_size)
        batched = batched.groupby("tokens")["prompt_time"].median().sort_index()
        for sweep in (single, batched):
            self._check_no_drop(path, sweep, model_key, hardware_key, tensor_parallel)
        # Prefill: total prompt tokens -> seconds (median of all repeats at that count).
        tokens = (sel.prompt_size * sel.batch_size).astype(int)
        prefill = sel.assign(tokens=tokens).groupby("tokens")["prompt_time"].median().sort_index()
        self._check_no_drop(path, prefill, model_key, hardware_key, tensor_parallel)
        ys = prefill.to_numpy() / 1e3
        self._prefill = Curve(tuple(float(v) for v in prefill.index), tuple(float(v) for v in ys))

        # Decode: batch size at the reference context, plus a context slope from the batch-1 sweep.
        batch = sel[sel.prompt_size == REFERENCE_PROMPT].groupby("batch_size")["token_time"].median().sort_index()
        self._decode_batch = Curve(tuple(float(v) for v in batch.index), tuple(float(v) / 1e3 for v in batch.to_numpy()))
        self.reference_context = REFERENCE_PROMPT + DECODE_TOKENS_GENERATED // 2
        ctx = sel[sel.batch_size == 1].groupby("prompt_size")["token_time"].median().sort_index()
        contexts = ctx.index.to_numpy(dtype=float) + DECODE_TOKENS_GENERATED / 2
        if len(contexts) >= 2:
            slope_ms, _ = np.polyfit(contexts, ctx.to_numpy(), 1)
            self.context_slope_s_per_token = max(float(slope_ms) / 1e3, 0.0)
        else:
            self.context_slope_s_per_token = 0.0
        self.max_measured_batch = int(batch.index.max())
        # Cache of decode time at reference context per batch size (hot path).
        self._decode_cache: dict[int, float] = {}

    @staticmethod
    def _check_no_drop(path: Path, curve: pd.Series, model_key: str, hardware_key: str, tp: int) -> None:
        ys = curve.to_numpy(dtype=float)
        drops = ys[1:] < (1.0 - MAX_PREFILL_DROP) * ys[:-1]
        if np.any(drops):
            j = int(np.flatnonzero(drops)[0])
            raise ProfileError(
                f"{path}: prefill time decreases from {curve.index[j]} to {curve.index[j + 1]} prompt tokens "
                f"({ys[j]:.1f} -> {ys[j + 1]:.1f} ms) for {model_key}/{hardware_key}/tp{tp}"
            )

    # -- protocol ----------------------------------------------------------------------------------
    def prefill_s(self, tokens: int) -> float:
        """Prefill time of a batch holding ``tokens`` prompt tokens in total."""
        self.stats.lookups += 1
        return self.scale * self._prefill.at(float(tokens), self.stats, "prefill_tokens", clamp_low=True)

    def decode_s(self, batch_size: int, context_tokens: int) -> float:
        """Pure-decode iteration time (pure: lookups are counted by ``record_decode``)."""
        base = self._decode_cache.get(batch_size)
        if base is None:
            base = self._decode_batch.at(float(batch_size), LookupStats(), "decode_batch", clamp_low=True)
            self._decode_cache[batch_size] = base
        t = base + self.context_slope_s_per_token * (context_tokens - self.reference_context * batch_size)
        return self.scale * max(t, 0.5 * base)

    def record_decode(self, batch_size: int, iterations: int) -> None:
        """Count ``iterations`` executed pure-decode lookups at ``batch_size``."""
        self.stats.lookups += iterations
        if batch_size > self.max_measured_batch:
            self.stats.extrapolated += iterations
            self.stats.by_axis["decode_batch_above"] = self.stats.by_axis.get("decode_batch_above", 0) + iterations

    def iteration_s(self, shape: BatchShape) -> float:
        if shape.prefill_tokens == 0:
            if shape.decode_seqs == 0:
                raise ValueError("empty batch")
            self.record_decode(shape.decode_seqs, 1)
            return self.decode_s(shape.decode_seqs, shape.decode_context_tokens)
        t = self.prefill_s(shape.prefill_tokens + shape.decode_seqs)
        if shape.decode_seqs:
            self.record_decode(shape.decode_seqs, 1)
            t = max(t, self.decode_s(shape.decode_seqs, shape.decode_context_tokens))
        return t

    def stage_times_s(self, shape: BatchShape) -> tuple[float, ...]:
        """The iteration time split over the stages in proportion to their layers."""
        return split_by_layers(self.iteration_s(shape), self.stage_layers)

    def describe(self) -> dict:
        out = {
            "kind": "splitwise_table",
            "path": str(self.path),
            "sha256": self._sha256,
            "model_key": self.model_key,
            "hardware_key": self.hardware_key,
            "tensor_parallel": self.tensor_parallel,
            "scale": self.scale,
            "excluded_rows": {f"{m}/tp{tp}/bs{bs}": r for (m, tp, bs), r in EXCLUDED_ROWS.items()},
            "context_slope_s_per_token": self.context_slope_s_per_token,
            "prefill_token_range": [self._prefill.x[0], self._prefill.x[-1]],
            "decode_batch_range": [self._decode_batch.x[0], self._decode_batch.x[-1]],
        }
        if len(self.stage_layers) > 1:
            out["stage_layers"] = list(self.stage_layers)
        return out


