"""absl flag parsing for the command lines, every bad flag as one line.

`reprog_jax.main` and `reprog_jax.sweep` take a config file and overrides
(`--config.n_shot=10`); a typo, a wrong type or a config file that fails to
load comes back from absl and ml_collections as a whole traceback or a
multi-line did-you-mean. `one_line` keeps its informative line, and
`parser` makes an `app.run` flags parser that prints it and exits 1.
"""

import re
import sys


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


def parser(prog, fields, example):
  """A flags parser for `absl.app.run` that turns every bad flag or
  override into one line on stderr and exit status 1 (`example`: a flag to
  show when a positional argument is given)."""

  def parse(argv):
    from absl import flags  # pylint: disable=g-import-not-at-top
    try:
      args = flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError,
            ValueError) as e:
      print(f"{prog}: error: {one_line(e, fields)}", file=sys.stderr)
      sys.exit(1)
    if len(args) > 1:
      print(f"{prog}: error: unexpected arguments {' '.join(args[1:])} "
            f"(every setting is a flag, e.g. {example})", file=sys.stderr)
      sys.exit(1)
    return args

  return parse
