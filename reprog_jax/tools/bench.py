"""Benchmark: our training step against the PyTorch version's, in one process.

    python -m reprog_jax.bench --method ilm_vp              # ResNet-50, batch 16
    python -m reprog_jax.bench --method linear_probe --batch 32
    python -m reprog_jax.bench --method ilm_vp --seeds 5    # vmapped vs 5 runs
    python -m reprog_jax.bench --method linear_probe --whole-lp
    python -m reprog_jax.bench --method ilm_vp --device gpu  # batch 128
    python -m reprog_jax.bench --method ilm_vp --n-shot 10  # one epoch

Both sides train the same thing on the same shapes: the frozen network
(ours: `network_lib.random_network`; theirs: torchvision's, randomly
initialised: speed does not depend on the weights), the same prompt or head,
Adam. Ours is built through the registry (`methods.build` on the method's
run config); the PyTorch side is the builder its spec names
(`MethodSpec.torch_reference`, in `torch_reference`: the parity tests'
transcription of the PyTorch version's step), in float32 on a CPU and, on a GPU, with fp16
autocast and a gradient scaler as the PyTorch version; ours computes in
float32 on a CPU and bfloat16 on a GPU. Batches are already on the device
on both sides. Ours runs on `--devices` devices (default 1: one device
against PyTorch's one); JAX does not preallocate GPU memory here, so both
share the device's memory fairly. On a GPU PyTorch runs twice: as written
(NCHW, constants rebuilt every step) and tuned (`channels_last`,
`cudnn.benchmark`, constants on the device once); the ratio is against the
tuned one. After warm-up the two alternate, `--rounds` times
`--steps` steps each, and the medians are reported; the last line is
`ratio ours/pytorch = X.XX` (> 1: ours is faster).

Modes:
- default: images/s of one training step, and achieved FLOP/s (XLA's count
  of our step's FLOPs) against the device's peak: its exact model's dense
  16-bit tensor peak (`device_profile.PEAK_TFLOPS`), or `--peak-tflops`;
- `--seeds S`: S seeds in one vmapped step against S sequential steps (ours
  and PyTorch's), the same examples per seed;
- `--n-shot K`: one epoch of K examples per class (`--num-classes`; -1:
  `--examples`), as each version runs it: ours in steps of
  min(batch, examples) (as `data.Sampler`), PyTorch's DataLoader in full
  batches and a smaller last one;
- `--whole-lp`: linear probing over `--epochs` epochs of `--examples`
  examples: ours computes the features once and trains the head on them,
  the PyTorch version (and our recomputing mode) runs the network every
  step; whole-run time from measured parts (one epoch of recomputing, times
  the epochs).
Every mode also reports the images/s the input side feeds: batches gathered
from the decoded uint8 store and put on the device, as training does.
"""

import os
import platform
import time

# Before JAX loads: a GPU's memory is shared with PyTorch in this process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np

from reprog_jax import cli
from reprog_jax import compile_cache
from reprog_jax import errors
from reprog_jax import methods
from reprog_jax.model import network as network_lib
from reprog_jax.tools import bench_sides
from reprog_jax.tools import device_profile
from reprog_jax.train import run_config
from reprog_jax.train import steps

class BenchError(errors.UserError, ValueError):
  """A bad argument or an unavailable device, in one line."""


