"""Closed-loop arrival process: N clients, each submitting its next request when the previous one ends.

The open-loop process (replaying a frame's arrival times) lives in ``pdsim.sim.cluster.simulate``; this
is its closed-loop counterpart, a separate type chosen there by the type of the workload.

Semantics (those of vLLM's ``benchmark_serving.py --max-concurrency N`` at ``--request-rate inf``, and
of genai-perf / aiperf ``--concurrency N``, plus an optional think time):

- client ``c`` submits its first request at ``ClosedLoopRequests.start_s(c)`` (0 unless ``ramp_up_s``);
- when a client's request *ends* (finishes, or is rejected at submission) the client waits that
  request's think time and then, if the stop rule allows (``ClosedLoopRequests.may_submit``), submits
  the next request; its ``arrival_s`` is that submission time, exactly ``finish_s + think`` of the
  previous request (``arrival_s + think`` after a rejection; SimPy's clock, a sum of delays, may differ
  from it by a rounding ulp, as with the open loop's frame times), so TTFT and E2E are measured from
  the send, as benchmark_serving measures them;
- requests are numbered in submission order (so ``arrival_s`` is non-decreasing in ``request_id``, up
  to that rounding ulp) and request ``i`` takes row ``i`` of the pre-drawn rows;
  clients released at the same instant submit in the order their previous requests ended (SimPy
  processes events scheduled for one time in FIFO order), clients starting at the same time in client
  order. Everything is deterministic.

At most ``clients`` requests are ever outstanding; the process checks it and raises
``InvariantViolation`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import simpy

from pdsim.core.request import Phase, Request
from pdsim.errors import ConfigError, InvariantViolation
from pdsim.workload.closed_loop import CHUNK_ROWS, ClosedLoopRequests

__all__ = ["MAX_REJECTIONS_AT_ONE_INSTANT", "ClosedLoopArrivals"]

MAX_REJECTIONS_AT_ONE_INSTANT = 100_000
"""Liveness guard, not a model constant: with zero think time and no request limit, requests that
are all rejected at submission would be resubmitted forever without simulated time advancing. After
this many consecutive rejections at one instant the run stops with a ``ConfigError``."""


class ClosedLoopArrivals:
    """The clients of a closed loop, as SimPy processes.

    Args:
        env: the SimPy environment.
        workload: the pre-drawn rows, clients and stop rule.
        submit: hands a new request to the deployment (``_Runtime.submit``); a rejected request ends
            inside this call.
        requests: list that every submitted request is appended to, in submission order.
        name: the deployment's name, for error messages.

    Wire :meth:`request_ended` into the deployment's end-of-request callback, then run the environment.
    """

    def __init__(self, env: simpy.Environment, workload: ClosedLoopRequests, submit: Callable[[Request], None],
                 requests: list[Request], name: str = ""):
        self.env = env
        self.workload = workload
        self.submit = submit
        self.requests = requests
        self.name = name
        self.submitted = 0
        self.outstanding = 0
        self.peak_outstanding = 0
        self.active_clients = workload.clients
        self._waiting: dict[int, simpy.Event] = {}
        self._chunk_index = -1
        self._chunk: tuple[list[int], list[int], list[float]] = ([], [], [])
        self._rejected_run = 0
        self._rejected_at_s = -1.0
        for c in range(workload.clients):
            env.process(self._client(c))

    def request_ended(self, req: Request) -> None:
        """Called once per request when it finishes or is rejected: releases its client."""
        self.outstanding -= 1
        self._waiting.pop(req.id).succeed()
        if req.phase is Phase.REJECTED:
            now = self.env.now
            if now != self._rejected_at_s:
                self._rejected_at_s = now
                self._rejected_run = 0
            self._rejected_run += 1
            if self._rejected_run >= MAX_REJECTIONS_AT_ONE_INSTANT:
                raise ConfigError(
                    f"{self.name}: closed-loop workload: {self._rejected_run} requests in a row were rejected "
                    f"at t={now} s (last: {req.prompt_tokens} prompt + {req.output_tokens} output tokens, "
                    f"{req.reject_reason}) and simulated time cannot advance; set num_requests or "
                    f"think_time_s > 0, or use lengths this deployment can serve"
                )
        else:
            self._rejected_run = 0

    def _row(self, i: int) -> tuple[int, int, float]:
        j, k = divmod(i, CHUNK_ROWS)
        if j != self._chunk_index:
            self._chunk = self.workload.chunk(j)
            self._chunk_index = j
        prompt, output, think = self._chunk
        return prompt[k], output[k], think[k]

    def _client(self, client: int):
        env = self.env
        workload = self.workload
        t_s = workload.start_s(client)
        if t_s > 0:
            yield env.timeout(t_s)
        while workload.may_submit(self.submitted, t_s):
            i = self.submitted
            self.submitted += 1
            prompt, output, think_s = self._row(i)
            req = Request(i, t_s, prompt, output)
            self.requests.append(req)
            ended = env.event()
            self._waiting[i] = ended
            self.outstanding += 1
            if self.outstanding > self.peak_outstanding:
                self.peak_outstanding = self.outstanding
                if self.outstanding > workload.clients:
                    raise InvariantViolation(
                        f"{self.name}: {self.outstanding} requests outstanding with {workload.clients} clients")
            self.submit(req)
            yield ended  # already triggered if the request was rejected inside submit: resumes at once
            # The next submission time, from the request's own end time (as the open loop uses the
            # frame's times): SimPy's clock, a sum of delays, can differ from it by a rounding ulp.
            t_s = (req.finish_s if req.phase is Phase.FINISHED else req.arrival_s) + think_s
            if t_s > env.now:
                yield env.timeout(t_s - env.now)
        self.active_clients -= 1
