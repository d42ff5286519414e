"""The default sandbox backend: bubblewrap + Linux namespaces + cgroup limits."""

from redline.sandbox.bwrap.backend import BwrapBackend

__all__ = ["BwrapBackend"]
