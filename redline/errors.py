"""Error types shared by every layer.

Every error says whose fault it is:

* :class:`HarnessError` -- redline itself (or the host it runs on) failed. A trial that ends with
  one of these is marked ``error`` and is never counted as the AI failing.
* :class:`UserError` -- the person running redline asked for something invalid (bad option,
  malformed file). The CLI prints these as one line, never a traceback.

What the AI system does wrong inside its sandbox is *not* an exception: it is an observation
(exit code, timeout flag, truncated output) returned to the caller.
"""


class RedlineError(Exception):
    """Base class of every error redline raises on purpose."""


class UserError(RedlineError):
    """The user's input is invalid; the message says what to change."""


class HarnessError(RedlineError):
    """redline or its host failed; the AI under test is not to blame."""
