"""fileio: what every on-disk state a `kill -9` can leave looks like, and
that the readers of those files cope with each.

A writer can die (1) before its temporary file exists, (2) while filling it,
(3) between its fsync and the rename, (4) after the rename. (1) and (4) are
the old and the new file; (2) and (3) leave the old file (or none) and a
hidden temporary sibling. The kills here are real: a child process sends
itself SIGKILL inside the write, so no cleanup code runs.
"""

import json
import math
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from reprog_jax import fileio
from reprog_jax import layout
from reprog_jax.metrics import metric_writer
from reprog_jax.study import report


def _killed_while_writing(path, content: bytes, *, fsynced: bool) -> None:
  """Runs a child that writes `content` to `path` through `atomic_file` and
  SIGKILLs itself inside the block: mid-write, or (`fsynced`) once the
  temporary file is complete and flushed, just before the rename."""
  flush = "f.flush(); os.fsync(f.fileno())" if fsynced else ""
  half = len(content) if fsynced else len(content) // 2
  code = textwrap.dedent(f"""
      import os, signal
      from reprog_jax import fileio
      with fileio.atomic_file({str(path)!r}) as f:
        f.write({content[:half]!r})
        {flush}
        os.kill(os.getpid(), signal.SIGKILL)
      """)
  proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ),
                        capture_output=True, timeout=60)
  assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def _leftovers(directory) -> list[str]:
  return sorted(n for n in os.listdir(directory)
                if n.startswith(fileio.TMP_PREFIX))


def test_write_json_round_trips_refuses_nan_and_keeps_the_old_file(tmp_path):
  path = tmp_path / "x.json"
  fileio.write_json(path, {"a": [1, 2.5]})
  assert path.read_text() == '{\n  "a": [\n    1,\n    2.5\n  ]\n}\n'
  with pytest.raises(ValueError):
    fileio.write_json(path, {"a": math.nan})
  assert json.loads(path.read_text()) == {"a": [1, 2.5]}
  assert _leftovers(tmp_path) == []


def test_an_error_inside_the_write_leaves_the_old_file_and_no_temporary(
    tmp_path):
  path = tmp_path / "x.bin"
  fileio.write_bytes(path, b"old")
  with pytest.raises(RuntimeError):
    with fileio.atomic_file(path) as f:
      f.write(b"half of the ne")
      raise RuntimeError("disk full")
  assert path.read_bytes() == b"old"
  assert _leftovers(tmp_path) == []


def test_files_get_the_umask_not_tempfiles_0600(tmp_path):
  old = os.umask(0o022)
  try:
    fileio.write_text(tmp_path / "x.txt", "x")
    with fileio.atomic_directory(tmp_path / "d") as d:
      fileio.write_text(os.path.join(d, "y"), "y")
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(tmp_path / "x.txt").st_mode) == 0o644
  assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o755


@pytest.mark.parametrize("fsynced", [False, True])
def test_kill_during_a_write_leaves_the_old_file_and_a_hidden_temporary(
    tmp_path, fsynced):
  path = tmp_path / "x.json"
  fileio.write_json(path, {"version": 1})
  _killed_while_writing(path, b'{"version": 2}\n', fsynced=fsynced)
  assert json.loads(path.read_text()) == {"version": 1}
  left = _leftovers(tmp_path)
  assert len(left) == 1 and left[0].startswith(f"{fileio.TMP_PREFIX}x.json-")
  # The next write does not mind it; `remove_leftovers` clears it, and only
  # the temporaries of that one file.
  fileio.write_json(path, {"version": 3})
  assert json.loads(path.read_text()) == {"version": 3}
  other = tmp_path / f"{fileio.TMP_PREFIX}y.json-abc"
  other.write_text("another file's")
  fileio.remove_leftovers(path)
  assert _leftovers(tmp_path) == [other.name]


