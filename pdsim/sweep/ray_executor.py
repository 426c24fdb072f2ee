"""The Ray executor of ``pdsim sweep --executor ray``: one Ray task per point, running ``run_point``.

``ray`` is imported only here, and this module only when ``--executor ray`` is asked for. Each task
runs the same ``run_point`` as the local executor, with the same arguments, so the stored run
directories are the same bytes (apart from wall-time fields). A task whose worker dies (killed, OOM, a
lost node: ``WorkerCrashedError``, ``NodeDiedError``, ... or a ``RayTaskError`` such as pdsim missing
on a node) is recorded by the driver as a failed point; it is not retried within the run
(``max_retries=0``) and, like every failed point, is retried on the next run. See docs/sweep.md.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from pdsim.errors import ConfigError

RAY_MISSING = '--executor ray needs ray (pip install "pdsim[ray]")'


def import_ray():
    """``import ray``, or a ConfigError (exit 2) saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


def init_ray(ray, address: str | None, jobs: int) -> bool:
    """Initialise ``ray`` unless it already is: join the cluster at ``address`` if given (``auto``: the one
    in ``RAY_ADDRESS`` or from ``ray start``), else start a new local one with ``num_cpus=jobs`` (0 = all
    cores). Returns whether it was started here (the caller then shuts it down)."""
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        ray.init(address=address, **quiet)
    else:  # "local": always a new local Ray, never one found via RAY_ADDRESS or `ray start`
        ray.init(address="local", num_cpus=jobs if jobs > 0 else (os.cpu_count() or 1), include_dashboard=False,
                 **quiet)
    return True


def run_point_in(cwd: str, args: tuple) -> tuple[str, str | None]:
    """Run ``run_point(*args)`` from the driver's working directory (where it exists on this node), so
    relative experiment, trace and ``--out`` paths mean what they mean to the driver."""
    from pdsim.sweep.cli import run_point

    if os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)
    return run_point(*args)


def run_on_ray(
    args: list[tuple],
    *,
    jobs: int,
    address: str | None,
    finished: Callable[[str, str | None, int], None],
    record_failure: Callable[[str, str], None],
    progress: Callable[[int], None] | None = None,
    task_fn: Callable[..., Any] = run_point_in,
) -> None:
    """Run every point (``args[i] = run_point arguments``, hash at index 4) as a Ray task.

    Uses an already initialised Ray, else :func:`init_ray` (``address`` or a local one with
    ``num_cpus=jobs``) and shuts that one down at the end. ``finished(hash, error, running)`` is called as
    each task completes (in completion order); a task Ray reports as failed is first stored with
    ``record_failure(hash, message)``. ``progress(running)`` is called while waiting.
    """
    ray = import_ray()
    from ray.exceptions import RayError

    started = init_ray(ray, address, jobs)
    refs: dict[Any, str] = {}
    try:
        slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1, max_retries=0)(task_fn)
        cwd = os.getcwd()
        refs = {remote.remote(cwd, a): a[4] for a in args}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            running = min(slots, len(pending))
            for ref in done:
                h = refs[ref]
                try:
                    h_ret, err = ray.get(ref)
                except RayError as exc:
                    err = f"ray: the task of this point failed ({type(exc).__name__}): {exc}"
                    record_failure(h, err)
                    h_ret = h
                finished(h_ret, err, running)
            if not done and progress:
                progress(running)
    except BaseException:
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass
        raise
    finally:
        if started:
            ray.shutdown()
