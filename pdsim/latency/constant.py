"""A latency model where every iteration takes the same time.

Not a model of any GPU: it exists for analytic checks (with one request per batch and one output
token, an instance is an M/D/1 server whose mean wait is the Pollaczek-Khinchine value
``rho * D / (2 (1 - rho))``) and for studying schedulers independently of hardware.
"""

from __future__ import annotations

from pdsim.latency.base import BatchShape, LookupStats


class ConstantLatencyModel:
    """Every iteration takes ``iteration_s`` seconds, whatever the batch."""

    def __init__(self, iteration_s: float):
        if not iteration_s > 0:
            raise ValueError(f"iteration_s must be > 0, got {iteration_s}")
        self.iteration_s_value = float(iteration_s)
        self.name = f"constant:{iteration_s}"
        self.stats = LookupStats()

    def iteration_s(self, shape: BatchShape) -> float:
        self.stats.lookups += 1
        return self.iteration_s_value

    def decode_s(self, batch_size: int, context_tokens: int) -> float:
        return self.iteration_s_value

    def record_decode(self, batch_size: int, iterations: int) -> None:
        self.stats.lookups += iterations

    def describe(self) -> dict:
        return {"kind": "constant", "iteration_s": self.iteration_s_value}
