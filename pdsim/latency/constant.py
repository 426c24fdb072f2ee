"""A latency model where every iteration takes the same time.

Not a model of any GPU: it exists for analytic checks (with one request per batch and one output
token, an instance is an M/D/1 server whose mean wait is the Pollaczek-Khinchine value
``rho * D / (2 (1 - rho))``) and for studying schedulers independently of hardware.

With pipeline parallelism the iteration time is one pass through all stages, split over the stages in
proportion to their layers (``pdsim.latency.base.split_by_layers``; evenly when the PP degree divides
the layers): with ``pp`` equal stages of ``iteration_s / pp`` and one batch per stage in flight,
``n`` identical batches end at ``(pp + n - 1) x iteration_s / pp``.
"""

from __future__ import annotations

from pdsim.latency.base import BatchShape, LookupStats, split_by_layers


class ConstantLatencyModel:
    """Every iteration takes ``iteration_s`` seconds, whatever the batch.

    Args:
        iteration_s: time of one pass through the whole model (all stages), seconds (> 0).
        stage_layers: layers per pipeline stage; default one stage.

    Raises:
        ValueError: ``iteration_s`` not > 0, or a stage without layers.
    """

    def __init__(self, iteration_s: float, stage_layers: tuple[int, ...] = (1,)):
        if not iteration_s > 0:
            raise ValueError(f"iteration_s must be > 0, got {iteration_s}")
        if not stage_layers or min(stage_layers) < 1:
            raise ValueError(f"stage_layers must be >= 1 each, got {stage_layers}")
        self.iteration_s_value = float(iteration_s)
        self.stage_layers = tuple(int(n) for n in stage_layers)
        self._stages_s = split_by_layers(self.iteration_s_value, self.stage_layers)
        self.name = f"constant:{iteration_s}"
        self.stats = LookupStats()

    def iteration_s(self, shape: BatchShape) -> float:
        self.stats.lookups += 1
        return self.iteration_s_value

    def decode_s(self, batch_size: int, context_tokens: int) -> float:
        return self.iteration_s_value

    def record_decode(self, batch_size: int, iterations: int) -> None:
        self.stats.lookups += iterations

    def stage_times_s(self, shape: BatchShape) -> tuple[float, ...]:
        self.stats.lookups += 1
        return self._stages_s

    def describe(self) -> dict:
        out = {"kind": "constant", "iteration_s": self.iteration_s_value}
        if len(self.stage_layers) > 1:
            out["stage_layers"] = list(self.stage_layers)
        return out