def parse(argv):
  parser = cli.ArgumentParser(prog="python -m reprog_jax.bench",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--method", choices=methods.names(),
                      default=_default_method(),
                      help="a registered method (default: the first that "
                      "reprograms, family 'prompt')")
  parser.add_argument("--arch", default="resnet50",
                      choices=("resnet18", "resnet34", "resnet50"))
  parser.add_argument("--batch", type=int, default=None,
                      help="examples per step (and per seed); default 16 "
                      "on a CPU, 128 (the paper's) on a GPU")
  parser.add_argument("--image-size", type=int, default=None,
                      help="target image side (default: the method's, "
                      "for CIFAR-10)")
  parser.add_argument("--output-size", type=int, default=None,
                      help="the prompt's canvas side, for methods with one "
                      "(config field prompt_output_size; default: the "
                      "method's)")
  parser.add_argument("--num-classes", type=int, default=10)
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--devices", type=int, default=1,
                      help="devices ours runs on, data-parallel (PyTorch "
                      "runs on one)")
  parser.add_argument("--n-shot", type=int, default=None,
                      help="time one epoch of K examples per class "
                      "(-1: --examples) as each version runs it")
  parser.add_argument("--steps", type=int, default=5,
                      help="steps per timed round")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--seeds", type=int, default=0,
                      help="time S seeds vmapped against S sequential runs")
  parser.add_argument("--whole-lp", action="store_true",
                      help="whole linear-probing runs: cached features "
                      "against recomputing them every epoch")
  parser.add_argument("--examples", type=int, default=512,
                      help="--whole-lp and --n-shot -1: training examples")
  parser.add_argument("--epochs", type=int, default=100,
                      help="--whole-lp: epochs")
  parser.add_argument("--set", action="append", default=[],
                      metavar="FIELD=VALUE",
                      help="any field of the method's run config, e.g. "
                      "--set label_mapping=blmpp --set prompt=padding "
                      "(repeatable)")
  parser.add_argument("--profile", action="store_true",
                      help="also print where our step's time goes, by kind "
                      "of operation (an XLA profile of --steps steps)")
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="one device's peak TFLOP/s for the percentages "
                      "(default: the device model's dense 16-bit tensor "
                      "peak where the table knows it)")
  args = parser.parse_args(argv)
  if args.batch is None:
    args.batch = 128 if args.device == "gpu" else 16
  for name in ("devices", "batch", "image_size", "output_size",
               "num_classes", "steps", "rounds", "examples", "epochs"):
    if getattr(args, name) is not None and getattr(args, name) < 1:
      raise BenchError(f"--{name.replace('_', '-')} must be >= 1")
  if args.warmup < 0 or args.seeds < 0:
    raise BenchError("--warmup and --seeds must be >= 0")
  if args.peak_tflops is not None and not args.peak_tflops > 0:
    raise BenchError(f"--peak-tflops {args.peak_tflops:g} must be > 0")
  if args.n_shot is not None and (
      args.n_shot == 0 or args.n_shot < -1 or args.seeds or args.whole_lp):
    raise BenchError("--n-shot must be >= 1 or -1 (the full --examples), "
                     "without --seeds or --whole-lp")
  if args.batch % args.devices:
    raise BenchError(f"--batch {args.batch} must be a multiple of "
                     f"--devices {args.devices}")
  if args.whole_lp and (not methods.get(args.method).encodes or args.seeds):
    encoders = [n for n in methods.names() if methods.get(n).encodes]
    raise BenchError(f"--whole-lp needs a method with cached features "
                     f"(--method {' or '.join(encoders)}) and no --seeds")
  if not methods.get(args.method).torch_reference:
    raise BenchError(f"--method {args.method}: it has no PyTorch reference "
                     f"step to compare with (MethodSpec.torch_reference)")
  args.config = _config(args)
  args.image_size = run_config.image_size(args.config)
  return args


def _default_method() -> str:
  return next(name for name in methods.names()
              if methods.get(name).family == "prompt")


def _config(args):
  """The method's run config on a random `--arch`, with the flags' sizes;
  checked as a training run's."""
  config = run_config.method_config(args.method)
  config.random_network = args.arch
  if args.image_size is not None:
    config.image_size = args.image_size
  if args.output_size is not None:
    if "prompt_output_size" not in config.keys():
      raise BenchError(f"--output-size: method {args.method} has no canvas "
                       f"(no prompt_output_size)")
    config.prompt_output_size = args.output_size
  try:
    for setting in args.set:
      run_config.set_field(config, setting)
    run_config.check(config)
  except errors.ConfigError as e:
    raise BenchError(str(e)) from None
  return config


