"""Content records of written files, checked before anything reads them.

A network directory (`networks.save`) and every training checkpoint
(`checkpoints.save`) record the size and sha256 of each file they hold;
loading checks them first, so a truncated or altered file is refused in one
line instead of being read (or half-read by background threads). `share`
gives a file written through `tempfile` the user's umask.
"""

import hashlib
import os


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


def is_wellformed(records) -> bool:
  """Whether `records` (as read from JSON) is a non-empty record dict of
  relative paths inside their root."""
  return isinstance(records, dict) and bool(records) and all(
      isinstance(name, str) and not os.path.isabs(name)
      and ".." not in name.split(os.sep) and isinstance(record, dict)
      and isinstance(record.get("sha256"), str)
      and isinstance(record.get("bytes"), int)
      for name, record in records.items())


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
      return f"{path}: content differs from what was written (sha256)"
  return None
