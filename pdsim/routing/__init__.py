"""Routers (pure domain ring): which instance of a pool gets a request."""

from pdsim.routing.routers import JoinShortestQueueRouter, RoundRobinRouter, Router, make_router

__all__ = ["JoinShortestQueueRouter", "RoundRobinRouter", "Router", "make_router"]
