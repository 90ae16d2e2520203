"""VP+LP (`vp_lp`), the built-in hybrid: a run stopped and resumed, its
export loaded into PyTorch (the prompt and a new fc on torchvision's
ResNet-18 give our logits), and a smoke study that runs it at its own smoke
sizes through the sweep and the report, never in claim 1."""

import json

import numpy as np
import torch

from conftest import smoke_config, torch_reference
from convert import cli
from reprog_jax import methods
from reprog_jax.metrics import metric_writer
from reprog_jax.model import network_dir as network_dir_lib
from reprog_jax.model import prompts
from reprog_jax.study import claims
from reprog_jax.study import grid as grid_lib
from reprog_jax.study import report
from reprog_jax.study import sweep
from reprog_jax.train import checkpoints
from reprog_jax.train import loop as train

TOLERANCE = 1e-4  # max |logit difference| in float32


def test_vp_lp_resumes_and_exports_what_pytorch_computes(
    tmp_path, network_dir, resnet18_state, capsys):
  workdir = tmp_path / "vplp"
  config = smoke_config("vp_lp", random_network="", network_dir=network_dir,
                        image_size=32, plot_interval=10)
  train.train_and_evaluate(config, str(workdir), stop_after_epoch=0)
  summary = train.train_and_evaluate(config, str(workdir))
  assert "resuming" in capsys.readouterr().out
  assert [r["epoch"] for r in metric_writer.read_metrics(workdir)] == [0, 1]
  assert (summary["method"], summary["method_module"]) == (
      "vp_lp", "reprog_jax.methods.vp_lp")
  assert (workdir / "plots" / "prompt.png").stat().st_size > 0

  out = tmp_path / "vplp.pth"
  assert cli.main(["export", str(workdir), "--out", str(out)]) == 0
  ckpt = torch.load(out, weights_only=True)
  assert set(ckpt) == {"visual_prompt_dict", "fc_dict", "epoch", "best_acc",
                       "exported_from"}
  program = ckpt["visual_prompt_dict"]["program"]
  mask = ckpt["visual_prompt_dict"]["mask"]
  assert program.shape == mask.shape == (3, 64, 64)
  assert ckpt["fc_dict"]["weight"].shape == (10, 512)

  # PyTorch, written here: the image padded into the 64-pixel canvas
  # (16 + 32 + 16), sigmoid(program) on the frame, ImageNet normalisation,
  # torchvision's ResNet-18 with the file's head as its fc.
  model = torch_reference("resnet18", resnet18_state)
  model.fc = torch.nn.Linear(512, 10)
  model.fc.load_state_dict(ckpt["fc_dict"])
  x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
  canvas = torch.nn.functional.pad(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), (16, 16, 16, 16))
  canvas = canvas + torch.sigmoid(program) * mask
  mean = torch.tensor(prompts.IMAGENET_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(prompts.IMAGENET_STD).view(1, 3, 1, 1)
  with torch.no_grad():
    expected = model.eval()((canvas - mean) / std).numpy()

  best = checkpoints.read(str(workdir))["best"]
  trained = {k: np.asarray(v)[0] for k, v in best["params"].items()}
  assert np.abs(trained["program"]).max() > 0  # It trained the frame too.
  method = methods.build(config, network_dir_lib.load(network_dir), 10, 32)
  got = np.asarray(method.scores(trained, network_dir_lib.load(network_dir),
                                 x))
  assert got.shape == expected.shape == (3, 10)
  np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_the_smoke_study_runs_vp_lp_at_its_smoke_sizes(tmp_path):
  from test_sweep import study_preset  # pylint: disable=g-import-not-at-top
  study = grid_lib.plain_study(study_preset("smoke"))
  assert study["smoke"] is True and study["method_overrides"] == {}
  study["methods"] = ["vp_lp"]  # A method the preset does not name.
  cell = "vplp/dense/cifar10/2-shot"
  [grid] = grid_lib.cells(study)
  assert grid.name == cell
  assert (grid.config.prompt_output_size, grid.config.pad) == (64, 8)
  outcomes = sweep.run(study, str(tmp_path))
  assert outcomes[cell]["status"] == "done", outcomes
  record = json.loads((tmp_path / cell / "cell.json").read_text())
  assert record["method_module"] == "reprog_jax.methods.vp_lp"
  assert json.loads((tmp_path / "study.json").read_text())[
      "method_modules"] == {"vp_lp": "reprog_jax.methods.vp_lp"}
  assert report.main([str(tmp_path)]) == 0
  assert "| VP+LP | dense |" in (tmp_path / "report.md").read_text()
  # A prompt with a new head: its own family, never claim 1's.
  assert claims.family("vp_lp") == "hybrid"
