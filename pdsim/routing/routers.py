"""Routers: the global scheduler of a pool, and Splitwise's mixed pool (pure domain ring).

A router sees the instances of one pool through three numbers each, all as of ``now_s``:

- ``load_tokens(now_s)``: outstanding tokens, i.e. prefill tokens still to process plus output tokens
  still to generate for the requests the instance holds;
- ``outstanding_requests(now_s)``: requests the instance holds (waiting for prefill, running, and on
  a decode instance also those waiting for blocks or in KV transfer to it);
- ``cached_prefix_tokens(req)``: prompt tokens of ``req`` whose KV blocks the instance's prefix cache
  holds (0 without prefix caching).

Every router implements ``choose(instances, now_s, req) -> int`` (the index of the instance that gets
``req``). Routing is deterministic: ties go to the lowest index, and the one random router draws from
a ``numpy.random.Generator`` seeded from the run's root seed. See docs/routing.md.

- ``round_robin``: instance i, i+1, ... in turn.
- ``least_tokens``: fewest outstanding tokens (Splitwise's cluster scheduler routes by pending tokens:
  ``MixedPoolScheduler`` in github.com/Mutinifni/splitwise-sim ``scheduler.py`` picks
  ``min(instances, key=sched_pending_tokens)``).
- ``jsq``: join the shortest queue, by outstanding requests (Winston, "Optimality of the shortest
  line discipline", J. Appl. Prob. 14(1), 1977).
- ``power_of_two``: two distinct instances drawn uniformly at random, the one with fewer outstanding
  tokens wins (Mitzenmacher, "The power of two choices in randomized load balancing", IEEE TPDS
  12(10), 2001).
- ``prefix_aware``: the instance holding the longest cached prefix of the prompt, unless that would
  unbalance the pool (SGLang's cache-aware router; its rule as documented for the SGLang Model Gateway,
  github.com/lightseekorg/smg ``docs/concepts/routing/cache-aware.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pdsim.errors import ConfigError

ROUTER_NAMES = ("least_tokens", "jsq", "round_robin", "power_of_two", "prefix_aware")

# SGLang Model Gateway cache-aware defaults (github.com/lightseekorg/smg,
# docs/concepts/routing/cache-aware.md): ``--cache-threshold 0.3``, ``balance_rel_threshold 1.5``.
DEFAULT_CACHE_THRESHOLD = 0.3
DEFAULT_BALANCE_REL = 1.5

# Splitwise simulator's mixed-pool scheduler config (github.com/Mutinifni/splitwise-sim,
# configs/orchestrator_repo/schedulers/mixed_pool.yml): ``prompt_max_pending_batch_tokens: 8192``.
DEFAULT_PREFILL_QUEUE_TOKENS = 8192


class Routable(Protocol):
    """What a router may ask an instance."""

    def load_tokens(self, now_s: float) -> int: ...

    def outstanding_requests(self, now_s: float) -> int: ...

    def cached_prefix_tokens(self, req) -> int: ...


class Router(Protocol):
    name: str

    def choose(self, instances: Sequence[Routable], now_s: float, req) -> int:
        """Index of the instance of ``instances`` (non-empty) that gets ``req`` at ``now_s``."""
        ...


def _argmin(values: list) -> int:
    """Index of the smallest value; ties go to the lowest index (``min`` keeps the first)."""
    return min(range(len(values)), key=values.__getitem__)


def least_tokens_index(instances: Sequence[Routable], now_s: float) -> int:
    """Index of the instance with the fewest outstanding tokens; ties go to the lowest index."""
    return _argmin([inst.load_tokens(now_s) for inst in instances])


class RoundRobinRouter:
    """Instance 0, 1, ..., n-1, 0, ... regardless of load."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, instances: Sequence[Routable], now_s: float, req=None) -> int:
        i = self._next % len(instances)
        self._next = i + 1
        return i


class LeastTokensRouter:
    """Fewest outstanding tokens (prefill to do + outputs to generate); ties to the lowest index."""

    name = "least_tokens"

    def choose(self, instances: Sequence[Routable], now_s: float, req=None) -> int:
        return least_tokens_index(instances, now_s)


class JoinShortestQueueRouter:
    """Join the shortest queue: fewest outstanding requests (waiting + running + incoming KV).

    Ties go to the lowest index. Unlike ``least_tokens`` it ignores how long the requests are.
    """

    name = "jsq"

    def choose(self, instances: Sequence[Routable], now_s: float, req=None) -> int:
        return _argmin([inst.outstanding_requests(now_s) for inst in instances])


