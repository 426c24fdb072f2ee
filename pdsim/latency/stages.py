"""Latency of a pipeline whose stages run on different GPU types (a heterogeneous PP instance).

Each stage ``i`` has its own latency model ``M_i``: the model of the *whole* pipeline (same layer split,
same PP degree) as if every stage ran on stage ``i``'s GPU type, built from that GPU's profile or
table. Stage ``i`` of the heterogeneous pipeline takes stage ``i``'s time under ``M_i``:

    t_i(shape) = M_i.stage_times_s(shape)[i]

so an op-level stage charges its own layers, the embedding (first stage), the LM head (last stage) and
its hand-off to the next stage from its own GPU's profile. The hand-off is the sending GPU's
``send_recv`` time (profile or datasheet link): a link between two GPU types in different servers may
be slower, which this does not model (docs/pipeline.md).

Lookup counts: every stage model counts its own lookups into the one ``stats`` shared by all, so a
batch counts once per stage.
"""

from __future__ import annotations

from collections.abc import Sequence

from pdsim.latency.base import BatchShape, LatencyModel, LookupStats


class StagedLatencyModel:
    """A PP pipeline of per-stage latency models (see module docstring).

    Args:
        stage_models: one model per stage, in stage order; each must give ``len(stage_models)``
            stage times. Their ``stats`` are replaced by this model's.

    Raises:
        ValueError: fewer than two stages.
    """

    def __init__(self, stage_models: Sequence[LatencyModel]):
        if len(stage_models) < 2:
            raise ValueError(f"a staged latency model needs >= 2 stages, got {len(stage_models)}")
        self.stage_models = tuple(stage_models)
        self.stats = LookupStats()
        for m in self.stage_models:
            m.stats = self.stats
        self.name = "stages:" + "|".join(m.name for m in self.stage_models)

    def stage_times_s(self, shape: BatchShape) -> tuple[float, ...]:
        return tuple(m.stage_times_s(shape)[i] for i, m in enumerate(self.stage_models))

    def iteration_s(self, shape: BatchShape) -> float:
        """One pass through every stage: the sum of the stage times."""
        return sum(self.stage_times_s(shape))

    def decode_s(self, batch_size: int, context_tokens: int) -> float:
        """One pure-decode pass through every stage (pure: lookups go to a scratch counter)."""
        scratch = LookupStats()
        for m in self.stage_models:
            m.stats = scratch
        try:
            return self.iteration_s(BatchShape(decode_seqs=batch_size, decode_context_tokens=context_tokens))
        finally:
            for m in self.stage_models:
                m.stats = self.stats

    def record_decode(self, batch_size: int, iterations: int) -> None:
        self.stats.lookups += iterations

    def describe(self) -> dict:
        return {"kind": "stages", "stages": [m.describe() for m in self.stage_models]}
