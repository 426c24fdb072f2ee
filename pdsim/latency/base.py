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

    def describe(self) -> dict:
        """Provenance for the run manifest: source file, its hash, keys and corrections applied."""
        ...
