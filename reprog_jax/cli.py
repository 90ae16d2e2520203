"""absl flag parsing for the command lines, every bad flag as one line.

`reprog_jax.main` and `reprog_jax.sweep` take a config, by file
(`--config=configs/ilm_vp.py:smoke`) or by the name of a preset module of
the package (`--config=ilm_vp:smoke`, which an installed wheel has too; see
`config_path`), and overrides (`--config.n_shot=10`); a typo, a wrong type
or a config file that fails to load comes back from absl and ml_collections as a whole traceback or a
multi-line did-you-mean. `one_line` keeps its informative line, and
`parser` makes an `app.run` flags parser that prints it and exits 1.

Every command line (absl or argparse) runs its work through `run`, which
turns a `errors.UserError` into `prog: error: <one line>` and exit status 1;
any other exception is a bug and keeps its traceback.
"""

import argparse
import importlib.util
import os
import re
import sys

from reprog_jax import errors

# Where `--config=NAME:ARG` finds the module NAME.
CONFIGS_PACKAGE = "reprog_jax.configs"


def one_line(error, fields="config") -> str:
  """The informative line of a flag or config error; `fields` names what
  an unknown field is a field of ('config', 'study')."""
  text = str(error).replace("\\n", "\n").replace("\\'", "'")
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  if isinstance(error, (AttributeError, KeyError)):
    return f"unknown {fields} field " + "; ".join(l.strip("'\"")
                                                  for l in lines)
  line = lines[-1] if lines else type(error).__name__
  if len(line) > 1 and line[0] == line[-1] and line[0] in "'\"":
    line = line[1:-1]  # A repr of the message.
  return re.sub(r"^[\w.]+(Error|Exception): ", "", line)


def fail(prog, message) -> int:
  """Prints `prog: error: message` on stderr; returns exit status 1."""
  print(f"{prog}: error: {message}", file=sys.stderr)
  return 1


def run(prog, fn, *args, catch=(), interrupted=None) -> int:
  """Runs a command's work and returns its exit status.

  Args:
    prog: the command's name, the head of its error line.
    fn: the work, called as `fn(*args)`; returns an exit status or None
      (0).
    *args: its arguments.
    catch: exception types besides `errors.UserError` that are the user's
      to fix (e.g. OSError where a command reads the user's files).
    interrupted: if given, what Ctrl-C prints before exit status 130
      (what survives and how to resume); else KeyboardInterrupt propagates.
  """
  try:
    status = fn(*args)
  except (errors.UserError, *catch) as e:
    return fail(prog, e)
  except KeyboardInterrupt:
    if interrupted is None:
      raise
    print(interrupted, file=sys.stderr)
    return 130
  return 0 if status is None else status


def config_path(value) -> str:
  """The value of a `--config` flag with a bare preset name (`ilm_vp` or
  `ilm_vp:smoke`: no path separator, no `.py`) turned into the file of
  `reprog_jax.configs.<name>`, which absl's config flag loads; a path is
  returned as it is.

  Raises:
    errors.ConfigError: a bare name that is no module of the package.
  """
  name, colon, arg = value.partition(":")
  if (not re.fullmatch(r"[A-Za-z_]\w*", name)
      or os.path.exists(name)):  # A file in the working directory wins.
    return value
  spec = importlib.util.find_spec(f"{CONFIGS_PACKAGE}.{name}")
  if spec is None or not spec.origin:
    known = sorted(n[:-3] for n in os.listdir(os.path.dirname(
        importlib.util.find_spec(CONFIGS_PACKAGE).origin))
                   if n.endswith(".py") and not n.startswith("_"))
    raise errors.ConfigError(
        f"--config={value}: no preset module {name!r}; use one of "
        f"{', '.join(known)} (e.g. --config={known[0]}:smoke) or a file "
        f"(--config=path/to/config.py:arg)")
  return spec.origin + colon + arg


def _resolve_config(argv) -> list:
  """`argv` with every `--config` value passed through `config_path`."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      argv[i] = "--config=" + config_path(arg[len("--config="):])
    elif arg == "--config" and i + 1 < len(argv):
      argv[i + 1] = config_path(argv[i + 1])
  return argv


def parser(prog, fields, example):
  """A flags parser for `absl.app.run` that turns every bad flag or
  override into one line on stderr and exit status 1 (`example`: a flag to
  show when a positional argument is given)."""

  def parse(argv):
    from absl import flags  # pylint: disable=g-import-not-at-top
    try:
      args = flags.FLAGS(_resolve_config(argv))
    except errors.ConfigError as e:
      sys.exit(fail(prog, e))
    except (flags.Error, AttributeError, KeyError, TypeError,
            ValueError) as e:
      sys.exit(fail(prog, one_line(e, fields)))
    if len(args) > 1:
      sys.exit(fail(prog, f"unexpected arguments {' '.join(args[1:])} "
                    f"(every setting is a flag, e.g. {example})"))
    return args

  return parse


# --------------------------------------------------------------------------
# argparse commands
# --------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
  """An argparse parser whose bad flag is one line (what, and where to look
  for the fix) with exit status 1, like every other bad input."""

  def error(self, message):
    self.exit(1, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text) -> int:
  """argparse type: an integer >= 1."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
  return value


def non_negative(text) -> float:
  """argparse type: a finite number >= 0."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
  if not 0 <= value < float("inf"):
    raise argparse.ArgumentTypeError(f"{text!r} is negative or not finite")
  return value


def probability(text) -> float:
  """argparse type: a number strictly between 0 and 1 (a level alpha)."""
  value = non_negative(text)
  if not 0 < value < 1:
    raise argparse.ArgumentTypeError(f"{text!r} is not in (0, 1); give e.g. "
                                     "0.05")
  return value