def test_a_killed_first_write_is_no_file_to_its_readers(tmp_path):
  # The report: a cell whose summary was being written has none yet.
  cell = tmp_path / "cell"
  cell.mkdir()
  _killed_while_writing(cell / layout.SUMMARY_FILE, b'{"seeds": []}',
                        fsynced=True)
  assert not (cell / layout.SUMMARY_FILE).exists()
  with pytest.raises(report.ReportError, match="no summary.json under it"):
    report.write(tmp_path)
  # The metrics: no file reads as no records.
  _killed_while_writing(tmp_path / layout.METRICS_FILE, b'{"epoch": 0}\n',
                        fsynced=False)
  assert metric_writer.read_metrics(str(tmp_path)) == []


def test_a_killed_truncation_of_the_metrics_keeps_the_old_records(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  for epoch in range(3):
    writer.write(epoch, {"loss": float(epoch)})
  writer.close()
  old = metric_writer.read_metrics(str(tmp_path))
  # What `truncate_after(0)` was writing when it was killed.
  _killed_while_writing(tmp_path / layout.METRICS_FILE,
                        b'{"epoch": 0, "loss": 0.0}\n', fsynced=True)
  assert metric_writer.read_metrics(str(tmp_path)) == old
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.truncate_after(0)
  writer.close()
  assert metric_writer.read_metrics(str(tmp_path)) == old[:1]


def test_atomic_directory_replaces_only_once_complete(tmp_path):
  path = tmp_path / "net"
  with fileio.atomic_directory(path) as d:
    fileio.write_text(os.path.join(d, "a"), "old")
  with pytest.raises(FileExistsError):
    with fileio.atomic_directory(path):
      pass
  with pytest.raises(RuntimeError):
    with fileio.atomic_directory(path, replace=True) as d:
      fileio.write_text(os.path.join(d, "a"), "new")
      raise RuntimeError("failed half-way")
  assert (path / "a").read_text() == "old"
  with fileio.atomic_directory(path, replace=True) as d:
    fileio.write_text(os.path.join(d, "a"), "new")
  assert (path / "a").read_text() == "new"
  assert sorted(os.listdir(tmp_path)) == ["net"]


def test_a_killed_directory_write_leaves_the_old_directory(tmp_path):
  path = tmp_path / "net"
  with fileio.atomic_directory(path) as d:
    fileio.write_text(os.path.join(d, "a"), "old")
  code = textwrap.dedent(f"""
      import os, signal
      from reprog_jax import fileio
      with fileio.atomic_directory({str(path)!r}, replace=True) as d:
        fileio.write_text(os.path.join(d, "a"), "new")
        os.kill(os.getpid(), signal.SIGKILL)
      """)
  proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ),
                        capture_output=True, timeout=60)
  assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
  assert (path / "a").read_text() == "old"
  assert len(_leftovers(tmp_path)) == 1  # Hidden; a listing skips it.


def test_file_records_name_what_differs(tmp_path):
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "a").write_bytes(b"abc")
  records = fileio.file_records(tmp_path, "d")
  assert records == {os.path.join("d", "a"): {
      # sha256("abc"), FIPS 180-2's first example.
      "sha256": "ba7816bf8f01cfea414140de5dae2223"
                "b00361a396177a9cb410ff61f20015ad",
      "bytes": 3}}
  assert fileio.malformed(records) is None
  assert fileio.first_difference(tmp_path, records) is None
  assert fileio.malformed([]) == fileio.malformed({}) == "is malformed"
  assert fileio.malformed({"../x": records[os.path.join("d", "a")]}) == (
      "entry '../x' is malformed")
  (tmp_path / "d" / "a").write_bytes(b"abd")
  assert fileio.first_difference(tmp_path, records, hashes=False) is None
  assert "content differs" in fileio.first_difference(tmp_path, records)
  (tmp_path / "d" / "a").write_bytes(b"ab")
  assert "2 bytes where 3 were written" in fileio.first_difference(
      tmp_path, records, hashes=False)
