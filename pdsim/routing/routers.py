"""Routers: the global scheduler of a pool.

A router sees the pool's instances through one number each, ``load_tokens(now_s)``: the prefill
tokens still to process plus the output tokens still to generate for the requests the instance holds
(its outstanding tokens), as of ``now_s``.

- ``round_robin``: instance i, i+1, ... in turn.
- ``jsq``: join the shortest queue by outstanding tokens; ties go to the lowest index, so routing is
  deterministic.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from pdsim.errors import ConfigError


class Routable(Protocol):
    def load_tokens(self, now_s: float) -> int: ...


class Router(Protocol):
    name: str

    def choose(self, instances: Sequence[Routable], now_s: float) -> int:
        """Index of the instance that gets the next request."""
        ...


class RoundRobinRouter:
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, instances: Sequence[Routable], now_s: float) -> int:
        i = self._next % len(instances)
        self._next = i + 1
        return i


class JoinShortestQueueRouter:
    name = "jsq"

    def choose(self, instances: Sequence[Routable], now_s: float) -> int:
        best, best_load = 0, None
        for i, inst in enumerate(instances):
            load = inst.load_tokens(now_s)
            if best_load is None or load < best_load:
                best, best_load = i, load
        return best


def make_router(name: str) -> Router:
    """Router by name (``round_robin``, ``jsq``).

    Raises:
        ConfigError: unknown name.
    """
    match name:
        case "round_robin":
            return RoundRobinRouter()
        case "jsq":
            return JoinShortestQueueRouter()
        case _:
            raise ConfigError(f"unknown router {name!r}; expected 'round_robin' or 'jsq'")
