"""A source accuracy is in percent: `convert --source-accuracy` and
`evaluate_source` refuse a value <= 1 in one line (0.761 would make every
source gap "similar")."""

import json
import types

import pytest

from convert import cli
from reprog_jax.tools import evaluate_source


@pytest.mark.parametrize("value", ["0.761", "1", "0"])
def test_convert_refuses_a_fraction(tmp_path, capsys, value):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["torch", "--arch", "resnet18", "--random-init", "--no-verify",
              "--source-accuracy", value, "--out", str(tmp_path / "x")])
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == (
      f"python -m convert torch: error: argument --source-accuracy: {value} "
      f"looks like a fraction; give percent (76.1 for 76.1 %) (see --help)\n")
  assert not (tmp_path / "x").exists()


def test_evaluate_source_does_not_record_a_measurement_below_one_percent(
    tmp_path, monkeypatch, capsys):
  # A network directory and an ImageFolder tree of 3 classes; the network
  # and its measurement stand in (the measuring: test_evaluate_source.py).
  network = tmp_path / "net"
  network.mkdir()
  (network / "meta.json").write_text(json.dumps({"num_classes": 3}))
  for name in ("a", "b", "c"):
    (tmp_path / "val" / name).mkdir(parents=True)
    (tmp_path / "val" / name / "0.png").write_bytes(b"")
  monkeypatch.setattr(evaluate_source.network_dir, "load",
                      lambda d: types.SimpleNamespace(meta={"num_classes": 3}))
  monkeypatch.setattr(evaluate_source, "top1", lambda *a, **k: 0.4)
  assert evaluate_source.main([str(network), "--data_dir",
                               str(tmp_path / "val"), "--no-progress"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert "measured source top-1 0.40 % is <= 1 %, which looks like a " \
         "fraction" in err
  assert json.loads((network / "meta.json").read_text()) == {
      "num_classes": 3}
