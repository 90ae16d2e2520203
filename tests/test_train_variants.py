"""ILM-VP's variants end to end through `reprog_jax.main` (run in this
process as the command runs it: `conftest.main_in_process`): BLM++ and the
padding prompt with FullyMap run, stop, resume and export."""

import json

import numpy as np
import pytest
import torch

from conftest import smoke_config
from convert import export
from reprog_jax import errors
from reprog_jax.metrics import metric_writer
from reprog_jax.model import prompts
from reprog_jax.train import checkpoints
from reprog_jax.train import run_config


def _run_stop_resume(main, workdir, *overrides):
  flags = ("--config=configs/ilm_vp.py:smoke", "--config.progress=False",
           "--config.epochs=2", *overrides)
  first = main(workdir, *flags, "--stop_after_epoch=0")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "stopped after epoch 0" in first.stdout
  second = main(workdir, *flags)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resuming" in second.stdout
  assert [r["epoch"] for r in metric_writer.read_metrics(workdir)] == [0, 1]
  return json.loads((workdir / "summary.json").read_text())


def test_blmpp_runs_resumes_and_exports_its_matrix(tmp_path,
                                                   main_in_process):
  workdir = tmp_path / "blmpp"
  summary = _run_stop_resume(main_in_process, workdir,
                             "--config.label_mapping=blmpp")
  saved = checkpoints.read(workdir)
  matrix = saved["mapping_sequence"][0]
  assert matrix.shape == (1000, 10) and matrix.dtype == np.float32
  np.testing.assert_allclose(matrix.sum(0), 1.0, atol=1e-5)  # BLM's columns.
  # The summary names each target's source of largest weight.
  assert summary["mapping_sequence"] == matrix.argmax(0).tolist()
  # The published experiments' defaults: lap 1, k = max(1, int(0.15 T)).
  assert summary["config"]["top_k"] is None and summary["config"]["lap"] == 1
  assert summary["config"]["topk_ratio"] == 0.15
  assert (workdir / "plots" / "label_mapping.png").stat().st_size > 0

  export.export(str(workdir), str(tmp_path / "blmpp.pth"))
  ckpt = torch.load(tmp_path / "blmpp.pth", weights_only=True)
  assert set(ckpt) == {"visual_prompt_dict", "mapping_matrix", "epoch",
                       "best_acc", "exported_from"}
  np.testing.assert_array_equal(ckpt["mapping_matrix"].numpy(),
                                saved["best"]["mapping_sequence"][0])


def test_padding_prompt_with_fullymap_runs_resumes_and_exports(
    tmp_path, main_in_process):
  workdir = tmp_path / "padding"
  _run_stop_resume(main_in_process, workdir, "--config.prompt=padding",
                   "--config.label_mapping=fullymap")
  saved = checkpoints.read(workdir)
  params = saved["state"]["params"]
  assert params["mapping_kernel"].shape == (1, 1000, 10)
  assert saved["mapping_sequence"][0].tolist() == list(range(10))
  assert not (workdir / "plots" / "prompt.png").exists()  # No frame.
  assert (workdir / "plots" / "label_mapping.png").stat().st_size > 0

  export.export(str(workdir), str(tmp_path / "pad.pth"), which="last")
  ckpt = torch.load(tmp_path / "pad.pth", weights_only=True)
  assert set(ckpt) == {"padding_prompt_dict", "output_mapping_dict", "epoch",
                       "best_acc", "exported_from"}
  np.testing.assert_array_equal(
      ckpt["output_mapping_dict"]["weight"].numpy(),
      params["mapping_kernel"][0].T)
  np.testing.assert_array_equal(ckpt["output_mapping_dict"]["bias"].numpy(),
                                params["mapping_bias"][0])
  np.testing.assert_array_equal(
      ckpt["padding_prompt_dict"]["program"].numpy(),
      params["program"][0].transpose(2, 0, 1))
  # The smoke preset's 64-pixel canvas with an 8-pixel border.
  mask = ckpt["padding_prompt_dict"]["mask"].numpy()
  np.testing.assert_array_equal(
      mask, np.broadcast_to(prompts.border_mask(64, 8),
                            (64, 64, 3)).transpose(2, 0, 1))


@pytest.mark.parametrize("overrides, message", [
    ({"prompt": "pad"}, "prompt 'pad' is not one of expansive, padding"),
    ({"prompt": "padding", "pad": 40},
     "pad 40 must be in [1, prompt_output_size // 2 = 32]"),
    ({"label_mapping": "blm", "lap": -1.0}, "lap must be >= 0"),
    ({"label_mapping": "blmpp", "top_k": 0}, "top_k must be in [1, 1000]"),
])
def test_bad_variant_fields_are_one_line_config_errors(overrides, message):
  with pytest.raises(errors.ConfigError) as caught:
    run_config.check(smoke_config("ilm_vp", **overrides))
  assert message in str(caught.value) and "\n" not in str(caught.value)


def test_blmpp_seeds_vmapped_equal_a_seed_alone(tmp_path):
  from conftest import assert_records_close, per_seed_records
  from reprog_jax.train import loop as train
  train.train_and_evaluate(
      smoke_config("ilm_vp", epochs=1, seeds=(0, 1), label_mapping="blmpp"),
      str(tmp_path / "together"))
  train.train_and_evaluate(
      smoke_config("ilm_vp", epochs=1, seed=1, label_mapping="blmpp"),
      str(tmp_path / "alone"))
  together, alone = (checkpoints.read(tmp_path / w)["mapping_sequence"]
                     for w in ("together", "alone"))
  assert together.shape == (2, 1000, 10) and alone.shape == (1, 1000, 10)
  np.testing.assert_allclose(together[1], alone[0], rtol=0, atol=1e-5)
  assert np.abs(together[0] - together[1]).max() > 1e-3  # Own subsets.
  # Every (epoch, seed 1) record of the group is the seed's alone.
  assert_records_close(per_seed_records(tmp_path / "together"),
                       per_seed_records(tmp_path / "alone"), 1e-4)
