"""The offline demo: its source task, its target data, and a --quick run."""

import csv
import json
import os
import pathlib

import jax
import numpy as np
from PIL import Image
import pytest

from reprog_jax.tools import demo
from reprog_jax import errors
from reprog_jax.model import label_mapping
from reprog_jax import methods
from reprog_jax.model import network as network_lib
from reprog_jax.model import network_dir
from reprog_jax.model import resnet
from reprog_jax.tools import source_task
from recompute_verdicts import recompute


def test_source_images_are_deterministic_and_coloured_by_class():
  images, labels = source_task.make_images(6, 8, size=32, seed=3)
  again, _ = source_task.make_images(6, 8, size=32, seed=3)
  other, _ = source_task.make_images(6, 8, size=32, seed=4)
  assert images.shape == (48, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(images, again)
  assert not np.array_equal(images, other)
  np.testing.assert_array_equal(labels, np.tile(np.arange(8), 6))
  names = source_task.class_names(8)
  assert names[:4] == ["red disc", "green disc", "blue disc", "yellow disc"]
  assert names[4] == "red ring"
  # Pixels where one channel clearly dominates: a red class has many red
  # ones and (but for a noisy pixel or two) no blue ones; the background
  # is near grey.
  rgb = images.astype(int)
  red = (rgb[..., 0] - rgb[..., 1:].max(-1)) > 100
  blue = (rgb[..., 2] - rgb[..., :2].max(-1)) > 100
  for i, label in enumerate(labels):
    if names[label].startswith("red"):
      assert red[i].sum() > 20 and blue[i].sum() < 5, i
    if names[label].startswith("blue"):
      assert blue[i].sum() > 20 and red[i].sum() < 5, i


def test_class_names_refuse_too_many_classes():
  with pytest.raises(ValueError, match="num_classes must be in"):
    source_task.class_names(source_task.MAX_CLASSES + 1)


def test_resnet_mini_has_torchvision_layout_at_a_quarter_width():
  model = resnet.get_architecture("resnet_mini")(num_classes=7)
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             np.zeros((1, 32, 32, 3), np.float32))
  params = variables["params"]
  assert params["conv1"]["kernel"].shape == (7, 7, 3, 16)
  assert set(params) == {"conv1", "bn1", "layer1", "layer2", "layer3",
                         "layer4", "fc"}
  assert set(params["layer4"]) == {"0"}
  assert params["layer4"]["0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
  assert params["layer2"]["0"]["downsample"]["0"]["kernel"].shape == (
      1, 1, 16, 32)
  assert params["fc"]["kernel"].shape == (128, 7)
  assert model.num_features == 128


def test_visual_prompt_maps_onto_a_small_networks_classes(tmp_path):
  names = [f"class {i}" for i in range(12)]
  method = methods.ilm_vp.visual_prompt(8, 10, 16, mapping="rlm",
                                 source_class_names=names)
  assert method.num_scores == 12
  mapping = method.epoch_mapping(0, None, [0, 1], None)
  assert mapping.shape == (2, 10)
  for row in mapping:
    assert len(set(row.tolist())) == 10 and row.max() < 12
  counts = np.zeros((12, 10), np.int32)
  counts[mapping[0], np.arange(10)] = 5
  paths = method.pictures(str(tmp_path), method.init(jax.random.key(0)),
                          counts, mapping[0],
                          np.zeros((2, 8, 8, 3), np.float32),
                          [str(i) for i in range(10)], "a title")
  assert os.path.getsize(paths["label_mapping"]) > 0
  with pytest.raises(errors.UserError, match="at most the network's 12"):
    methods.ilm_vp.visual_prompt(8, 13, 16, source_class_names=names)
  # Without names, ImageNet's 1000 as before.
  assert methods.ilm_vp.visual_prompt(8, 10, 16).num_scores == (
      label_mapping.NUM_IMAGENET_CLASSES)


def test_write_digits_is_a_stratified_folder_tree(tmp_path):
  root = tmp_path / "digits"
  counts = demo.write_digits(str(root), size=16, test_fraction=0.25)
  assert counts["train"] + counts["test"] == 1797  # the UCI test set
  for label in range(10):
    train = os.listdir(root / "train" / str(label))
    test = os.listdir(root / "test" / str(label))
    assert not set(train) & set(test)
    assert len(test) == round(0.25 * (len(train) + len(test)))
  first = min(os.listdir(root / "train" / "0"))
  with Image.open(root / "train" / "0" / first) as image:
    assert image.size == (16, 16)
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_quick_demo_end_to_end_then_resumes(tmp_path, capsys):
  workdir = tmp_path / "demo"
  assert demo.main(["--workdir", str(workdir), "--quick",
                    "--no-progress"]) == 0
  out = capsys.readouterr().out
  assert out.count("MINIATURE") >= 2  # said at the start and at the end
  scale = demo.QUICK

  # The networks: the dense one and a real ticket of it.
  dense = network_dir.load(str(workdir / "networks" / "dense"))
  k = scale.ticket_states[-1]
  ticket = network_dir.load(str(workdir / "networks" / f"ticket_k{k}"))
  assert dense.meta["dense"] and not ticket.meta["dense"]
  assert ticket.meta["ticket"]["sparsity_state"] == k
  assert ticket.meta["ticket"]["lottery_ticket"]
  assert ticket.sparsity()["mask_remaining_percent"] == pytest.approx(
      100 * 0.8 ** k, abs=0.01)
  assert network_lib.class_names(ticket) == source_task.class_names(
      scale.source_classes)
  chance = 1 / scale.source_classes
  assert dense.meta["source_test_accuracy"] > 3 * chance

  # The report: one row per network x method x budget, all done.
  sweep_dir = workdir / "sweep"
  for name in ("report.md", "report.csv"):
    assert (sweep_dir / name).stat().st_size > 0
  figures = os.listdir(sweep_dir / "figures")
  assert {"accuracy_vs_remaining.png", "ece_vs_remaining.png"} <= set(figures)
  assert any(f.startswith("reliability_") for f in figures)
  with open(sweep_dir / "report.csv") as f:
    rows = list(csv.DictReader(f))
  # LP and ILM-VP, and ILM-VP with BLM++ (its own method key).
  expected = {(m, n, "digits", str(s))
              for m in ("linear_probe", "ilm_vp", "ilm_vp[blmpp]")
              for n in ("dense", f"ticket_k{k}") for s in scale.n_shots}
  assert {(r["method"], r["network"], r["dataset"], r["n_shot"])
          for r in rows} == expected
  assert all(r["status"] == "done" for r in rows)
  assert all(r["seeds"] == " ".join(map(str, scale.seeds)) for r in rows)
  report_md = (sweep_dir / "report.md").read_text()
  assert "MINIATURE" in report_md and "## Primary analysis" in report_md
  assert "## Sensitivity analyses" in report_md
  assert (sweep_dir / "blmpp" / "vp-blmpp" / "dense").is_dir()
  # The miniature's runs draw no figures of their own; the report does.
  assert not scale.run_figures
  assert not [p for p in sweep_dir.rglob("*.png")
              if "figures" not in p.relative_to(sweep_dir).parts]
  # The primary verdicts and their minimum detectable effects, printed.
  assert "primary analysis: Claim 1: tickets are not universal " in out
  assert "  claim 1, digits 5-shot ticket_k2 VP: dense - ticket " in out
  # Every tested cell's minimum detectable effect (claim 2: LP and VP).
  assert out.count("MDE 80 %") >= 2

  # seeds.csv, claims.csv and analyses.csv: every number and verdict
  # recomputed from seeds.csv and study.json with scipy, independently of
  # the package's statistics.
  claim_rows, analyses = recompute(sweep_dir)
  with open(sweep_dir / "seeds.csv") as f:
    seed_rows = list(csv.DictReader(f))
  # Validation (the digits leave examples outside every subset), last and
  # best test.
  assert len(seed_rows) == len(rows) * len(scale.seeds) * 3
  assert {r["selection"] for r in seed_rows} == {"validation", "best_test",
                                                 "last"}
  ones = [r for r in claim_rows if r["claim"] == "1"]
  assert {(r["method"], r["analysis"]) for r in ones} == {
      ("ilm_vp", "primary"), ("ilm_vp", "sensitivity"),
      ("ilm_vp[blmpp]", "sensitivity")}
  # Per mapping: one ticket, three selections.
  assert len(ones) == 2 * 3 * len(scale.n_shots)
  # 3 seeds: every cell is testable, unless its source accuracies differ.
  assert all(r["n_seeds"] == "3" for r in claim_rows)
  assert {r["verdict"] for r in claim_rows if r["claim"] == "2"} <= {
      "held", "contradicted", "inconclusive"}
  assert all(r["mde_80"] != "" for r in claim_rows if r["claim"] == "2")
  # The demo records its networks' source accuracies: the gap is stated,
  # and every run's summary carries its network's.
  assert all(r["source_gap_pp"] != "" for r in ones)
  assert dense.meta["source_top1"] == pytest.approx(
      100 * dense.meta["source_test_accuracy"])
  for path in sweep_dir.rglob("summary.json"):
    network = json.loads(path.read_text())["network"]
    meta = json.loads((pathlib.Path(network["dir"]) / "meta.json")
                      .read_text())
    assert network["source_top1"] == meta["source_top1"]
  assert {r["metric"] for r in claim_rows if r["claim"] == "2"} == {
      "test_ece", "test_ece_adaptive", "test_ece_ts", "test_nll",
      "test_brier", "test_pytorch_logged_quantity"}
  assert sum(a["analysis"] == "primary" for a in analyses) == 2

  # Re-running trains nothing: every stage is kept, every cell skipped.
  with open(workdir / "stages" / "networks.json") as f:
    before = json.load(f)
  assert demo.main(["--workdir", str(workdir), "--quick",
                    "--no-progress"]) == 0
  out = capsys.readouterr().out
  assert "source network and tickets: done earlier, kept" in out
  assert "4 finished before" in out or "finished before, skipped" in out
  with open(workdir / "stages" / "networks.json") as f:
    assert json.load(f) == before


def test_whether_runs_draw_figures_is_no_size():
  # A workdir records its size; a demo recorded before `run_figures`
  # existed holds no such field, and resumes.
  import dataclasses  # pylint: disable=g-import-not-at-top
  recorded = {f.name: getattr(demo.QUICK, f.name)
              for f in dataclasses.fields(demo.Scale) if f.name != "run_figures"}
  for figures in (True, False):
    assert demo._size(dataclasses.replace(demo.QUICK,
                                          run_figures=figures)) == recorded


def test_a_workdir_of_another_size_is_refused(tmp_path, capsys):
  workdir = tmp_path / "demo"
  os.makedirs(workdir / "stages")
  with open(workdir / "stages" / "networks.json", "w") as f:
    json.dump({"scale": {"source_classes": 1}, "networks": {}}, f)
  assert demo.main(["--workdir", str(workdir), "--quick"]) == 1
  assert "another size" in capsys.readouterr().err


def test_a_workdir_that_is_a_file_is_one_line(tmp_path, capsys):
  path = tmp_path / "a_file"
  path.write_text("not a directory")
  assert demo.main(["--workdir", str(path), "--quick"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "is not a directory" in err
  assert path.read_text() == "not a directory"
