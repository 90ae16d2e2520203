"""Every file the package writes goes through here: atomically, with the
user's umask, and with a content record where a later run relies on it.

- `write_text`, `write_bytes`, `write_json`, `atomic_file`: a temporary
  sibling, fsync, then `os.replace`, so a `kill -9` at any instant leaves
  the old file or the new one, never a torn one (and perhaps a temporary
  sibling, hidden, which `remove_leftovers` clears). JSON is written
  without NaN or infinity.
- `atomic_directory`: a directory built under a temporary sibling and
  renamed into place (replacing an old one only once the new is complete).
- `share`: the user's umask on what `tempfile` made private.
- Content records: a network directory and every training checkpoint record
  the size and sha256 of each file they hold; loading checks them first, so
  a truncated or altered file is refused in one line instead of being read
  (or half-read by background threads).
- A full disk: `no_space` finds it in whatever a write raised, through any
  library's wrapping, so that it can be said in one line.
"""

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

# Temporary files and directories start with this; a reader that lists a
# directory skips them, and a crash leaves nothing else behind.
TMP_PREFIX = ".tmp-"

# What a full disk or an exhausted quota raises, through whichever layer.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _chain(error):
  """`error` and those it was raised from or during, outermost first."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def no_space(error) -> BaseException | None:
  """The full disk (or exhausted quota) in `error`'s chain: the innermost
  OSError with ENOSPC or EDQUOT (it names the file where the writer knew
  it), else the innermost error whose text is the system's for them
  (TensorStore's); None if there is none."""
  found = None
  for link in _chain(error):
    if isinstance(link, OSError) and link.errno in NO_SPACE:
      found = link
    elif (not isinstance(found, OSError)
          and any(os.strerror(code) in str(link) for code in NO_SPACE)):
      found = link
  return found


def written_file(error) -> str | None:
  """The file the innermost OSError of `error`'s chain names, or None."""
  named = [link.filename for link in _chain(error)
           if isinstance(link, OSError) and link.filename]
  return str(named[-1]) if named else None


def share(path) -> None:
  """Gives `path` the permissions a plain `open`/`mkdir` would have (the
  user's umask): `tempfile` makes its files 0600 and directories 0700, and
  results are for collaborators too."""
  mask = os.umask(0o022)  # Reading the umask means setting it; set it back.
  os.umask(mask)
  os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


def file_sha256(path) -> str:
  """The sha256 of a file's bytes, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def file_records(root, under, skip=()) -> dict:
  """`{path relative to root: {'sha256', 'bytes'}}` of every file below
  `root/under` (`skip`: relative paths left out)."""
  records = {}
  for folder, dirs, names in os.walk(os.path.join(root, under)):
    dirs.sort()
    for name in sorted(names):
      path = os.path.join(folder, name)
      relative = os.path.relpath(path, root)
      if relative not in skip:
        records[relative] = {"sha256": file_sha256(path),
                             "bytes": os.path.getsize(path)}
  return records


def malformed(records) -> str | None:
  """What is wrong with `records` (as read from JSON) if it is not a
  non-empty record dict of relative paths inside their root ('is
  malformed', or which entry is); None if nothing is."""
  if not isinstance(records, dict) or not records:
    return "is malformed"
  for name, record in sorted(records.items()):
    if (os.path.isabs(name) or ".." in name.split(os.sep)
        or not isinstance(record, dict)
        or not isinstance(record.get("sha256"), str)
        or not isinstance(record.get("bytes"), int)):
      return f"entry {name!r} is malformed"
  return None


def is_wellformed(records) -> bool:
  """Whether `records` is a well-formed record dict (see `malformed`)."""
  return malformed(records) is None


def first_difference(root, records, hashes=True) -> str | None:
  """What is wrong with the first file under `root` that differs from its
  record (missing, another size, or with `hashes` other bytes), or None."""
  for name, record in sorted(records.items()):
    path = os.path.join(root, name)
    if not os.path.isfile(path):
      return f"{path}: missing"
    size = os.path.getsize(path)
    if size != record["bytes"]:
      return (f"{path}: {size} bytes where {record['bytes']} were written "
              f"(truncated or altered)")
    if hashes and file_sha256(path) != record["sha256"]:
      return (f"{path}: content differs from what was written (sha256 "
              f"mismatch: altered or damaged)")
  return None


# --------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_file(path) -> Iterator[Any]:
  """Yields a binary file to write `path`'s new content into; it replaces
  `path` when the block ends without an error (a crash leaves the old file,
  or none, or the new one, never a torn one), and is removed when it
  raises. The file gets the user's umask. For content too large to hold
  in memory twice; else `write_bytes`."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory,
                             prefix=f"{TMP_PREFIX}{os.path.basename(path)}-")
  try:
    with os.fdopen(fd, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    share(tmp)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_bytes(path, data: bytes) -> None:
  """Writes `data` to `path` atomically: a crash leaves the old file (or
  none) or the new one. The file gets the user's umask."""
  with atomic_file(path) as f:
    f.write(data)


def remove_leftovers(path) -> None:
  """Removes the temporary siblings of `path` that a writer killed mid-write
  left behind (a `kill -9` skips every cleanup). Only for a file with one
  writer at a time: another's write in progress would lose its file."""
  directory = os.path.dirname(os.path.abspath(path))
  prefix = f"{TMP_PREFIX}{os.path.basename(path)}-"
  for name in os.listdir(directory):
    if name.startswith(prefix):
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(directory, name))


def write_text(path, text: str) -> None:
  """`write_bytes` of `text` in UTF-8."""
  write_bytes(path, text.encode("utf-8"))


def write_json(path, value: Any, *, indent=2, sort_keys=False) -> None:
  """Writes `value` as JSON (a trailing newline; NaN and infinity refused
  with ValueError, since no JSON reader takes them) atomically."""
  write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys,
                              allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_directory(path, *, replace=False) -> Iterator[str]:
  """Yields a temporary sibling directory to fill; renamed to `path` when
  the block ends without an error, removed when it raises.

  Args:
    path: the directory to create.
    replace: whether an existing `path` is replaced (only once the new one
      is complete; the caller checks that it may be). Without it an
      existing `path` raises FileExistsError before anything is written.

  A kill while the block runs leaves the old directory (or none) and a
  hidden temporary sibling. Replacing takes two renames (POSIX has no
  atomic swap of directories): a kill between them, a window of
  microseconds, leaves no `path` and the old directory inside a hidden
  `.tmp-<name>-old-*` sibling, from which it can be moved back.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.lexists(path) and not replace:
    raise FileExistsError(f"{path} exists")
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.path.basename(path)}-",
                         dir=parent)
  try:
    share(tmp)  # mkdtemp makes it private (0700).
    yield tmp
    if os.path.lexists(path):
      old = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.path.basename(path)}"
                             f"-old-", dir=parent)
      os.rename(path, os.path.join(old, "x"))
      os.rename(tmp, path)
      shutil.rmtree(old)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
