"""Errors raised by pdsim.

Every error a user can cause (bad config, trace, profile, CLI input) is a ``PdsimError`` whose message
names the file, the field or line, and the offending value. The CLI prints the message and exits with
code 2, without a traceback. ``InvariantViolation`` signals a bug in pdsim itself (a simulated state
that must never happen, such as KV usage above capacity); it is never caught silently.
"""


class PdsimError(Exception):
    """Base class of user-facing errors (bad input). The CLI exits with code 2 on these."""


class ConfigError(PdsimError):
    """An experiment YAML, override or option is malformed or refers to something unknown."""


class TraceError(PdsimError):
    """A request trace is missing, malformed, or holds invalid rows."""


class ProfileError(PdsimError):
    """A latency profile is missing, malformed, or cannot serve the requested model / GPU / TP."""


class CapacityError(PdsimError):
    """A deployment cannot hold the model (weights + activation reserve exceed the GPU memory)."""


class InvariantViolation(RuntimeError):
    """A simulation invariant broke (a pdsim bug): e.g. KV blocks over capacity, a request lost."""
