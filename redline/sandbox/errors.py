"""Errors raised by sandboxes. All are harness-side failures except :class:`NoSuchProcess`."""

from redline.errors import HarnessError, UserError


class SandboxError(HarnessError):
    """The sandbox machinery failed (could not start, enter, inspect or destroy a sandbox)."""


class SandboxUnavailable(SandboxError):
    """The host lacks something the sandbox needs. The message names it and how to get it."""


class WeakContainmentRefused(SandboxUnavailable):
    """The host cannot enforce part of the requested containment and the user did not accept that."""


class SandboxGone(SandboxError):
    """The sandbox was destroyed (by the caller, its wall-clock limit, or its own collapse)."""


class NoSuchProcess(UserError):
    """The pid named by the caller is not a process of this sandbox."""
