"""Batch schedulers (pure domain ring): which requests run in the next iteration of an instance."""

from pdsim.scheduling.batch import (
    Batch,
    BatchScheduler,
    ColocatedScheduler,
    Completion,
    DecodeOnlyScheduler,
    PrefillOnlyScheduler,
    SchedulerLimits,
)

__all__ = [
    "Batch", "BatchScheduler", "ColocatedScheduler", "Completion", "DecodeOnlyScheduler",
    "PrefillOnlyScheduler", "SchedulerLimits",
]
