"""Routers (pure domain ring): which instance of a pool gets a request; Splitwise's mixed pool."""

from pdsim.routing.routers import (
    ROUTER_NAMES,
    JoinShortestQueueRouter,
    LeastTokensRouter,
    MixedPool,
    PowerOfTwoRouter,
    PrefixAwareRouter,
    RoundRobinRouter,
    Router,
    make_router,
)

__all__ = [
    "ROUTER_NAMES", "JoinShortestQueueRouter", "LeastTokensRouter", "MixedPool", "PowerOfTwoRouter",
    "PrefixAwareRouter", "RoundRobinRouter", "Router", "make_router",
]
