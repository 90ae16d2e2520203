"""`convert`: checkpoint layouts, the lottery-ticket pair, and bad input."""

import argparse
import hashlib
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import listing, random_mask, save_pth, torch_reference
from convert import cli, torch_io
from reprog_jax.model import network_dir


def pytorch_remaining_percent(model):
  """The PyTorch version's `check_sparsity(model, conv1=False)`, transcribed."""
  total = zeros = 0.0
  for name, m in model.named_modules():
    if isinstance(m, torch.nn.Conv2d) and name != "conv1":
      total += float(m.weight.nelement())
      zeros += float(torch.sum(m.weight == 0))
  return 100 * (1 - zeros / total)


def _run(capsys, *args):
  code = cli.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return code, out, err


def test_lt_pair_converts_and_reports_the_sparsity_pytorch_counts(
    tmp_path, capsys):
  arch, k = "resnet50", 8
  state = torch_io.random_state_dict(arch, seed=5)
  mask = random_mask(state, keep=0.8 ** k, seed=6)
  lt = tmp_path / "lt"
  lt.mkdir()
  # The PyTorch version's files: both keyed with the `model.` prefix.
  weights = save_pth(lt / f"resnet50_dyn4_{k}_checkpoint.pth",
                     {f"model.{n}": v for n, v in state.items()})
  mask_file = save_pth(lt / f"resnet50_dyn4_{k}_mask.pth",
                       {f"model.{n}": v for n, v in mask.items()})
  code, out, err = _run(capsys, "torch", "--arch", arch, "--lt-dir", lt,
                        "--sparsity-state", k, "--out", tmp_path / "net",
                        "--no-verify")
  assert code == 0, err
  expected = pytorch_remaining_percent(torch_reference(arch, state, mask))
  assert 15.0 < expected < 18.5  # about 0.8**8 = 16.8 %
  meta = json.loads((tmp_path / "net" / "meta.json").read_text())
  assert meta["sparsity"]["remaining_percent"] == pytest.approx(expected, abs=1e-9)
  assert f"{expected:.2f} %" in out
  assert meta["ticket"]["sparsity_state"] == k and not meta["dense"]
  # These weights were not zeroed under the mask: reported, not hidden.
  raw_outside = sum(int(np.count_nonzero(state[n][m == 0]))
                    for n, m in mask.items())
  assert raw_outside > 0
  assert meta["weights_nonzero_outside_mask"] == raw_outside
  assert f"has {raw_outside:,} nonzero weights where the mask is 0" in out
  for key, path in [("weights", weights), ("mask", mask_file)]:
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert meta["sources"][key] == {"path": os.path.abspath(path),
                                    "sha256": digest}
  net = network_dir.load(tmp_path / "net")
  assert net.sparsity()["remaining_percent"] == pytest.approx(expected, abs=1e-9)
  # Per-layer figures agree with counting each torch layer directly.
  layer = "layer3.2.conv2"
  w = state[f"{layer}.weight"] * mask[f"{layer}.weight"]
  assert net.sparsity()["layers"][layer]["nonzero"] == np.count_nonzero(w)


@pytest.mark.parametrize("layout", ["state_dict", "model", "module.", "model."])
def test_checkpoint_layouts_convert_to_the_same_network(
    layout, tmp_path, resnet18_state, capsys):
  if layout.endswith("."):
    obj = {layout + k: v for k, v in resnet18_state.items()}
  else:
    obj = {layout: {k: torch.as_tensor(v) for k, v in resnet18_state.items()},
           "epoch": 3}
  path = save_pth(tmp_path / "w.pth", obj)
  code, _, err = _run(capsys, "torch", "--arch", "resnet18", "--weights", path,
                      "--out", tmp_path / "net", "--no-verify")
  assert code == 0, err
  params = network_dir.load(tmp_path / "net").params
  np.testing.assert_array_equal(  # OIHW -> HWIO
      params["layer2"]["0"]["downsample"]["0"]["kernel"],
      resnet18_state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["fc"]["kernel"],
                                resnet18_state["fc.weight"].T)


def test_random_init_says_so_and_verifies_against_torchvision(tmp_path, capsys):
  code, out, err = _run(capsys, "torch", "--arch", "resnet18", "--random-init",
                        "--out", tmp_path / "net", "--verify-size", "64")
  assert code == 0, err
  assert "RANDOMLY INITIALISED" in out
  meta = json.loads((tmp_path / "net" / "meta.json").read_text())
  assert meta["sources"]["weights"] == {"random_init": True, "seed": 0}
  assert meta["verification"]["max_abs_logit_diff"] < 1e-4
  assert meta["dense"] and meta["sparsity"]["mask_remaining_percent"] == 100.0


def test_force_replaces_an_existing_output(tmp_path, resnet18_pth, capsys):
  out = tmp_path / "net"
  args = ["torch", "--arch", "resnet18", "--weights", resnet18_pth,
          "--out", out, "--no-verify"]
  assert _run(capsys, *args)[0] == 0
  before = json.loads((out / "meta.json").read_text())["created"]
  assert _run(capsys, *args, "--force")[0] == 0
  assert network_dir.read_meta(out)["created"] >= before
  assert sorted(os.listdir(tmp_path)) == ["net"]  # No stray temporaries.