class PowerOfTwoRouter:
    """Power of two choices (Mitzenmacher, IEEE TPDS 12(10), 2001).

    Draws two distinct instances uniformly at random and picks the one with fewer outstanding tokens
    (the first drawn on a tie, so ties are broken uniformly at random). With one instance it returns
    0 and draws nothing.

    Args:
        rng: the router's own random stream (seeded from the run's root seed by the caller).
    """

    name = "power_of_two"

    def __init__(self, rng: np.random.Generator):
        self._rng = rng

    def choose(self, instances: Sequence[Routable], now_s: float, req=None) -> int:
        n = len(instances)
        if n == 1:
            return 0
        a = int(self._rng.integers(n))
        b = int(self._rng.integers(n - 1))
        if b >= a:
            b += 1  # uniform over the n - 1 others
        return b if instances[b].load_tokens(now_s) < instances[a].load_tokens(now_s) else a


@dataclass(frozen=True, slots=True)
class PrefixAwareRouter:
    """KV-/prefix-cache-aware routing (SGLang's cache-aware router, llm-d's prefix scorer).

    Rule, for a request with P prompt tokens:

    1. ``best`` = the instance whose prefix cache holds the most prompt tokens of the request (ties:
       fewest outstanding tokens, then lowest index).
    2. If ``best`` holds no more than ``cache_threshold`` x P tokens, route by ``least_tokens``
       (SGLang: "if match ratio <= cache-threshold, route to least-loaded worker").
    3. If sending to ``best`` would unbalance the pool, route by ``least_tokens``: with L the
       outstanding tokens of ``best`` and m the least outstanding tokens in the pool, the pool is
       unbalanced when both ``L - m > balance_abs_tokens`` and ``L > balance_rel x m`` (SGLang's two
       conditions; it compares the most and least loaded workers by request count, pdsim compares
       the chosen instance with the least loaded one by outstanding tokens).
    4. Otherwise ``best``.

    Without any cache hit (e.g. prefix caching off) it routes exactly like ``least_tokens``.

    Attributes:
        balance_abs_tokens: absolute imbalance allowed, tokens (config default: the pool's
            ``max_num_batched_tokens``, i.e. one full iteration of work; a pdsim choice, since
            SGLang's default of 64 counts requests, not tokens).
        balance_rel: relative imbalance allowed (default 1.5, the SGLang Model Gateway default).
        cache_threshold: least fraction of the prompt that must be cached to prefer the cache holder
            (default 0.3, the SGLang Model Gateway default).

    Source: SGLang Model Gateway, github.com/lightseekorg/smg, docs/concepts/routing/cache-aware.md.
    """

    balance_abs_tokens: int
    balance_rel: float = DEFAULT_BALANCE_REL
    cache_threshold: float = DEFAULT_CACHE_THRESHOLD
    name: str = "prefix_aware"

    def __post_init__(self) -> None:
        if self.balance_abs_tokens < 0:
            raise ConfigError(f"router.balance_abs_tokens must be >= 0, got {self.balance_abs_tokens}")
        if not self.balance_rel >= 1.0:
            raise ConfigError(f"router.balance_rel must be >= 1, got {self.balance_rel}")
        if not 0.0 <= self.cache_threshold < 1.0:
            raise ConfigError(f"router.cache_threshold must be in [0, 1), got {self.cache_threshold}")

    def choose(self, instances: Sequence[Routable], now_s: float, req) -> int:
        loads = [inst.load_tokens(now_s) for inst in instances]
        least = _argmin(loads)
        best, best_key = 0, None
        for i, inst in enumerate(instances):
            key = (-inst.cached_prefix_tokens(req), loads[i])
            if best_key is None or key < best_key:
                best, best_key = i, key
        cached = -best_key[0]
        if cached <= self.cache_threshold * req.prompt_tokens or cached == 0:
            return least
        load, floor = loads[best], loads[least]
        if load - floor > self.balance_abs_tokens and load > self.balance_rel * floor:
            return least
        return best


