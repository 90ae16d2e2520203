"""A source accuracy is in percent: `convert --source-accuracy` and
`evaluate_source` refuse a value <= 1 in one line (0.761 would make every
source gap "similar")."""

import json

import pytest

from convert import cli
from reprog_jax.tools import evaluate_source
from test_evaluate_source import image_folder, mini_network  # pylint: disable=unused-import


@pytest.mark.parametrize("value", ["0.761", "1", "0"])
def test_convert_refuses_a_fraction(tmp_path, capsys, value):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["torch", "--arch", "resnet18", "--random-init", "--no-verify",
              "--source-accuracy", value, "--out", str(tmp_path / "x")])
  assert exit_info.value.code != 0
  # convert's argparse prints its usage, then the error in one line.
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last == (f"python -m convert torch: error: argument "
                  f"--source-accuracy: {value} looks like a fraction; give "
                  f"percent (76.1 for 76.1 %)")
  assert not (tmp_path / "x").exists()


def test_evaluate_source_does_not_record_a_measurement_below_one_percent(
    mini_network, image_folder, monkeypatch, capsys):
  before = (mini_network / "meta.json").read_text()
  monkeypatch.setattr(evaluate_source, "top1", lambda *a, **k: 0.4)
  assert evaluate_source.main([str(mini_network), "--data_dir",
                               str(image_folder), "--no-progress"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert "measured source top-1 0.40 % is <= 1 %, which looks like a " \
         "fraction" in err
  assert (mini_network / "meta.json").read_text() == before
  assert "source_top1" not in json.loads(before) or json.loads(
      before)["source_top1"] != 0.4