# --------------------------------------------------------------------------
# Bad input: a one-line message naming the file and key, exit 1, no output.
# --------------------------------------------------------------------------


def _bad_weights(tmp_path, resnet18_state, kind):
  state = dict(resnet18_state)
  if kind == "corrupt":
    path = tmp_path / "w.pth"
    path.write_bytes(b"PK\x03\x04 definitely not a zip archive" * 10)
    return str(path)
  if kind == "text":
    path = tmp_path / "w.pth"
    path.write_text("hello, I am a text file\n")
    return str(path)
  if kind == "pickle":  # A pickle, but not of tensors (protocol 4).
    path = tmp_path / "w.pth"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    return str(path)
  if kind == "objects":  # A real checkpoint that also pickles an object.
    tensors = {k: torch.as_tensor(v) for k, v in state.items()}
    return save_pth(tmp_path / "w.pth", {"state_dict": tensors,
                                         "args": argparse.Namespace(lr=0.1)})
  if kind == "list":
    return save_pth(tmp_path / "w.pth", [torch.zeros(3)])
  if kind == "axes":
    state["layer1.0.conv1.weight"] = np.zeros((64, 64, 3), np.float32)
  if kind == "missing":
    del state["layer1.0.bn1.running_var"]
  if kind == "unexpected":
    state["layer5.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
  if kind == "shape":
    state["layer1.1.conv2.weight"] = np.zeros((64, 64, 5, 5), np.float32)
  return save_pth(tmp_path / "w.pth", state)


@pytest.mark.parametrize("kind, arch, message", [
    ("corrupt", "resnet18", "w.pth: not a readable PyTorch checkpoint: a "
     "damaged or truncated zip archive (the format torch.save writes)"),
    ("text", "resnet18", "w.pth: not a readable PyTorch checkpoint: its "
     "contents are not in the format torch.save writes"),
    ("pickle", "resnet18", "w.pth: not a readable PyTorch checkpoint: its "
     "contents are not in the format torch.save writes"),
    ("objects", "resnet18", "w.pth: a PyTorch checkpoint holding Python "
     "objects besides tensors (argparse.Namespace), which are not loaded"),
    ("list", "resnet18", "w.pth: holds a list, not a state dict"),
    ("axes", "resnet18", "w.pth: key 'layer1.0.conv1.weight' has shape "
     "(64, 64, 3), resnet18 needs (64, 64, 3, 3)"),
    ("missing", "resnet18", "w.pth: missing key 'layer1.0.bn1.running_var'"),
    ("unexpected", "resnet18", "w.pth: unexpected key 'layer5.0.conv1.weight'"),
    ("shape", "resnet18", "w.pth: key 'layer1.1.conv2.weight' has shape "
     "(64, 64, 5, 5), resnet18 needs (64, 64, 3, 3)"),
    ("good", "resnet34", "w.pth: missing key 'layer1.2."),
    ("good", "resnet34", "(is --arch resnet34 right?)"),
    ("good", "resnet50", "(is --arch resnet50 right?)"),
])
def test_bad_weights(kind, arch, message, tmp_path, resnet18_state, capsys):
  src = tmp_path / "src"
  src.mkdir()
  weights = _bad_weights(src, resnet18_state, kind)
  before = listing(tmp_path)
  code, _, err = _run(capsys, "torch", "--arch", arch, "--weights", weights,
                      "--out", tmp_path / "net")
  assert code == 1
  assert err.count("\n") == 1 and err.startswith("convert: error: ")
  assert message in err
  assert "weights_only" not in err  # torch's advice to run the file's code.
  assert listing(tmp_path) == before  # Nothing written, not even temporaries.


def _bad_mask(resnet18_state, kind):
  mask = random_mask(resnet18_state, keep=0.5, seed=0)
  if kind == "no weight":
    mask["layer1.0.conv9.weight"] = np.ones((64, 64, 3, 3), np.float32)
  if kind == "batchnorm":
    mask["model.layer1.0.bn1.weight"] = np.ones(64, np.float32)
  if kind == "not 0/1":
    mask["layer2.0.conv1.weight"] = mask["layer2.0.conv1.weight"] * 0.5
  if kind == "shape":
    mask["fc.weight"] = np.ones((1000, 256), np.float32)
  if kind == "axes":
    mask["fc.weight"] = np.ones(1000 * 512, np.float32)
  return mask


@pytest.mark.parametrize("kind, message", [
    ("no weight", "m.pth: mask key 'layer1.0.conv9.weight' matches no conv or fc weight"),
    ("batchnorm", "m.pth: mask key 'model.layer1.0.bn1.weight' matches no conv or fc weight"),
    ("not 0/1", "m.pth: mask key 'layer2.0.conv1.weight' is not 0/1 (e.g. value 0.5)"),
    ("shape", "m.pth: mask key 'fc.weight' has shape (1000, 256), its weight has (1000, 512)"),
    ("axes", "m.pth: mask key 'fc.weight' has shape (512000,), its weight has (1000, 512)"),
])
def test_bad_masks(kind, message, tmp_path, resnet18_pth, resnet18_state, capsys):
  src = tmp_path / "src"
  src.mkdir()
  mask = save_pth(src / "m.pth", _bad_mask(resnet18_state, kind))
  before = listing(tmp_path)
  code, _, err = _run(capsys, "torch", "--arch", "resnet18", "--weights",
                      resnet18_pth, "--mask", mask, "--out", tmp_path / "net")
  assert code == 1 and err.count("\n") == 1
  assert message in err
  assert listing(tmp_path) == before


def test_existing_output_is_kept_without_force(tmp_path, resnet18_pth, capsys):
  out = tmp_path / "net"
  out.mkdir()
  (out / "precious.txt").write_text("do not lose me")
  code, _, err = _run(capsys, "torch", "--arch", "resnet18", "--weights",
                      resnet18_pth, "--out", out)
  assert code == 1
  assert f"{out}: exists; pass --force to replace it" in err
  assert listing(tmp_path) == ["net", "net/precious.txt"]


@pytest.mark.parametrize("kind, message", [
    ("workdir", "exists and is not a network directory (no meta.json "
     "written by `convert`); --force replaces only a `convert` output"),
    ("other meta.json", "exists and is not a network directory"),
    ("file", "exists and is a file, not a network directory"),
])
def test_force_replaces_only_a_network_directory(
    kind, message, tmp_path, resnet18_pth, capsys):
  out = tmp_path / "out"
  if kind == "file":
    out.write_text("precious")
  else:  # A training workdir, mid-run.
    (out / "checkpoints" / "3").mkdir(parents=True)
    (out / "config.json").write_text('{"method": "ilm_vp"}')
    (out / "metrics.jsonl").write_text("{}\n")
    if kind == "other meta.json":
      (out / "meta.json").write_text('{"arch": "resnet18"}')
  before = listing(tmp_path)
  code, _, err = _run(capsys, "torch", "--arch", "resnet18", "--weights",
                      resnet18_pth, "--out", out, "--no-verify", "--force")
  assert code == 1 and err.count("\n") == 1
  assert f"convert: error: {out}: {message}" in err
  assert listing(tmp_path) == before
  if kind == "file":
    assert out.read_text() == "precious"


@pytest.mark.parametrize("size", ["0", "-8"])
def test_verify_size_must_be_positive(size, tmp_path, capsys):
  with pytest.raises(SystemExit) as exited:
    cli.main(["torch", "--arch", "resnet18", "--random-init", "--out",
              str(tmp_path / "net"), "--verify-size", size])
  assert exited.value.code == 1
  err = capsys.readouterr().err
  assert err == (f"python -m convert torch: error: argument --verify-size: "
                 f"{size} is not a positive integer (see --help)\n")
  assert listing(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_network_directory_permissions_follow_the_umask(
    umask, tmp_path, resnet18_pth, capsys):
  previous = os.umask(umask)
  try:
    code, _, err = _run(capsys, "torch", "--arch", "resnet18", "--weights",
                        resnet18_pth, "--out", tmp_path / "net", "--no-verify")
  finally:
    os.umask(previous)
  assert code == 0, err
  out = tmp_path / "net"
  paths = [out] + [os.path.join(root, name) for root, dirs, files
                   in os.walk(out) for name in dirs + files]
  assert len(paths) > 5
  for path in paths:
    mode = os.stat(path).st_mode & 0o777
    if umask == 0o022:  # Collaborators can read (and list) everything.
      wanted = 0o055 if os.path.isdir(path) else 0o044
      assert mode & wanted == wanted, (path, oct(mode))
    else:
      assert mode & 0o077 == 0, (path, oct(mode))


def test_missing_files_and_lt_dir(tmp_path, capsys):
  code, _, err = _run(capsys, "torch", "--arch", "resnet50", "--lt-dir",
                      tmp_path, "--sparsity-state", 9, "--out", tmp_path / "n")
  assert code == 1
  assert f"{tmp_path}/resnet50_dyn4_9_checkpoint.pth: no such weights file" in err
  assert listing(tmp_path) == []


def test_command_line_exit_status_and_single_line(tmp_path):
  bad = tmp_path / "bad.pth"
  # A pickle, but not torch.save's: torch warns about its protocol on
  # stderr before refusing it; only our line may reach the user.
  bad.write_bytes(pickle.dumps({"a": 1}, protocol=4))
  proc = subprocess.run(
      [sys.executable, "-m", "convert", "torch", "--arch", "resnet18",
       "--weights", str(bad), "--out", str(tmp_path / "net")],
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert proc.stderr.startswith(f"convert: error: {bad}: not a readable")
  assert proc.stderr.count("\n") == 1
  assert not (tmp_path / "net").exists()
