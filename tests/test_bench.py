"""The benchmark runs end to end in a tiny setting (no speed asserted), on
one device against PyTorch's one, without preallocating device memory."""

import os
import re
import subprocess
import sys

import pytest

from reprog_jax.tools import bench
from reprog_jax.train import steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["--arch", "resnet18", "--batch", "2", "--steps", "1", "--warmup",
        "1", "--rounds", "1", "--num-classes", "3"]


@pytest.mark.parametrize("extra, expected", [
    (["--method", "ilm_vp", "--image-size", "8", "--output-size", "32",
      "--profile", "--peak-tflops", "2"],
     [r"^ours: [\d,.]+ images/s", r"^pytorch: [\d,.]+ images/s",
      r"^ours: [\d.]+ TFLOP/s achieved = [\d.]+% of the given peak of 1 x "
      r"cpu \(2 TFLOP/s\)$", r"^input side: [\d,]+ images/s",
      r"^pytorch \(same FLOPs\): .* of the given peak",
      r"^profile of our step \([\d,]+ ms", r"^  backward convolution: "]),
    (["--method", "ilm_vp", "--image-size", "8", "--output-size", "32",
      "--seeds", "2"],
     [r"^ours, 2 seeds in one step: ", r"^ours, 2 seeds one after another: ",
      r"^PyTorch, 2 runs one after another: ",
      r"^vmapped / sequential wall time = \d+\.\d\d$"]),
    (["--method", "ilm_vp", "--image-size", "8", "--output-size", "32",
      "--n-shot", "1", "--batch", "2"],
     # 3 examples: ours 2 steps of 2; PyTorch a batch of 2 and one of 1.
     [r"^one epoch of 3 examples \(1 per class, 3 classes, batch 2\):$",
      r"^  ours: 2 steps of 2: [\d.]+ s", r"^  pytorch: 1 of 2 \+ 1 of 1: "]),
    # A label mapping other than ILM (a matrix), through --set.
    (["--method", "ilm_vp", "--image-size", "8", "--output-size", "32",
      "--set", "label_mapping=blmpp"],
     [r"^setting: ilm_vp \(label_mapping blmpp,", r"^ours: [\d,.]+ images/s",
      r"^pytorch: [\d,.]+ images/s",
      # A CPU has no peak in the table: no percentage, and how to give one.
      r"^ours: [\d.]+ TFLOP/s achieved \(no float32 peak known for cpu: "
      r"pass --peak-tflops\)$"]),
    # The features are encoded at the run config's eval_precision.
    (["--method", "linear_probe", "--image-size", "32", "--whole-lp",
      "--examples", "6", "--epochs", "3", "--set", "eval_precision=default"],
     [r"^  ours, cached features: ", r"^  PyTorch, recomputing: ",
      r"^cached / recomputing: [\d.]+x faster$"]),
])
def test_tiny_benchmark_prints_every_figure(extra, expected, capsys,
                                           monkeypatch):
  asked = []
  make = steps.make_encode_step
  monkeypatch.setattr(steps, "make_encode_step", lambda *a, **k: (
      asked.append(k.get("precision")), make(*a, **k))[1])
  assert bench.main(TINY + extra) == 0
  if "--whole-lp" in extra:
    assert asked == ["default"]
  lines = capsys.readouterr().out.strip().splitlines()
  assert re.fullmatch(r"ratio ours/pytorch = \d+\.\d\d", lines[-1])
  assert lines[0].startswith("machine: ")
  for pattern in expected:
    assert any(re.search(pattern, line) for line in lines), (pattern, lines)


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "--batch must be >= 1"),
    (["--method", "ilm_vp", "--whole-lp"], "--whole-lp needs a method with "
     "cached features (--method linear_probe"),  # Plug-ins may follow.
    (["--image-size", "300"], "image_size 300 must be in [1, "
     "prompt_output_size=224]"),
    (["--method", "linear_probe", "--output-size", "64"],
     "--output-size: method linear_probe has no canvas"),
    (["--device", "gpu"], "--device gpu: JAX sees no GPU"),
    (["--devices", "64", "--batch", "64"], "--devices 64: JAX sees "),
    (["--devices", "2", "--batch", "3"],
     "--batch 3 must be a multiple of --devices 2"),
    (["--n-shot", "0"], "--n-shot must be >= 1 or -1"),
    (["--peak-tflops", "0"], "--peak-tflops 0 must be > 0"),
    (["--set", "nope=1"], "--set 'nope=1': want FIELD=VALUE with FIELD one "
     "of the method's config fields"),
    (["--set", "batch_size=x"], "--set 'batch_size=x': 'x' is not a int"),
])
def test_bad_arguments_are_one_line(argv, message, capsys):
  assert bench.main(argv) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err


def test_ours_runs_on_one_of_several_devices_without_preallocation():
  # Two simulated devices; nothing asks JAX to preallocate or to use both.
  env = {k: v for k, v in os.environ.items()
         if k != "XLA_PYTHON_CLIENT_PREALLOCATE"}
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  script = (
      "import os, sys\n"
      "from reprog_jax.tools import bench, bench_sides\n"
      "print('PREALLOCATE', os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'])\n"
      "layouts = []\n"
      "make = bench_sides.Ours.__init__\n"
      "def spy(self, *a, **k):\n"
      "  make(self, *a, **k); layouts.append(self.layout.num_devices)\n"
      "bench_sides.Ours.__init__ = spy\n"
      "assert bench.main(sys.argv[1:]) == 0\n"
      "print('LAYOUT DEVICES', layouts)\n")
  proc = subprocess.run(
      [sys.executable, "-c", script, *TINY, "--method", "ilm_vp",
       "--image-size", "8", "--output-size", "32"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "PREALLOCATE false" in out
  assert "LAYOUT DEVICES [1]" in out
  assert "ours on 1 of 2 devices" in out


# The profile's kinds of GPU kernels and the peaks: tests/test_profile.py.


def test_tuned_pytorch_reference_computes_what_the_written_one_does():
  torch = pytest.importorskip("torch")
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  from reprog_jax.tools import torch_reference  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.random((2, 8, 8, 3), np.float32)
  labels = np.array([0, 2])
  losses = []
  for tuned in (False, True):
    torch.manual_seed(0)
    network = torchvision.models.resnet18(weights=None)
    reference = torch_reference.VisualPromptReference(
        network, 8, [3, 1, 4], output_size=32)
    if tuned:
      reference.tune()
      assert reference.to_device(images, labels)[0].is_contiguous(
          memory_format=torch.channels_last)
    losses.append([reference.step(images, labels) for _ in range(2)])
  torch.backends.cudnn.benchmark = False
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
