"""The benchmark runs end to end in a tiny setting (no speed asserted)."""

import re

import pytest

from reprog_jax.tools import bench

TINY = ["--arch", "resnet18", "--batch", "2", "--steps", "1", "--warmup",
        "1", "--rounds", "1", "--num-classes", "3"]


@pytest.mark.parametrize("extra, expected", [
    (["--method", "ilm_vp", "--image-size", "8", "--output-size", "32",
      "--profile"],
     [r"^ours: [\d,.]+ images/s", r"^pytorch: [\d,.]+ images/s",
      r"^ours: .*TFLOP/s achieved", r"^input side: [\d,]+ images/s",
      r"^profile of our step \([\d,]+ ms", r"^  backward convolution: "]),
    (["--method", "ilm_vp", "--image-size", "8", "--output-size", "32",
      "--seeds", "2"],
     [r"^ours, 2 seeds in one step: ", r"^ours, 2 seeds one after another: ",
      r"^PyTorch, 2 runs one after another: ",
      r"^vmapped / sequential wall time = \d+\.\d\d$"]),
    (["--method", "linear_probe", "--image-size", "32", "--whole-lp",
      "--examples", "6", "--epochs", "3"],
     [r"^  ours, cached features: ", r"^  PyTorch, recomputing: ",
      r"^cached / recomputing: [\d.]+x faster$"]),
])
def test_tiny_benchmark_prints_every_figure(extra, expected, capsys):
  assert bench.main(TINY + extra) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert re.fullmatch(r"ratio ours/pytorch = \d+\.\d\d", lines[-1])
  assert lines[0].startswith("machine: ")
  for pattern in expected:
    assert any(re.search(pattern, line) for line in lines), (pattern, lines)


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "--batch must be >= 1"),
    (["--method", "ilm_vp", "--whole-lp"], "--whole-lp needs a method with "
     "cached features (--method linear_probe)"),
    (["--image-size", "300"], "image_size 300 must be in [1, "
     "prompt_output_size=224]"),
    (["--method", "linear_probe", "--output-size", "64"],
     "--output-size: method linear_probe has no canvas"),
    (["--device", "gpu"], "--device gpu: JAX sees no GPU"),
])
def test_bad_arguments_are_one_line(argv, message, capsys):
  assert bench.main(argv) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err