def _flops_line(name, flops, seconds, dtype, given_tflops, devices=1
                ) -> str:
  if not flops:
    return f"{name}: FLOP count unavailable"
  achieved = flops / seconds
  kind = jax.devices()[0].device_kind
  peak = device_profile.peak_flops(kind, dtype, given_tflops)
  if peak is None:
    return (f"{name}: {achieved / 1e12:.3f} TFLOP/s achieved (no "
            f"{jnp.dtype(dtype).name} peak known for {kind}: pass "
            f"--peak-tflops)")
  what = ("the given peak" if given_tflops is not None
          else "the dense 16-bit tensor peak")
  peak *= devices  # Of the devices used.
  return (f"{name}: {achieved / 1e12:.3f} TFLOP/s achieved = "
          f"{achieved / peak:.1%} of {what} of {devices} x {kind} "
          f"({peak / 1e12:.0f} TFLOP/s)")


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def describe(args, dtype) -> None:
  import os  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  print(f"machine: {_cpu_model()} ({os.cpu_count()} cores), "
        f"{jax.device_count()} x {jax.devices()[0].device_kind} "
        f"({jax.default_backend()}); python {platform.python_version()}, "
        f"jax {jax.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} CPU threads); ours on "
        f"{len(args.used_devices)} of {jax.device_count()} devices")
  base = run_config.base_config(args.method).keys()
  own = [f"{field} {args.config[field]}" for field in args.config.keys()
         if field not in base and field != "image_size"]
  print(f"setting: {args.method}" + (f" ({', '.join(own)})" if own else "")
        + f", {args.arch}, batch {args.batch}, image {args.image_size}, "
        f"ours {jnp.dtype(dtype).name}, PyTorch "
        + ("fp16 autocast + grad scaler, as written and tuned"
           if args.device == "gpu"
           else "float32"))


def main(argv=None) -> int:
  return cli.run("bench", _bench, argv)


def _bench(argv) -> None:
  args = parse(argv)
  device = "cuda" if args.device == "gpu" else "cpu"
  if args.device == "gpu" and jax.default_backend() != "gpu":
    raise BenchError("--device gpu: JAX sees no GPU (install jax[cuda12])")
  if args.device == "cpu" and jax.default_backend() != "cpu":
    raise BenchError("--device cpu: JAX runs on "
                     f"{jax.default_backend()}; set JAX_PLATFORMS=cpu")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise BenchError(f"{e.name} is missing; pip install -e '.[torch]'"
                     ) from None
  if device == "cuda" and not torch.cuda.is_available():
    raise BenchError("--device gpu: PyTorch sees no GPU")
  if args.devices > jax.device_count():
    raise BenchError(f"--devices {args.devices}: JAX sees "
                     f"{jax.device_count()} {jax.default_backend()} devices")
  args.used_devices = jax.devices()[:args.devices]
  compile_cache.enable()  # A second bench of the same shapes compiles less.
  dtype = jnp.bfloat16 if args.device == "gpu" else jnp.float32
  describe(args, dtype)
  network = network_lib.random_network(args.arch, dtype=dtype)
  method = methods.build(args.config, network, args.num_classes,
                         args.image_size)
  mapping = bench_sides.mapping_for(args, method)
  theirs = bench_sides.Theirs(args, device, mapping)
  if device == "cuda":  # Timed both ways; the ratio is against the tuned.
    theirs = (theirs, bench_sides.Theirs(args, device, mapping, tuned=True))
  if args.n_shot is not None:
    ratio = _n_shot(args, network, _tuned(theirs), dtype)
  elif args.whole_lp:
    ratio = _whole_lp(args, network, _tuned(theirs), dtype)
  elif args.seeds:
    ratio = _seeds(args, network, _tuned(theirs), dtype)
  else:
    ratio = _one_step(args, network, theirs, dtype)
  print(f"ratio ours/pytorch = {ratio:.2f}")


def _tuned(theirs):
  """The PyTorch side a ratio is against: the tuned one where both run."""
  return theirs[-1] if isinstance(theirs, tuple) else theirs


