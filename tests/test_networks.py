"""Parity: converted Flax ResNets compute what torchvision computes."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import random_mask, run_torch, save_pth, torch_reference
from convert import cli, torch_io
from reprog_jax import fileio
from reprog_jax.model import masks as masks_lib
from reprog_jax.model import network as network_lib
from reprog_jax.model import network_dir

TOLERANCE = 1e-4  # max |logit difference| in float32


def _convert(tmp_path, arch, state_dict, mask=None):
  args = ["torch", "--arch", arch, "--weights",
          save_pth(tmp_path / "w.pth", state_dict), "--out",
          str(tmp_path / "net"), "--no-verify"]
  if mask is not None:
    args += ["--mask", save_pth(tmp_path / "m.pth", mask)]
  assert cli.main(args) == 0
  return network_dir.load(tmp_path / "net")


@pytest.fixture(scope="module", params=["resnet18", "resnet50"])
def case(request, tmp_path_factory):
  arch = request.param
  state = torch_io.random_state_dict(arch, seed=3)
  mask = random_mask(state, keep=0.2, seed=4)  # 80 % sparse
  dense = _convert(tmp_path_factory.mktemp("dense"), arch, state)
  ticket = _convert(tmp_path_factory.mktemp("ticket"), arch, state, mask)
  return arch, state, mask, dense, ticket


@pytest.mark.parametrize("size", [224, 64])
def test_dense_logits_match_torchvision(case, size):
  arch, state, _, dense, _ = case
  x = np.random.default_rng(size).standard_normal(
      (2, size, size, 3)).astype(np.float32)
  expected = run_torch(torch_reference(arch, state), x)
  got = np.asarray(dense.logits(x))
  assert got.shape == (2, 1000) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("size", [224, 64])
def test_ticket_logits_match_torchvision_weight_times_mask(case, size):
  arch, state, mask, dense, ticket = case
  x = np.random.default_rng(size + 1).standard_normal(
      (2, size, size, 3)).astype(np.float32)
  expected = run_torch(torch_reference(arch, state, mask), x)
  got = np.asarray(ticket.logits(x))
  np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
  # The mask matters: the dense network answers differently.
  assert np.abs(np.asarray(dense.logits(x)) - expected).max() > 100 * TOLERANCE


def test_features_match_torchvision_pooled_features(case):
  arch, state, mask, _, ticket = case
  x = np.random.default_rng(7).standard_normal((2, 64, 64, 3)).astype(np.float32)
  expected = run_torch(torch_reference(arch, state, mask), x, features=True)
  got = np.asarray(ticket.features(x))
  assert got.shape == (2, 2048 if arch == "resnet50" else 512)
  np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_ticket_and_dense_share_one_code_path(case):
  _, _, _, dense, ticket = case
  # Same tree structure: a ticket is the dense network plus a mask pytree.
  assert (jax.tree.structure(dense.masks, is_leaf=lambda m: m is None)
          == jax.tree.structure(ticket.masks, is_leaf=lambda m: m is None))
  flat = jax.tree_util.tree_flatten_with_path(
      ticket.masks, is_leaf=lambda m: m is None)[0]
  masked = {jax.tree_util.keystr(p) for p, m in flat if m is not None}
  # Masks sit exactly on the conv kernels and the fc kernel.
  assert all(k.endswith("['kernel']") for k in masked)
  n_convs = {"resnet18": 20, "resnet50": 53}[case[0]]
  assert len(masked) == n_convs + 1


def test_bfloat16_compute_keeps_float32_params_and_is_close(resnet18_state):
  from convert.torch_to_flax import convert_state_dict
  from reprog_jax.model import resnet
  tree = convert_state_dict(resnet18_state, "resnet18")
  masks = masks_lib.dense(tree["params"])
  x = np.random.default_rng(9).standard_normal((2, 64, 64, 3)).astype(np.float32)
  net = network_lib.make_network(resnet.ResNet18(dtype=jax.numpy.bfloat16),
                                 tree["params"], tree["batch_stats"], masks,
                                 {"arch": "resnet18"})
  got = network_lib.forward(net, x)
  assert got.dtype == np.float32  # Logits come back float32 for the loss.
  expected = run_torch(torch_reference("resnet18", resnet18_state), x)
  # bfloat16 keeps ~3 significant digits: close to PyTorch, not equal.
  err = np.abs(np.asarray(got) - expected).max()
  assert TOLERANCE < err < 0.1 * np.abs(expected).max()


def test_a_random_network_first_made_inside_a_trace_is_not_kept_traced():
  """`random_network` keeps its networks per process, but not one made
  under `jax.eval_shape` (its leaves are tracers): the next call outside
  makes a concrete one that a jitted function can use."""
  shapes = jax.eval_shape(lambda: network_lib.random_network("resnet_mini",
                                                              seed=11))
  network = network_lib.random_network("resnet_mini", seed=11)
  leaves = jax.tree.leaves(network.params)
  assert not any(isinstance(x, jax.core.Tracer) for x in leaves)
  assert [x.shape for x in leaves] == [
      x.shape for x in jax.tree.leaves(shapes.params)]
  logits = network_lib.forward(network, np.zeros((1, 32, 32, 3), np.float32))
  assert logits.shape == (1, 1000) and np.isfinite(logits).all()
  assert network_lib.random_network("resnet_mini", seed=11) is network


def test_parameter_count_matches_torchvision():
  import torchvision
  for arch, count in [("resnet18", 11_689_512), ("resnet34", 21_797_672),
                      ("resnet50", 25_557_032)]:
    tree = network_lib.abstract_variables(arch)["params"]
    ours = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))
    theirs = sum(p.numel() for p in getattr(torchvision.models, arch)().parameters())
    assert ours == theirs == count


def test_load_rejects_a_directory_that_is_not_a_convert_output(tmp_path):
  (tmp_path / "meta.json").write_text("{\"format\": \"something else\"}")
  with pytest.raises(network_dir.NetworkDirError, match="not a reprog-jax network"):
    network_dir.load(tmp_path)
  with pytest.raises(network_dir.NetworkDirError, match="no such network directory"):
    network_dir.load(tmp_path / "missing")


def test_summary_command_prints_sparsity_and_a_prediction(
    tmp_path, resnet18_pth, capsys):
  assert cli.main(["torch", "--arch", "resnet18", "--weights", resnet18_pth,
                   "--out", str(tmp_path / "net"), "--no-verify"]) == 0
  capsys.readouterr()
  assert cli.main(["inspect", str(tmp_path / "net")]) == 0
  out = capsys.readouterr().out
  assert "resnet18, 1000 classes, dense" in out
  assert "remaining weight (PyTorch definition: convs except conv1): 100.00 %" in out
  assert "top-5 prediction for a synthetic test pattern" in out
  # The five lines name real ImageNet classes, most probable first.
  probs = [float(l.split("%")[0]) for l in out.splitlines()[-5:]]
  assert probs == sorted(probs, reverse=True)
  assert cli.main(["inspect", str(tmp_path / "missing")]) == 1


# --------------------------------------------------------------------------
# A damaged or malformed directory: refused in one line, naming the file.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory, resnet18_pth):
  out = tmp_path_factory.mktemp("converted") / "net"
  assert cli.main(["torch", "--arch", "resnet18", "--weights", resnet18_pth,
                   "--out", str(out), "--no-verify"]) == 0
  return out


def _copy(converted, tmp_path):
  net = tmp_path / "net"
  shutil.copytree(converted, net)
  return net


def _largest_file(net):
  return max((p for p in (net / "checkpoint").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


def test_meta_records_the_sha256_of_every_checkpoint_file(converted):
  files = json.loads((converted / "meta.json").read_text())["files"]
  on_disk = sorted(str(p.relative_to(converted))
                   for p in (converted / "checkpoint").rglob("*") if p.is_file())
  assert sorted(files) == on_disk
  for name, record in files.items():
    data = (converted / name).read_bytes()
    assert record == {"sha256": hashlib.sha256(data).hexdigest(),
                      "bytes": len(data)}


def test_altered_checkpoint_bytes_are_refused(converted, tmp_path):
  net = _copy(converted, tmp_path)
  victim = _largest_file(net)
  with open(victim, "r+b") as f:  # 4 KiB overwritten mid-file.
    f.seek(victim.stat().st_size // 2)
    f.write(b"\xa5" * 4096)
  with pytest.raises(network_dir.NetworkDirError) as raised:
    network_dir.load(net)
  message = str(raised.value)
  assert message.startswith(f"{victim}: content differs from what was "
                            f"written (sha256 mismatch")
  assert "re-run `python -m convert" in message and "\n" not in message


def test_verification_can_be_switched_off(converted, monkeypatch):
  hashed = []
  real = fileio.file_sha256
  monkeypatch.setattr(fileio, "file_sha256",
                      lambda path: hashed.append(path) or real(path))
  network_dir.load(converted)
  assert len(hashed) == len(network_dir.read_meta(converted)["files"])
  hashed.clear()
  monkeypatch.setenv(network_dir.VERIFY_ENV, "0")
  network_dir.load(converted)
  network_dir.load(converted, verify=False)
  assert not hashed


def test_directory_written_before_hashes_still_loads_with_a_note(
    converted, tmp_path, capsys):
  net = _copy(converted, tmp_path)
  meta = json.loads((net / "meta.json").read_text())
  del meta["files"]
  (net / "meta.json").write_text(json.dumps(meta))
  loaded = network_dir.load(net)
  out = capsys.readouterr().out
  assert out.count("\n") == 1
  assert "written before networks recorded file hashes" in out
  np.testing.assert_array_equal(loaded.params["fc"]["kernel"],
                                network_dir.load(converted).params["fc"]["kernel"])


def test_truncated_checkpoint_is_one_line_without_tracebacks(
    converted, tmp_path):
  net = _copy(converted, tmp_path)
  victim = _largest_file(net)
  os.truncate(victim, victim.stat().st_size // 3)
  env = dict(os.environ, **{network_dir.VERIFY_ENV: "0"})  # Sizes still count.
  proc = subprocess.run([sys.executable, "-m", "convert", "inspect", str(net)],
                        capture_output=True, text=True, timeout=120, env=env)
  assert proc.returncode == 1
  assert proc.stderr.count("\n") == 1, proc.stderr
  assert proc.stderr.startswith(f"convert: error: {victim}: ")
  assert "truncated" in proc.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("arch"), "'arch' is None, not one of resnet18"),
    (lambda m: m.update(arch="resnet7"), "'arch' is 'resnet7', not one of"),
    (lambda m: m.update(num_classes="ten"), "'num_classes' is 'ten', not a "
     "positive integer"),
    (lambda m: m.pop("dense"), "'dense' is None, not true or false"),
    (lambda m: m.update(files=[1, 2]), "'files' is malformed"),
    (lambda m: m["files"].update({"../../etc/passwd": {"sha256": "0",
                                                       "bytes": 1}}),
     "'files' entry '../../etc/passwd' is malformed"),
    (None, "not valid JSON at line 1 column 12"),  # The open string.
])
def test_malformed_meta_json_is_one_line(edit, message, converted, tmp_path):
  net = _copy(converted, tmp_path)
  meta = json.loads((net / "meta.json").read_text())
  if edit is None:
    (net / "meta.json").write_text('{"format": "r')
  else:
    edit(meta)
    (net / "meta.json").write_text(json.dumps(meta))
  with pytest.raises(network_dir.NetworkDirError) as raised:
    network_dir.load(net)
  assert str(raised.value).startswith(f"{net}")
  assert message in str(raised.value)
  assert "\n" not in str(raised.value)
