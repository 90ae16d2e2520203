"""`python -m reprog_jax.data.doctor`: a data root's table, unreadable
files by path, exit status 0 / 1 / 2."""

import os
import shutil

import pytest

from reprog_jax.data import doctor

import torchvision_files

# What `torchvision_files.write_root` writes: (train, test, classes) per
# dataset (EuroSAT: 10 of each class's 100 held out).
WRITTEN = {
    "cifar10": (35, 5, 10), "cifar100": (7, 5, 100), "gtsrb": (64, 4, 43),
    "dtd": (47, 47, 47), "flowers102": (3, 4, 102), "oxfordpets": (3, 2, 37),
    "eurosat": (90, 10, 10), "food101": (5, 3, 101), "sun397": (5, 3, 397),
    "ucf101": (5, 3, 101), "stanfordcars": (5, 3, 196),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """A whole tiny PyTorch data root, less SVHN, with one corrupt JPEG."""
  path = str(tmp_path_factory.mktemp("doctor_root"))
  torchvision_files.write_root(path)
  shutil.rmtree(os.path.join(path, "svhn"))
  with open(os.path.join(path, "eurosat", "eurosat", "2750", "Pasture",
                         "Pasture_4.jpg"), "wb") as f:
    f.write(b"\xff\xd8 not a jpeg")
  return path


def _rows(out):
  """{dataset: its table row's cells} from the doctor's output."""
  rows = {}
  for line in out.splitlines():
    cells = line.split()
    # Table rows start at the margin; the unreadable files are indented.
    if cells and line[0] != " " and cells[0] in doctor.registry.dataset_names():
      rows[cells[0]] = line
  return rows


def test_root_with_a_corrupt_file_and_a_missing_dataset(root, capsys):
  assert doctor.main([root, "--source", "torchvision"]) == 1
  captured = capsys.readouterr()
  out = captured.out
  rows = _rows(out)
  assert len(rows) == 13
  assert rows["svhn"].split()[1:3] == ["not", "found"]
  assert "expects svhn/train_32x32.mat, svhn/test_32x32.mat" in rows["svhn"]
  assert rows["caltech101"].split()[1] == "n/a"
  for name, (train, test, classes) in WRITTEN.items():
    cells = rows[name].split()
    status = ["1", "unreadable"] if name == "eurosat" else ["ok"]
    assert cells[1:1 + len(status)] == status, rows[name]
    assert cells[1 + len(status):4 + len(status)] == [str(train), str(test),
                                                      str(classes)]
  assert rows["eurosat"].endswith("10% stratified, seed 1")
  assert rows["cifar10"].endswith("  -")
  bad = os.path.join(root, "eurosat", "eurosat", "2750", "Pasture",
                     "Pasture_4.jpg")
  unreadable = out[out.index("Unreadable (1):"):].splitlines()[1]
  assert unreadable.strip().startswith("eurosat (")
  assert f"cannot read {bad} (cannot identify image file)" in unreadable
  assert "Not found (1): svhn" in out
  assert captured.err == ""


def test_quick_opens_files_and_datasets_selects(root, capsys):
  assert doctor.main([root, "--source=torchvision", "--quick",
                      "--datasets", "eurosat,svhn"]) == 1
  out = capsys.readouterr().out
  assert set(_rows(out)) == {"eurosat", "svhn"}
  assert "Pasture_4.jpg" in out and "each file opened (--quick)" in out


def test_truncated_jpeg_opens_but_does_not_decode(tmp_path, capsys):
  torchvision_files.write_dtd(str(tmp_path))
  path = os.path.join(tmp_path, "dtd", "dtd", "dtd", "images", "texture05",
                      "texture05_test.jpg")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 30)
  args = [str(tmp_path), "--source", "torchvision", "--datasets", "dtd"]
  assert doctor.main(args + ["--quick"]) == 0
  assert "Everything found is readable." in capsys.readouterr().out
  assert doctor.main(args) == 1
  out = capsys.readouterr().out
  assert f"cannot read {path} (image file is truncated" in out


def test_missing_datasets_alone_are_not_an_error(tmp_path, capsys):
  torchvision_files.write_cifar(str(tmp_path), "cifar10")
  assert doctor.main([str(tmp_path), "--source", "torchvision"]) == 0
  out = capsys.readouterr().out
  assert _rows(out)["cifar10"].split()[1] == "ok"
  assert "Not found (11)" in out and "Everything found is readable." in out


def test_nothing_found_says_so_with_each_layout(tmp_path, capsys):
  assert doctor.main([str(tmp_path), "--source", "folder",
                      "--datasets", "gtsrb,dtd"]) == 0
  out = capsys.readouterr().out
  assert "expects folders/gtsrb/{train,test}/<class>/<image>" in out
  assert "Nothing found: is ROOT the data root of this --source?" in out


@pytest.mark.parametrize("args,needle", [
    (["--datasets", "cifar10,imagenet"], "unknown dataset imagenet"),
    (["--source", "pytorch"], "invalid choice: 'pytorch'"),
    (["--folder_root", "x"], "give one name with --datasets"),
])
def test_bad_usage_is_one_line_and_status_2(tmp_path, capsys, args, needle):
  with pytest.raises(SystemExit) as exit_status:
    doctor.main([str(tmp_path)] + args)
  assert exit_status.value.code == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and needle in err


def test_root_that_is_not_a_directory_is_bad_usage(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_status:
    doctor.main([str(tmp_path / "nowhere")])
  assert exit_status.value.code == 2
  assert "is not a directory" in capsys.readouterr().err