def _one_step(args, network, theirs, dtype) -> float:
  ours = bench_sides.Ours(args, network, 1)
  host = bench_sides.host_batch(args)
  our_batch = ours.put(jax.tree.map(lambda x: x[None], host))
  sides = dict(zip(("pytorch", "pytorch tuned"),
                   theirs if isinstance(theirs, tuple) else (theirs,)))
  batches = {name: side.put(host) for name, side in sides.items()}
  ours.count_flops(our_batch)
  seconds = bench_sides.interleaved(
      [("ours", lambda n: ours.run(our_batch, n))]
      + [(name, lambda n, side=side, name=name: side.run(batches[name], n))
         for name, side in sides.items()], args)
  feed = bench_sides.input_images_per_second(args, 1, ours.layout)
  for name in seconds:
    print(f"{name}: {args.batch / seconds[name]:,.1f} images/s "
          f"({seconds[name] * 1e3:.1f} ms per step)")
  print(_flops_line("ours", ours.flops, seconds["ours"], dtype,
                    args.peak_tflops, len(args.used_devices)))
  for name in sides:
    print(_flops_line(f"{name} (same FLOPs)", ours.flops, seconds[name],
                      jnp.float16 if args.device == "gpu" else jnp.float32,
                      args.peak_tflops))
  print(f"input side: {feed:,.0f} images/s from the decoded store")
  if args.profile:
    device_profile.profile(ours, our_batch, args.steps)
  return seconds[list(sides)[-1]] / seconds["ours"]


