"""A request and its lifecycle.

Phases: ``QUEUED`` (waiting for prefill) -> ``PREFILL`` (in an iteration) -> ``DECODE`` (colocated, or
after the KV transfer on a decode instance; ``TRANSFER`` in between for disaggregated deployments) ->
``FINISHED``. ``REJECTED`` is terminal with a reason. A request preempted by recompute goes back to
``QUEUED`` keeping the tokens it already generated; one preempted by swap is ``SWAPPED`` (its KV in
host memory) until it is swapped back in and decodes again. With chunked prefill a request stays in
``PREFILL`` over several iterations, its computed tokens (``kv_tokens``) catching up with
``prefill_target``.

Token accounting (vLLM semantics): after prefill the request has generated its first token and its
KV cache holds the prompt (``kv_tokens = prompt``). Each decode iteration feeds the last generated token,
writes its KV (``kv_tokens += 1``) and generates one more token. A request finishes when
``generated == output_tokens``; its KV then holds ``prompt + output - 1`` tokens.
"""

from __future__ import annotations

import enum
import math


class Phase(enum.Enum):
    QUEUED = "queued"
    PREFILL = "prefill"
    TRANSFER = "transfer"
    DECODE = "decode"
    SWAPPED = "swapped"  # preempted by swap: KV in host memory, waiting to be swapped back in
    FINISHED = "finished"
    REJECTED = "rejected"


class RejectReason(str, enum.Enum):
    EXCEEDS_CONTEXT = "exceeds_context"  # prompt + output > the model's context length
    # prompt + output - 1 > max_num_batched_tokens: could not be re-prefilled in one iteration after a
    # preemption (no chunked prefill); vLLM refuses max_model_len > max_num_batched_tokens likewise.
    EXCEEDS_TOKEN_BUDGET = "exceeds_max_num_batched_tokens"
    EXCEEDS_KV_CAPACITY = "exceeds_kv_capacity"  # could never fit in one instance's KV cache


class Request:
    """One inference request and what happened to it. Times are simulation seconds (NaN = not yet)."""

    __slots__ = (
        "id", "arrival_s", "prompt_tokens", "output_tokens", "phase", "generated", "kv_tokens",
        "prefill_start_s", "first_token_s", "finish_s", "last_token_s", "itl_max_s",
        "kv_transfer_s", "kv_transfer_wait_s", "prefill_instance", "decode_instance", "preemptions",
        "reject_reason", "_ready_s", "decoded_on_prefill", "hash_ids", "prefill_target", "in_running", "swaps", "prefix_hit_tokens", "mixed_pool",
        "kv_transfer_bytes", "kv_transfer_queue_s", "kv_transfer_d2h_s", "kv_transfer_network_s",
        "kv_transfer_h2d_s", "kv_convert_s", "kv_compress_s", "kv_transfer_hidden_s", "kv_transfer_path",
    )

    def __init__(self, id: int, arrival_s: float, prompt_tokens: int, output_tokens: int):
        self.id = id
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.phase = Phase.QUEUED
        self.generated = 0
        self.kv_tokens = 0
        self.prefill_start_s = math.nan
        self.first_token_s = math.nan
        self.finish_s = math.nan
        self.last_token_s = math.nan
        self.itl_max_s = math.nan
        self.kv_transfer_s = math.nan
        self.kv_transfer_wait_s = math.nan
        self.prefill_instance = -1
        self.decode_instance = -1
        self.preemptions = 0
        self.reject_reason: str = ""
        self._ready_s = math.nan  # when the request became ready on the decode side (transfer done)
        self.decoded_on_prefill = False  # mixed pool: its prefill instance decoded it (no KV transfer)
        self.hash_ids: tuple[int, ...] | None = None  # prefix-unit hashes of the prompt (Mooncake hash_ids)
        self.prefill_target = 0  # tokens the current (re-)prefill computes up to (set on admission)
        self.in_running = False  # a chunked prefill in progress sits in the scheduler's running list
        self.swaps = 0  # preemptions by swap (also counted in preemptions)
        self.prefix_hit_tokens = 0  # prompt tokens reused from the prefix cache at first admission
        # served whole by a decode instance borrowed by Splitwise's mixed pool (no KV transfer)
        self.mixed_pool = False
        # KV transfer breakdown (disaggregated; see pdsim.hardware.topology.TransferCost): bytes on the wire,
        # time waiting for the ports, the path's steps (uncontended), and the part hidden by layer-wise streaming
        self.kv_transfer_bytes = 0
        self.kv_transfer_queue_s = math.nan
        self.kv_transfer_d2h_s = math.nan
        self.kv_transfer_network_s = math.nan
        self.kv_transfer_h2d_s = math.nan
        self.kv_convert_s = math.nan
        self.kv_compress_s = math.nan
        self.kv_transfer_hidden_s = math.nan
        self.kv_transfer_path = ""

    @property
    def prefill_tokens_needed(self) -> int:
        """Tokens a (re)prefill must process: the prompt, plus generated tokens after a preemption."""
        return self.prompt_tokens + self.generated

    def record_token(self, t_s: float) -> None:
        """Note a token emitted at ``t_s`` (for the max inter-token latency)."""
        if self.last_token_s == self.last_token_s:  # not NaN
            gap = t_s - self.last_token_s
            if not (gap <= self.itl_max_s):  # also true when itl_max_s is NaN
                self.itl_max_s = gap
        self.last_token_s = t_s

    def __repr__(self) -> str:
        return (f"Request(id={self.id}, phase={self.phase.name}, prompt={self.prompt_tokens}, "
                f"output={self.output_tokens}, generated={self.generated})")
