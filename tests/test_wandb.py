"""Weights & Biases (`reprog_jax.metrics.wandb_log`): off by default, a one-line
error without wandb, and a smoke run (two seeds, stopped and resumed)
logged in W&B's offline mode, read back from its local run files."""

import glob
import json
import os
import sys

import numpy as np
import pytest

from conftest import smoke_config
from reprog_jax import layout
from reprog_jax import errors
from reprog_jax.metrics import metric_writer
from reprog_jax.metrics import plots
from reprog_jax.metrics import prompt_plots
from reprog_jax.train import loop as train
from reprog_jax.metrics import wandb_log
from reprog_jax.train import workdir as workdir_lib


def test_off_unless_a_project_is_set(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)
  config = smoke_config()
  assert config.wandb.project is None and not wandb_log.enabled(config)
  wandb_log.check(config)  # Off: wandb is never imported.
  assert wandb_log.start(config, str(tmp_path), resume=False) is None
  assert os.listdir(tmp_path) == []


def test_missing_wandb_or_bad_mode_is_one_line(monkeypatch):
  config = smoke_config(wandb__project="reprog")
  monkeypatch.setitem(sys.modules, "wandb", None)
  with pytest.raises(errors.UserError, match=r"pip install -e '\.\[wandb\]'"
                     ) as caught:
    wandb_log.check(config)
  assert "\n" not in str(caught.value)
  config.wandb.mode = "cloud"
  with pytest.raises(wandb_log.WandbError, match="'cloud' is not one of "
                     "online, offline"):
    wandb_log.check(config)


def test_wandb_fields_are_not_a_config_change():
  dtype = "float32"
  plain = workdir_lib.comparable(smoke_config(), dtype)
  logged = workdir_lib.comparable(smoke_config(
      wandb__project="reprog", wandb__entity="lab", wandb__name="a",
      wandb__group="g", wandb__tags=("x",), wandb__mode="offline"), dtype)
  assert logged == plain
  # A field that changes what is computed still counts.
  assert workdir_lib.comparable(smoke_config(lr=0.5), dtype) != plain


def test_run_id_is_kept_for_a_resume_and_new_otherwise(tmp_path):
  first = wandb_log._run_id(str(tmp_path), resume=False)
  assert json.loads((tmp_path / layout.WANDB_FILE).read_text()) == {
      "id": first}
  assert wandb_log._run_id(str(tmp_path), resume=True) == first
  fresh = wandb_log._run_id(str(tmp_path), resume=False)
  assert fresh != first
  assert wandb_log._run_id(str(tmp_path), resume=True) == fresh
  assert sorted(os.listdir(tmp_path)) == [layout.WANDB_FILE]  # No .tmp.


class RecordingMirror:

  def __init__(self):
    self.calls = []

  def scalars(self, values, step):
    self.calls.append(("scalars", dict(values), step))

  def image(self, tag, path, step):
    self.calls.append(("image", tag, path, step))

  def close(self):
    self.calls.append(("close",))


def test_metric_writer_mirrors_what_tensorboard_gets(tmp_path):
  mirror = RecordingMirror()
  png = str(tmp_path / "p.png")
  prompt_plots.plot_prompted_examples(np.zeros((1, 4, 4, 3)), png)
  with metric_writer.MetricWriter(str(tmp_path), mirror=mirror) as writer:
    writer.write(2, {"test_acc": 0.5, "best_epoch": 1, "method": "vp",
                     "done": True}, seed=3, tag_prefix="seed_3/")
    writer.image("seed_3/prompt", png, 2)
  # Numbers only (not strings, not bools), under the TensorBoard tags.
  assert mirror.calls == [
      ("scalars", {"seed_3/test_acc": 0.5, "seed_3/best_epoch": 1}, 2),
      ("image", "seed_3/prompt", png, 2),
      ("close",)]


# ---------------------------------------------------------------------------
# A smoke run, logged offline.
# ---------------------------------------------------------------------------


def wandb_records(path):
  """The records of a `.wandb` file: W&B's header, then LevelDB-log
  framing (32 KiB blocks; records of 7-byte headers, whole or in parts)."""
  # pylint: disable-next=g-import-not-at-top
  from wandb.proto import wandb_internal_pb2
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B"
  block, position, pending = 32768, 7, b""
  while position + 7 <= len(data):
    if block - position % block < 7:  # A block's tail too short: padding.
      position += block - position % block
      continue
    length = int.from_bytes(data[position + 4:position + 6], "little")
    kind = data[position + 6]  # 1 whole, 2 first, 3 middle, 4 last.
    pending += data[position + 7:position + 7 + length]
    position += 7 + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      yield record
      pending = b""


