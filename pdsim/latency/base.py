"""The ``LatencyModel`` protocol every latency model implements.

An iteration is one forward pass of a batch. The batch scheduler describes it as a ``BatchShape``
(how many prompt tokens are prefilled, how many sequences decode one token and over how much context)
and the latency model returns its duration in seconds. Models are read-only after construction and
validated at load; the only state they keep is ``LookupStats``, a count of lookups outside the measured
range, which the run reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class BatchShape:
    """What one iteration computes.

    Attributes:
        prefill_tokens: prompt tokens prefilled in this iteration (sum over prefilling requests).
        prefill_seqs: number of requests being prefilled.
        decode_seqs: number of requests decoding one token each.
        decode_context_tokens: sum over decoding requests of their context length (prompt + tokens
            generated so far), i.e. the KV entries the decode attention reads.
        prefill_square_tokens: sum over prefilling requests of ``chunk x (chunk + 2 x cached)``, where
            ``chunk`` is the tokens prefilled now and ``cached`` those already in the KV cache; without
            chunking it is the sum of squared prompt lengths. Causal attention computes half of it
            in query-key pairs. 0 means unknown: models then assume equal prompt lengths
            (``prefill_tokens ** 2 / prefill_seqs``).
    """

    prefill_tokens: int = 0
    prefill_seqs: int = 0
    decode_seqs: int = 0
    decode_context_tokens: int = 0
    prefill_square_tokens: int = 0


@dataclass(slots=True)
class LookupStats:
    """Counts of latency lookups, and of those outside the measured range (extrapolated or clamped)."""

    lookups: int = 0
    extrapolated: int = 0
    by_axis: dict[str, int] = field(default_factory=dict)

    def out_of_range(self, axis: str) -> None:
        self.extrapolated += 1
        self.by_axis[axis] = self.by_axis.get(axis, 0) + 1


@runtime_checkable
class LatencyModel(Protocol):
    """Iteration latency of one instance (one model replica on TP x PP GPUs of one type).

    Implementations must be deterministic and side-effect free apart from ``stats``.
    """

    name: str
    stats: LookupStats

    def iteration_s(self, shape: BatchShape) -> float:
        """Duration in seconds of an iteration of the given shape (> 0)."""
        ...

    def decode_s(self, batch_size: int, context_tokens: int) -> float:
        """Duration of a pure-decode iteration: ``batch_size`` sequences, ``context_tokens`` KV read.

        Pure (no counting): the simulator's hot path calls it once per decode iteration, including
        iterations of a window that a new arrival later cuts short; executed ones are counted through
        ``record_decode``.
        """
        ...

    def record_decode(self, batch_size: int, iterations: int) -> None:
        """Count ``iterations`` executed pure-decode iterations at ``batch_size`` in ``stats``."""
        ...

    def stage_times_s(self, shape: BatchShape) -> tuple[float, ...]:
        """Time each pipeline stage is busy with one pass of a batch of this shape, in stage order.

        One entry per PP stage (a 1-tuple without PP). A stage's time includes sending its activations
        to the next stage (the hand-off), so the pass takes ``sum(...)`` and a pipeline that keeps one
        batch per stage in flight completes at most one batch per ``max(...)``. Counts one lookup in
        ``stats`` like ``iteration_s``. Models without a per-stage composition split the iteration
        time over the stages in proportion to their layers (``split_by_layers``; even when the PP
        degree divides the layers).
        """
        ...

    def describe(self) -> dict:
        """Provenance for the run manifest: source file, its hash, keys and corrections applied."""
        ...


def pp_layer_split(num_layers: int, pp: int) -> tuple[int, ...]:
    """Layers per pipeline stage, as vLLM splits them by default.

    ``num_layers // pp`` each; the remainder adds one layer per stage starting from the second-to-last
    stage and moving towards the first (the last stage also runs the final norm and the LM head), as
    ``get_pp_indices`` in vllm-project/vllm ``vllm/distributed/utils.py`` does without
    ``VLLM_PP_LAYER_PARTITION``: 80 layers over 3 stages -> (27, 27, 26); 61 over 4 -> (15, 15, 16, 15).

    Raises:
        ValueError: ``pp`` < 1 or more stages than layers.
    """
    if pp < 1 or pp > num_layers:
        raise ValueError(f"pp must be in [1, {num_layers}] (the model's layers), got {pp}")
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return tuple(parts)


def split_by_layers(total_s: float, stage_layers: tuple[int, ...]) -> tuple[float, ...]:
    """``total_s`` split over stages in proportion to their layers (the default ``stage_times_s``).

    With one stage it is ``(total_s,)`` exactly; with equal layers per stage every stage gets
    ``total_s / pp``. It ignores that the first stage also embeds and the last runs the LM head, and
    adds no hand-off time: models that know their ops (``OpLevelModel``) compose stages instead.
    """
    if len(stage_layers) == 1:
        return (total_s,)
    layers = sum(stage_layers)
    return tuple(total_s * n / layers for n in stage_layers)
