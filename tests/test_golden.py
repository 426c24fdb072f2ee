"""Golden summary of experiments/tiny.yaml.

A change to tests/golden/tiny_summary.csv must be explained in the commit that makes it: which
numbers moved and why (a scheduler or latency fix, a new default...). Regenerate it only with
``python tests/golden/regenerate.py`` (see that script for when), never to silence a failure that
nobody can explain.

Integer, boolean and text columns must match exactly; float columns to rtol=1e-9 (NaN == NaN).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdsim.metrics.summary import SUMMARY_COLUMNS

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "tiny_summary.csv"


def _regenerate_module():
    spec = importlib.util.spec_from_file_location("golden_regenerate", HERE / "golden" / "regenerate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def frames():
    golden = pd.read_csv(GOLDEN)
    fresh = _regenerate_module().tiny_summary()
    return golden, fresh


def test_golden_file_shape(frames):
    golden, fresh = frames
    assert list(golden.columns) == SUMMARY_COLUMNS == list(fresh.columns)
    assert len(golden) == len(fresh) == 6


@pytest.mark.parametrize("column", SUMMARY_COLUMNS)
def test_summary_matches_golden(frames, column):
    golden, fresh = frames
    g, f = golden[column], fresh[column]
    if pd.api.types.is_float_dtype(g) or pd.api.types.is_float_dtype(f):
        gv, fv = g.to_numpy(dtype=float), f.to_numpy(dtype=float)
        assert (np.isnan(gv) == np.isnan(fv)).all(), column
        ok = ~np.isnan(gv)
        np.testing.assert_allclose(fv[ok], gv[ok], rtol=1e-9, atol=0, err_msg=column)
    elif pd.api.types.is_bool_dtype(g) or pd.api.types.is_integer_dtype(g):
        assert f.tolist() == g.tolist(), column
    else:
        assert f.astype(str).tolist() == g.astype(str).tolist(), column