def history(run_dir):
  """{step: {key: value}} of an offline run directory (images as their
  paths)."""
  steps = {}
  for record in wandb_records(glob.glob(os.path.join(run_dir,
                                                     "run-*.wandb"))[0]):
    if record.WhichOneof("record_type") == "history":
      items = {item.key or "/".join(item.nested_key):
               json.loads(item.value_json) for item in record.history.item}
      steps[record.history.step.num] = items
  return steps


def run_config_values(run_dir):
  for record in wandb_records(glob.glob(os.path.join(run_dir,
                                                     "run-*.wandb"))[0]):
    if record.WhichOneof("record_type") == "run":
      return {item.key: json.loads(item.value_json)
              for item in record.run.config.update}
  raise AssertionError(f"no run record in {run_dir}")


def _figure_texts(figure):
  return " ".join([text.get_text() for text in figure.texts]
                  + [axes.get_title() for axes in figure.axes])


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
  """Epoch 0, stopped; then resumed for epoch 1. Records every figure's
  title text on the way."""
  pytest.importorskip("wandb", reason="the wandb extra is not installed")
  workdir = str(tmp_path_factory.mktemp("runs") / "vp")
  figures = []
  with pytest.MonkeyPatch.context() as patch:
    for name in ("WANDB_DIR", "WANDB_MODE", "WANDB_API_KEY"):
      patch.delenv(name, raising=False)
    patch.setenv("WANDB_SILENT", "true")
    patch.setenv("WANDB_CONSOLE", "off")
    for module in (plots, prompt_plots):
      for name in dir(module):
        if name.startswith("plot_"):
          def spy(*args, _draw=getattr(module, name), **kwargs):
            figure = _draw(*args, **kwargs)
            figures.append((_draw.__name__, _figure_texts(figure)))
            return figure
          patch.setattr(module, name, spy)
    config = smoke_config(seeds=(3, 4), wandb__project="reprog-tests",
                          wandb__mode="offline", wandb__tags=("smoke",),
                          plot_interval=10)  # Its figures: the last epoch's.
    assert train.train_and_evaluate(config, workdir, stop_after_epoch=0) == {}
    train.train_and_evaluate(config, workdir)
  runs = sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*")))
  return workdir, runs, figures


def test_offline_run_logs_config_metrics_and_pictures(offline_run):
  workdir, runs, _ = offline_run
  assert len(runs) == 2  # The first job and its resumption.
  records = metric_writer.read_metrics(workdir)
  for epoch, run_dir in enumerate(runs):
    logged = history(run_dir)
    assert list(logged) == [epoch]  # Step = epoch, one step per job.
    for seed in (3, 4):
      record = next(r for r in records
                    if (r["epoch"], r["seed"]) == (epoch, seed))
      for name in ("lr", "train_loss", "train_acc", "test_acc", "test_ece",
                   "best_test_acc", "best_epoch"):
        assert logged[epoch][f"seed_{seed}/{name}"] == pytest.approx(
            record[name]), (epoch, seed, name)
      for picture in ("label_mapping", "prompt", "prompted_examples"):
        tag = f"seed_{seed}/{picture}"
        assert logged[epoch][f"{tag}/_type"] == "image-file"
        media = os.path.join(run_dir, "files", logged[epoch][f"{tag}/path"])
        assert os.path.getsize(media) > 0
    assert not any(key.startswith(("train_loss", "test_acc"))
                   for key in logged[epoch])  # Only per-seed tags.
  values = run_config_values(runs[0])
  assert values["method"] == "ilm_vp" and values["lr"] == 0.01
  assert values["seeds"] == [3, 4] and values["remaining_percent"] == 100.0
  assert values["wandb"]["tags"] == ["smoke"]


def test_resumed_run_continues_the_same_wandb_run(offline_run):
  workdir, runs, _ = offline_run
  with open(os.path.join(workdir, layout.WANDB_FILE)) as f:
    run_id = json.load(f)["id"]
  assert [os.path.basename(r).rsplit("-", 1)[-1] for r in runs] == [
      run_id, run_id]


def test_every_figure_says_the_network_was_random(offline_run):
  _, _, figures = offline_run
  drawn = {name for name, _ in figures}
  assert drawn == {"plot_seed_curves", "plot_reliability",
                   "plot_training_curves", "plot_label_mapping",
                   "plot_prompt", "plot_prompted_examples"}
  network = smoke_config().random_network  # The run's.
  for name, text in figures:
    assert f"RANDOMLY INITIALISED {network}:" in text, name


def test_online_without_a_login_is_one_line(tmp_path, monkeypatch):
  pytest.importorskip("wandb", reason="the wandb extra is not installed")
  for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
    monkeypatch.delenv(name, raising=False)
  # No stored login anywhere W&B looks.
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
  monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
  monkeypatch.setenv("WANDB_SILENT", "true")
  config = smoke_config(wandb__project="reprog")
  with pytest.raises(wandb_log.WandbError, match="wandb login") as caught:
    wandb_log.start(config, str(tmp_path), resume=False)
  assert "\n" not in str(caught.value)
