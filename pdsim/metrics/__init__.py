"""Metrics (pure domain ring): per-request records to DataFrames, SLOs, goodput, cost."""

from pdsim.metrics.records import REQUEST_COLUMNS, requests_frame
from pdsim.metrics.summary import SUMMARY_COLUMNS, summarize

__all__ = ["REQUEST_COLUMNS", "SUMMARY_COLUMNS", "requests_frame", "summarize"]