def make_router(
    name: str,
    *,
    rng: np.random.Generator | None = None,
    balance_abs_tokens: int | None = None,
    balance_rel: float = DEFAULT_BALANCE_REL,
    cache_threshold: float = DEFAULT_CACHE_THRESHOLD,
) -> Router:
    """Router by name (``ROUTER_NAMES``).

    Args:
        name: the router's name.
        rng: random stream; required by ``power_of_two``.
        balance_abs_tokens, balance_rel, cache_threshold: ``prefix_aware`` parameters
            (``balance_abs_tokens`` is required for it).

    Raises:
        ConfigError: unknown name, or a missing / invalid parameter.
    """
    match name:
        case "round_robin":
            return RoundRobinRouter()
        case "least_tokens":
            return LeastTokensRouter()
        case "jsq":
            return JoinShortestQueueRouter()
        case "power_of_two":
            if rng is None:
                raise ConfigError("router 'power_of_two' needs a random stream (rng)")
            return PowerOfTwoRouter(rng)
        case "prefix_aware":
            if balance_abs_tokens is None:
                raise ConfigError("router 'prefix_aware' needs balance_abs_tokens")
            return PrefixAwareRouter(balance_abs_tokens, balance_rel, cache_threshold)
        case _:
            raise ConfigError(f"unknown router {name!r}; expected one of {', '.join(ROUTER_NAMES)}")


@dataclass(frozen=True, slots=True)
class MixedPool:
    """Splitwise's mixed pool for a disaggregated deployment: decode instances lend a hand at prefill.

    Splitwise (Patel et al., ISCA 2024, Sec. IV, cluster-level scheduling) keeps a prompt pool, a
    token pool and a mixed pool; when the pending queue of the prompt pool grows too long, machines of
    the token pool move to the mixed pool and run mixed batches (prefill and decode in one batch).
    Its simulator (github.com/Mutinifni/splitwise-sim, ``scheduler.py``, ``MixedPoolScheduler``) makes
    this concrete: the prompt queue is "long" when the least loaded prompt instance's pending tokens
    plus the new prompt exceed ``prompt_max_pending_batch_tokens`` (8192 in
    ``configs/orchestrator_repo/schedulers/mixed_pool.yml``); then the token instance with the fewest
    pending tokens is moved to the mixed pool and prefills the request.

    pdsim's rule, per request with P prompt tokens: when every prefill instance has
    ``load_tokens(now) + P > prefill_queue_tokens``, the request is *borrowed*: it goes to the decode
    instance with the fewest outstanding tokens (ties: lowest index), which prefills it in a mixed
    batch and decodes it there (no KV transfer). Otherwise it goes to the prefill pool as usual.

    The other direction (splitwise-sim moves a prompt machine to the mixed pool when the least
    memory-loaded token machine cannot hold the request): with ``decode_on_prefill``, when a request's
    prefill ends and no decode instance can reserve its KV now (each has transfers waiting for blocks,
    or too few free blocks), the prefill instance keeps it and decodes it itself (no KV transfer),
    provided it has the blocks for the whole request (prompt + output) free now, keeping its
    watermark. Such a request is marked ``decoded_on_prefill``.

    Differences from splitwise-sim: the borrowing is decided per request (no sticky mixed-pool
    membership that ends when the instance goes idle), a borrowed request always decodes on the
    instance that prefilled it (splitwise-sim may ship its KV to another token instance), and the
    decode-side decision is taken when the prefill ends (splitwise-sim decides at arrival).

    Attributes:
        prefill_queue_tokens: outstanding tokens of a prefill instance above which (with the new
            prompt) it counts as overloaded.
        decode_on_prefill: let prefill instances decode requests the decode pool has no room for.
    """

    prefill_queue_tokens: int = DEFAULT_PREFILL_QUEUE_TOKENS
    decode_on_prefill: bool = True

    def keep_on_prefill(self, decode: Sequence, prefill_instance, req) -> bool:
        """Whether the prefill instance that just prefilled ``req`` should decode it itself: no decode
        instance can reserve its KV now, and the prefill instance has room for all of it."""
        if not self.decode_on_prefill:
            return False
        if any(inst.has_room_for(req) for inst in decode):
            return False
        return prefill_instance.can_hold_whole(req)

    def borrow(self, prefill: Sequence[Routable], decode: Sequence[Routable], now_s: float, req) -> int | None:
        """Index of the decode instance that takes ``req`` whole, or None to use the prefill pool."""
        need = req.prompt_tokens
        limit = self.prefill_queue_tokens
        for inst in prefill:
            if inst.load_tokens(now_s) + need <= limit:
                return None
        return least_tokens_index(decode, now_s)
