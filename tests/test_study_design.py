"""A study's declared analysis: its fields and their checks, what the
sweep records in study.json, and how the report reads it back
(`study.design`). No training."""

import json
import os

import pytest

from reprog_jax.configs import study as study_config
from reprog_jax.study import design
from reprog_jax.study import grid as grid_lib
from reprog_jax.study import sweep


def smoke_study(**changes):
  study = grid_lib.plain_study(study_config.get_config("smoke"))
  study.update(changes)
  return study


def test_every_preset_declares_the_primary_analysis():
  for preset in ("smoke", "grid"):
    study = study_config.get_config(preset).to_dict()
    assert study["primary"] == {
        "method": "ilm_vp", "variant": "", "probe": "linear_probe",
        "selection": "validation", "quantity": "test_ece"}
    assert study["alpha"] == 0.05 and study["similar_source_pp"] == 1.0
    assert study["power_effect"]["test_acc"] == 1.0
    assert study["power_effect"]["test_ece"] == 0.01
    assert study["power_effect"]["test_pytorch_logged_quantity"] is None


def test_a_study_without_the_fields_reads_as_the_defaults():
  # A study.json written before the fields existed.
  old = {k: v for k, v in smoke_study().items() if k not in design.FIELDS}
  plain = grid_lib.plain_study(old)
  assert plain == smoke_study()
  # Partly given: the rest from the defaults.
  partial = grid_lib.plain_study({**old, "power_effect": {"test_acc": 2.0},
                                  "primary": {"selection": "last"}})
  assert partial["power_effect"]["test_acc"] == 2.0
  assert partial["power_effect"]["test_ece"] == 0.01
  assert partial["primary"]["selection"] == "last"
  assert partial["primary"]["method"] == "ilm_vp"


@pytest.mark.parametrize("changes, message", [
    ({"alpha": 1.5}, "alpha 1.5 is not in (0, 1)"),
    ({"alpha": True}, "alpha True is not in (0, 1)"),
    ({"similar_source_pp": -1}, "similar_source_pp -1 is not a number >= 0"),
    ({"power_effect": {"test_acc": 0}}, "power_effect.test_acc 0 is not a "
     "positive number"),
    ({"power_effect": {"acc": 1.0}}, "power_effect names 'acc', not one of"),
    ({"primary": {"method": "linear_probe"}}, "primary.method "
     "'linear_probe' is of family 'probe', not 'prompt'"),
    ({"primary": {"probe": "nope"}}, "primary.probe 'nope' is not one of"),
    ({"primary": {"selection": "best"}}, "primary.selection 'best' is not "
     "one of validation, last, best_test"),
    ({"primary": {"quantity": "test_acc"}}, "primary.quantity 'test_acc' is "
     "not one of"),
    ({"primary": {"metric": "x"}}, "primary has unknown field(s) metric"),
])
def test_bad_analysis_fields_are_one_line(changes, message):
  study = smoke_study()
  for key, value in changes.items():
    study[key] = ({**study[key], **value} if isinstance(value, dict)
                  else value)
  with pytest.raises(grid_lib.SweepError) as error:
    grid_lib.cells(study)
  text = str(error.value)
  assert message in text and "\n" not in text
  assert text.startswith("study: ")


def test_study_json_records_the_runs_and_the_analysis(tmp_path):
  study = smoke_study(label_mappings=["ilm", "blmpp"])
  grid = grid_lib.cells(study)
  sweep.record_study(str(tmp_path), study, grid)
  recorded = json.loads((tmp_path / "study.json").read_text())
  assert recorded["study"]["primary"]["quantity"] == "test_ece"
  assert recorded["study"]["power_effect"]["test_acc"] == 1.0
  assert {(r["cell"], r["method"], r["variant"], r["kind"], r["n_shot"])
          for r in recorded["runs"]} == {
              ("lp/dense/cifar10/2-shot", "linear_probe", "", "dense", 2),
              ("vp/dense/cifar10/2-shot", "ilm_vp", "", "dense", 2),
              ("vp-blmpp/dense/cifar10/2-shot", "ilm_vp", "blmpp", "dense",
               2)}
  assert [r["method"] for r in design.planned_runs(str(tmp_path))] == [
      "linear_probe", "ilm_vp", "ilm_vp[blmpp]"]
  # An older study.json (cells only) is read from the cell names, and the
  # next sweep adds what it lacks.
  del recorded["runs"]
  (tmp_path / "study.json").write_text(json.dumps(recorded))
  assert design.planned_runs(str(tmp_path)) == [
      {"cell": "lp/dense/cifar10/2-shot", "method": "linear_probe",
       "network": "dense", "kind": "dense", "dataset": "cifar10",
       "n_shot": 2},
      {"cell": "vp/dense/cifar10/2-shot", "method": "ilm_vp",
       "network": "dense", "kind": "dense", "dataset": "cifar10",
       "n_shot": 2},
      {"cell": "vp-blmpp/dense/cifar10/2-shot", "method": "ilm_vp[blmpp]",
       "network": "dense", "kind": "dense", "dataset": "cifar10",
       "n_shot": 2}]
  sweep.record_study(str(tmp_path), study, grid)
  assert "runs" in json.loads((tmp_path / "study.json").read_text())


def test_options_from_nested_study_json(tmp_path):
  # A sweep inside another's directory (as the demo runs its BLM++ cells):
  # the outer study.json declares the analysis; the inner one's runs are
  # planned too, under its directory.
  os.makedirs(tmp_path / "inner")
  outer = smoke_study(alpha=0.01)
  sweep.record_study(str(tmp_path), outer, grid_lib.cells(outer))
  inner = smoke_study(alpha=0.2, methods=["ilm_vp"])
  sweep.record_study(str(tmp_path / "inner"), inner, grid_lib.cells(inner))
  options = design.options(str(tmp_path))
  assert options.alpha == 0.01
  assert options.declared_in == str(tmp_path / "study.json")
  assert "inner/vp/dense/cifar10/2-shot" in {
      r["cell"] for r in design.planned_runs(str(tmp_path))}
  # Without the outer one, the inner ones must agree.
  os.remove(tmp_path / "study.json")
  os.makedirs(tmp_path / "other")
  sweep.record_study(str(tmp_path / "other"), outer, grid_lib.cells(outer))
  with pytest.raises(design.DesignError, match="declare different analyses"):
    design.options(str(tmp_path))
  # Flags override and say so.
  options = design.options(str(tmp_path / "inner"), alpha=0.1)
  assert options.alpha == 0.1 and options.declared_in.endswith(
      "study.json, with --alpha 0.1")
  assert design.options(str(tmp_path / "nowhere")).declared_in is None
