"""cli: the one command-line wrapper, and `--config` by preset name."""

import os

import pytest

from reprog_jax import cli
from reprog_jax import configs
from reprog_jax import errors

CONFIGS_DIR = os.path.dirname(configs.__file__)


def test_run_prints_a_user_error_as_one_line_and_returns_1(capsys):
  def bad():
    raise errors.ConfigError("config: lr is -1; give a positive --config.lr")
  assert cli.run("prog", bad) == 1
  assert capsys.readouterr().err == (
      "prog: error: config: lr is -1; give a positive --config.lr\n")
  assert cli.run("prog", lambda: None) == 0
  assert cli.run("prog", lambda x: x, 3) == 3


def test_run_keeps_a_bugs_traceback_and_catches_only_what_it_is_told():
  def bug():
    raise KeyError("a bug")
  with pytest.raises(KeyError):
    cli.run("prog", bug)
  def missing():
    raise FileNotFoundError(2, "No such file or directory", "x.pth")
  with pytest.raises(FileNotFoundError):
    cli.run("prog", missing)
  assert cli.run("prog", missing, catch=(OSError,)) == 1


def test_run_reports_an_interrupt_only_where_asked(capsys):
  def interrupted():
    raise KeyboardInterrupt
  assert cli.run("prog", interrupted, interrupted="resume with X") == 130
  assert capsys.readouterr().err == "resume with X\n"
  with pytest.raises(KeyboardInterrupt):
    cli.run("prog", interrupted)


def test_a_preset_name_is_the_package_file_and_a_path_stays():
  assert cli.config_path("ilm_vp:smoke") == os.path.join(
      CONFIGS_DIR, "ilm_vp.py") + ":smoke"
  assert cli.config_path("study") == os.path.join(CONFIGS_DIR, "study.py")
  for path in ("configs/ilm_vp.py:smoke", "/x/y.py", "ilm_vp.py:cifar10"):
    assert cli.config_path(path) == path
  with pytest.raises(errors.ConfigError,
                     match=r"no preset module 'nope'; use one of ilm_vp, "
                     r"linear_probe, study"):
    cli.config_path("nope:smoke")


def test_both_flag_forms_are_resolved():
  want = os.path.join(CONFIGS_DIR, "linear_probe.py") + ":cifar10"
  argv = ["prog", "--config=linear_probe:cifar10", "--config.lr=0.1"]
  assert cli._resolve_config(argv) == ["prog", f"--config={want}",
                                       "--config.lr=0.1"]
  assert cli._resolve_config(["prog", "--config", "linear_probe:cifar10"]) == [
      "prog", "--config", want]


def test_argparse_types_and_parser_give_one_line(capsys):
  import argparse  # pylint: disable=g-import-not-at-top
  assert cli.positive_int("3") == 3 and cli.non_negative("0") == 0.0
  assert cli.probability("0.05") == 0.05
  for convert, text in ((cli.positive_int, "0"), (cli.positive_int, "2.5"),
                        (cli.non_negative, "-1"), (cli.non_negative, "inf"),
                        (cli.non_negative, "nan"), (cli.probability, "1"),
                        (cli.probability, "0")):
    with pytest.raises(argparse.ArgumentTypeError):
      convert(text)
  parser = cli.ArgumentParser(prog="tool")
  parser.add_argument("--alpha", type=cli.probability)
  with pytest.raises(SystemExit) as exited:
    parser.parse_args(["--alpha", "2"])
  assert exited.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith("tool: error: argument --alpha: '2' is not in (0, 1)")
  assert err.count("\n") == 1


@pytest.mark.parametrize("module, argv, line", [
    ("convert.cli", ["torch", "--arch", "resnet18"],
     "python -m convert torch: error: the following arguments are required: "
     "--out"),
    ("convert.cli", [], "python -m convert: error: the following arguments "
     "are required: command"),
    ("reprog_jax.tools.bench", ["--steps", "x"],
     "python -m reprog_jax.bench: error: argument --steps: invalid int "
     "value: 'x'"),
    ("reprog_jax.tools.demo", [], "python -m reprog_jax.demo: error: the "
     "following arguments are required: --workdir"),
    ("reprog_jax.data.prepare", [], "python -m reprog_jax.data.prepare: "
     "error: the following arguments are required: name"),
    ("reprog_jax.data.benchmark", ["--batches", "x"],
     "python -m reprog_jax.data.benchmark: error: argument --batches: "
     "invalid int value: 'x'"),
])
def test_every_commands_bad_flag_is_one_line_with_status_1(module, argv,
                                                           line, capsys):
  import importlib  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as exited:
    importlib.import_module(module).main(argv)
  assert exited.value.code == 1
  assert capsys.readouterr().err == f"{line} (see --help)\n"
