"""The one base class of every user-facing error.

A `UserError` is a bad input or a state the user can fix (a missing file, a
wrong flag, a config that does not fit the workdir); its message is one line
saying what, where and how to fix it. Command-line entry points catch
`UserError` only, print the message and exit with status 1; any other
exception is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A user-facing problem, described in one line."""


class ConfigError(UserError, ValueError):
  """A config field, or a combination of fields, that cannot run."""


class TrainingError(UserError, RuntimeError):
  """A run that cannot go on (its workdir, its network, divergence)."""
