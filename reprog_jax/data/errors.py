"""The one exception the data package raises for bad input or missing data."""

from reprog_jax.errors import UserError


class DataError(UserError, ValueError):
  """A user-facing data problem, described in one line.

  Raised for an unknown dataset name, an invalid few-shot budget, data that
  is not where the config says, or a malformed folder dataset. Command-line
  entry points print the message and exit with status 1.
  """


class DataNotFound(DataError):
  """Data that is not where the config (or the doctor) looks: a missing
  folder or file, or tfds files never prepared. A `DataError` like any
  other to a run; the doctor lists it as "not found" rather than broken."""
