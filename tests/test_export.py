"""`convert export`: a run's prompt or head, loaded into the PyTorch version."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import listing, smoke_config, torch_reference
from convert import cli
from reprog_jax.train import checkpoints
from reprog_jax import methods
from reprog_jax.model import network_dir as network_dir_lib
from reprog_jax.tools import torch_reference as ref
from reprog_jax.train import loop as train

TOLERANCE = 1e-4  # max |logit difference| in float32


def _train(workdir, name, network_dir, **overrides):
  config = smoke_config(name, random_network="", network_dir=network_dir,
                        **overrides)
  return train.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope="module")
def vp_run(tmp_path_factory, network_dir):
  workdir = tmp_path_factory.mktemp("runs") / "vp"
  _train(workdir, "ilm_vp", network_dir, seeds=(4, 5))
  return workdir


@pytest.fixture(scope="module")
def lp_run(tmp_path_factory, network_dir):
  workdir = tmp_path_factory.mktemp("runs") / "lp"
  _train(workdir, "linear_probe", network_dir, epochs=1)
  return workdir


def _export(capsys, run_dir, out, *args):
  code = cli.main(["export", str(run_dir), "--out", str(out),
                   *map(str, args)])
  captured = capsys.readouterr()
  assert code == 0, captured.err
  return torch.load(out, weights_only=True)  # Tensors and numbers only.


def _images(size, seed=0):
  return np.random.default_rng(seed).random((2, size, size, 3),
                                            dtype=np.float32)


@pytest.mark.parametrize("args, seed_index, which", [
    ((), 0, "best"),  # Default: the first seed's best epoch.
    (("--seed", 5, "--which", "last"), 1, "last"),
])
def test_visual_prompt_gives_our_logits_in_pytorch(
    args, seed_index, which, vp_run, network_dir, resnet18_state, tmp_path,
    capsys):
  ckpt = _export(capsys, vp_run, tmp_path / "vp.pth", *args)
  # The PyTorch version's best.pth / ckpt.pth keys and layouts.
  assert set(ckpt) == {"visual_prompt_dict", "mapping_sequence", "epoch",
                       "best_acc", "exported_from"}
  program, mask = (ckpt["visual_prompt_dict"][k] for k in ("program", "mask"))
  assert program.shape == mask.shape == (3, 64, 64)  # NCHW, smoke canvas.
  assert ckpt["mapping_sequence"].dtype == torch.int64
  saved = checkpoints.read(vp_run)
  if which == "best":
    params = saved["best"]["params"]
    mapping = saved["best"]["mapping_sequence"][seed_index]
    assert ckpt["epoch"] == saved["best"]["epoch"][seed_index]
  else:
    params = saved["state"]["params"]
    mapping = saved["mapping_sequence"][seed_index]
    assert ckpt["epoch"] == 1  # The smoke run's last epoch, from 0.
  assert ckpt["best_acc"] == pytest.approx(
      float(saved["best"]["test_acc"][seed_index]))
  assert ckpt["exported_from"]["seed"] == (4, 5)[seed_index]

  # PyTorch: the reference prompt holding the file's program, in front of a
  # torchvision ResNet-18 with the network's weights.
  theirs = ref.VisualPromptReference(
      torch_reference("resnet18", resnet18_state), image_size=32,
      mapping_sequence=ckpt["mapping_sequence"], output_size=64)
  assert torch.equal(theirs.mask, mask)  # Frame 1, image 0: 16 + 32 + 16.
  with torch.no_grad():
    theirs.program.copy_(program)
  x = _images(32)
  with torch.no_grad():
    expected = theirs.logits(ref._nchw(x)).numpy()

  ours = methods.ilm_vp.visual_prompt(image_size=32, num_classes=10, output_size=64)
  trained = {k: v[seed_index] for k, v in params.items()}
  assert np.abs(trained["program"]).max() > 0
  got = np.asarray(ours.scores(trained, network_dir_lib.load(network_dir), x))
  got = got[:, mapping]
  assert got.shape == expected.shape == (2, 10)
  np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_seeds_export_their_own_programs(vp_run, tmp_path, capsys):
  first = _export(capsys, vp_run, tmp_path / "a.pth", "--seed", 4)
  second = _export(capsys, vp_run, tmp_path / "b.pth", "--seed", 5)
  assert not torch.equal(first["visual_prompt_dict"]["program"],
                         second["visual_prompt_dict"]["program"])


def test_linear_probe_head_gives_our_logits_in_pytorch(
    lp_run, network_dir, resnet18_state, tmp_path, capsys):
  ckpt = _export(capsys, lp_run, tmp_path / "lp.pth")
  assert set(ckpt) == {"fc_dict", "epoch", "best_acc", "exported_from"}
  assert ckpt["fc_dict"]["weight"].shape == (10, 512)  # nn.Linear: (out, in)
  assert ckpt["epoch"] == 0
  # PyTorch: torchvision's ResNet-18 with the file's head as its fc.
  model = torch_reference("resnet18", resnet18_state)
  model.fc = torch.nn.Linear(512, 10)
  model.fc.load_state_dict(ckpt["fc_dict"])
  x = _images(64, seed=1)
  with torch.no_grad():
    expected = model.eval()(ref._normalize(ref._nchw(x))).numpy()

  head = {k: v[0] for k, v in checkpoints.read(lp_run)["best"]["params"].items()}
  ours = methods.linear_probe.linear_probe(num_features=512, num_classes=10)
  network = network_dir_lib.load(network_dir)
  got = np.asarray(ours.scores(head, network, ours.encode(network, x)))
  np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_bad_input_is_one_line(vp_run, network_dir, tmp_path, capsys):
  not_started = tmp_path / "not_started"  # Config written, no epoch done.
  not_started.mkdir()
  (not_started / "config.json").write_text(
      json.dumps({"method": "ilm_vp", "seed": 4, "seeds": None}))
  existing = tmp_path / "existing.pth"
  existing.write_text("keep me")
  cases = [
      (tmp_path / "missing", "out.pth", f"{tmp_path}/missing: no such run "
       "directory"),
      (network_dir, "out.pth", f"{network_dir}: not a training run (no "
       "config.json); pass the --workdir"),
      (not_started, "out.pth", f"{not_started}: no checkpoint yet"),
      (vp_run, "out.pth", f"{vp_run}: seed 9 is not one of the run's seeds "
       "(4, 5)"),
      (vp_run, existing, f"{existing}: exists; pass --force to replace it"),
  ]
  before = listing(tmp_path)
  for run_dir, out, message in cases:
    extra = ["--seed", "9"] if "seed 9" in message else []
    code = cli.main(["export", str(run_dir), "--out",
                     str(tmp_path / out), *extra])
    err = capsys.readouterr().err
    assert code == 1, message
    assert err.count("\n") == 1 and err.startswith("convert: error: ")
    assert message in err
  assert listing(tmp_path) == before  # Nothing written, not even temporaries.
  assert existing.read_text() == "keep me"
  assert not os.path.exists(os.path.join(vp_run, "out.pth"))


def test_which_validation_exports_the_validation_selected_epoch(
    tmp_path, vp_run, capsys):
  # Mock CIFAR-10 has 3 training examples per class: with no temperature
  # hold-out, the one outside each 2-shot subset forms the validation split.
  # (The smoke preset's random network: what is exported does not depend
  # on which network the prompt was trained for.)
  workdir = tmp_path / "with_validation"
  train.train_and_evaluate(smoke_config(
      "ilm_vp", epochs=3, calibration_holdout=0, validation_per_class=1),
                           str(workdir))
  saved = checkpoints.read(str(workdir))["best"]
  assert int(saved["val_epoch"][0]) >= 0
  exported = _export(capsys, workdir, tmp_path / "val.pth", "--which",
                     "validation")
  assert exported["epoch"] == int(saved["val_epoch"][0])
  program = exported["visual_prompt_dict"]["program"].numpy()
  np.testing.assert_array_equal(
      program, np.transpose(saved["val_params"]["program"][0], (2, 0, 1)))
  # A run without a validation split says so in one line.
  code = cli.main(["export", str(vp_run), "--out", str(tmp_path / "x.pth"),
                   "--which", "validation"])
  err = capsys.readouterr().err
  assert code == 1 and err.count("\n") == 1
  assert "no validation-selected epoch" in err
