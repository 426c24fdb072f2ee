"""Latency models (pure domain ring): how long one iteration of a batch takes on an instance."""

from pdsim.latency.base import BatchShape, LatencyModel, LookupStats
from pdsim.latency.table import SplitwiseTableModel, load_splitwise_table

__all__ = ["BatchShape", "LatencyModel", "LookupStats", "SplitwiseTableModel", "load_splitwise_table"]
