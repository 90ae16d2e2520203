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


def first_line(error, limit=160, *, root_cause=False) -> str:
  """An exception's first non-blank line, shortened at a word boundary to
  about `limit` characters (its type's name if it has no message).

  Args:
    error: the exception.
    limit: the longest line kept whole.
    root_cause: describe the innermost `__cause__` instead (a library's
      wrapper often hides the line that names the file).
  """
  while root_cause and error.__cause__ is not None:
    error = error.__cause__
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  if len(lines[0]) <= limit:
    return lines[0]
  return lines[0][:limit].rsplit(" ", 1)[0] + " ..."