def _n_shot(args, network, theirs, dtype) -> float:
  """One epoch of K examples per class, as each version runs it."""
  del dtype  # The step's own.
  examples = (args.examples if args.n_shot == -1
              else args.n_shot * args.num_classes)
  # Ours: every step min(batch, examples) wide, rounded up to the devices
  # (`data.Sampler`), blanks masked in the last; PyTorch's DataLoader: full
  # batches, then the remainder.
  devices = len(args.used_devices)
  width = -(-min(args.batch, examples) // devices) * devices
  our_steps = -(-examples // width)
  full, remainder = divmod(examples, args.batch)
  ours = bench_sides.Ours(args, network, 1)
  # A last step's blanks cost what examples cost: one batch times them all.
  host = bench_sides.host_batch(args, batch=width)
  our_batch = ours.put(jax.tree.map(lambda x: x[None], host))
  timers = [("ours", lambda n: ours.run(our_batch, n))]
  their_steps = {}
  for name, size, count in (("pytorch", args.batch, full),
                            ("pytorch last", remainder, 1)):
    if count and size:
      batch = theirs.put(bench_sides.host_batch(args, batch=size))
      timers.append((name, lambda n, b=batch: theirs.run(b, n)))
      their_steps[name] = (size, count)
  seconds = bench_sides.interleaved(timers, args)
  ours_epoch = our_steps * seconds["ours"]
  theirs_epoch = sum(count * seconds[name]
                     for name, (_, count) in their_steps.items())
  shot = ("the full split" if args.n_shot == -1
          else f"{args.n_shot} per class")
  print(f"one epoch of {examples} examples ({shot}, "
        f"{args.num_classes} classes, batch {args.batch}):")
  print(f"  ours: {our_steps} steps of {width}: {ours_epoch:,.2f} s "
        f"({examples / ours_epoch:,.1f} images/s)")
  steps_text = " + ".join(f"{count} of {size}"
                          for size, count in their_steps.values())
  print(f"  pytorch: {steps_text}: {theirs_epoch:,.2f} s "
        f"({examples / theirs_epoch:,.1f} images/s)")
  return theirs_epoch / ours_epoch


def _seeds(args, network, theirs, dtype) -> float:
  count = args.seeds
  # Linear probing with seeds trains the heads on shared cached features.
  encoded = methods.get(args.method).encodes
  together = bench_sides.Ours(args, network, count, encoded=encoded)
  alone = bench_sides.Ours(args, network, 1, encoded=encoded)
  images = bench_sides.host_batch(args, num_seeds=count)
  hosts = (dict(images, image=bench_sides.features(
      together, images["image"], args.config.eval_precision))
           if encoded else images)
  batch_together = together.put(hosts)
  batches_alone = [alone.put(jax.tree.map(lambda x: x[k:k + 1], hosts))
                   for k in range(count)]
  batches_theirs = [theirs.put(jax.tree.map(lambda x: x[k], images))
                    for k in range(count)]

  def sequential(side, batches):
    return lambda n: sum(side.run(b, n) for b in batches)

  seconds = bench_sides.interleaved(
      [("vmapped", lambda n: together.run(batch_together, n)),
       ("sequential", sequential(alone, batches_alone)),
       ("pytorch", sequential(theirs, batches_theirs))], args)
  feed = bench_sides.input_images_per_second(args, count, together.layout)
  served = count * args.batch
  on = (" on cached features (computed once, not timed)" if encoded
        else "")
  for name, what in (("vmapped", f"ours, {count} seeds in one step{on}"),
                     ("sequential",
                      f"ours, {count} seeds one after another{on}"),
                     ("pytorch", f"PyTorch, {count} runs one after another")):
    print(f"{what}: {served / seconds[name]:,.1f} images/s")
  print(f"vmapped / sequential wall time = "
        f"{seconds['vmapped'] / seconds['sequential']:.2f}")
  print(f"input side: {feed:,.0f} images/s from the decoded store")
  return seconds["pytorch"] / seconds["vmapped"]


def _whole_lp(args, network, theirs, dtype) -> float:
  cached = bench_sides.Ours(args, network, 1, encoded=True)
  recompute = bench_sides.Ours(args, network, 1)
  host = bench_sides.host_batch(args)
  images = recompute.put(jax.tree.map(lambda x: x[None], host))
  # As a run encodes: at its eval_precision (`steps.make_encode_step`).
  encode = steps.make_encode_step(cached.method, cached.layout,
                                  precision=args.config.eval_precision)
  image_batch = cached.layout.put(host["image"], cached.layout.batch)
  features = encode(cached.network, image_batch)
  feature_batch = cached.put({"image": np.asarray(features)[None],
                              "label": host["label"][None],
                              "mask": host["mask"][None]})
  their_batch = theirs.put(host)

  def encode_run(n):
    started = time.perf_counter()
    for _ in range(n):
      out = encode(cached.network, image_batch)
    jax.block_until_ready(out)
    return time.perf_counter() - started

  seconds = bench_sides.interleaved(
      [("features", encode_run),
       ("head", lambda n: cached.run(feature_batch, n)),
       ("recompute", lambda n: recompute.run(images, n)),
       ("pytorch", lambda n: theirs.run(their_batch, n))], args)
  steps_per_epoch = -(-args.examples // args.batch)
  whole = {
      "ours, cached features": steps_per_epoch * (
          seconds["features"] + args.epochs * seconds["head"]),
      "ours, recomputing": args.epochs * steps_per_epoch * seconds["recompute"],
      "PyTorch, recomputing": args.epochs * steps_per_epoch * seconds[
          "pytorch"]}
  print(f"{args.epochs} epochs of {args.examples} examples (from per-step "
        f"medians: features {seconds['features'] * 1e3:.1f} ms, head "
        f"{seconds['head'] * 1e3:.2f} ms, recomputing step "
        f"{seconds['recompute'] * 1e3:.1f} ms, PyTorch step "
        f"{seconds['pytorch'] * 1e3:.1f} ms per batch of {args.batch}):")
  for name, total in whole.items():
    print(f"  {name}: {total:,.1f} s "
          f"({args.epochs * args.examples / total:,.0f} images/s)")
  print(f"cached / recomputing: "
        f"{whole['ours, recomputing'] / whole['ours, cached features']:.1f}x"
        f" faster")
  return whole["PyTorch, recomputing"] / whole["ours, cached features"]


if __name__ == "__main__":
  raise SystemExit(main())
