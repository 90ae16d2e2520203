"""Where `bench`'s step spends its device time, and each device's peak.

- `hlo_kinds` reads a compiled XLA module (`compiled.as_text()`) and names
  the kind of every instruction that launches work: convolutions (cuDNN
  convolution custom calls, or a fusion around a convolution), matmuls
  (cuBLAS / cuBLASLt custom calls, Triton, cuDNN or CUTLASS GEMM fusions),
  reductions (fusions whose hero is a reduce), data movement (copies,
  transposes, fills) and the other fusions, element-wise.
- `kernel_kind` names the kind of a GPU kernel from its own name, for
  kernels the profile does not tie to an instruction of the module: XLA's
  fusions are named after their kind and root (`loop_convert_fusion` is an
  element-wise conversion, not a convolution), cuDNN's convolution kernels
  by their pass (`fprop`, `dgrad`, `wgrad`), cuBLAS and CUTLASS GEMMs by
  `gemm`, `cutlass`, `nvjet`.
- `gpu_time_by_kind` sums a GPU profile's kernels by kind: only the raw
  CUPTI lines of each device plane (`Stream #N...`), never the lines a
  profiler derives from them ("XLA Ops", "XLA Modules", "Steps", ...),
  which would count each kernel again. A kernel carries the HLO
  instruction that launched it (`hlo_op`, with its `hlo_module`); that
  instruction's kind wins over the name.
- `peak_flops` is a device model's dense 16-bit tensor peak, from its exact
  `device_kind`; an unknown model has none (`bench --peak-tflops` gives it).
"""

import collections
import dataclasses
import glob
import re
import tempfile

import jax
import jax.numpy as jnp

CONVOLUTION, MATMUL, REDUCTION = "convolution", "matmul", "reduction"
ELEMENTWISE, DATA_MOVEMENT, OTHER = ("element-wise", "data movement",
                                     "other")

# --------------------------------------------------------------------------
# Peaks
# --------------------------------------------------------------------------

# Dense (not 2:4 sparse) 16-bit tensor-core peak of one device, TFLOP/s:
# bfloat16, or float16 on V100 and T4 (no bfloat16 tensor cores), by the
# exact `device_kind` the CUDA driver (or the TPU runtime) reports. NVIDIA's
# datasheets print the sparse figure with an asterisk; the dense one is
# half of it.
PEAK_TFLOPS = {
    # H100 datasheet (2023): SXM BF16 1,979*, PCIe 1,513*, NVL 1,671*.
    "NVIDIA H100 80GB HBM3": 989.0,
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    # H200 datasheet (2024): SXM BF16 1,979*, NVL 1,671*.
    "NVIDIA H200": 989.0,
    "NVIDIA H200 NVL": 835.0,
    # A100 datasheet (2021): BF16 312 (624*), SXM4 and PCIe, 40 and 80 GB.
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    # L4 datasheet (2023): BF16 242*; L40S datasheet (2023): BF16 733*.
    "NVIDIA L4": 121.0,
    "NVIDIA L40S": 362.0,
    # A10G (AWS G5): no NVIDIA datasheet; ~70 is the figure AWS quotes
    # (the A10's datasheet says 125), so treat its percentages as rough.
    "NVIDIA A10G": 70.0,
    # V100 datasheet (2020): tensor 125 (SXM2), 112 (PCIe), 130 (V100S).
    "Tesla V100-SXM2-16GB": 125.0,
    "Tesla V100-SXM2-32GB": 125.0,
    "Tesla V100-PCIE-16GB": 112.0,
    "Tesla V100-PCIE-32GB": 112.0,
    "Tesla V100S-PCIE-32GB": 130.0,
    # T4 datasheet: mixed-precision (FP16/FP32) 65.
    "Tesla T4": 65.0,
    # Google Cloud TPU docs, BF16 per chip (one JAX device per chip):
    # v4 275, v5e 197, v5p 459, v6e 918.
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5": 459.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
}


def peak_flops(device_kind: str, dtype, given_tflops: float | None = None
               ) -> float | None:
  """One device's peak FLOP/s for `dtype`: `given_tflops` (the user's,
  `--peak-tflops`) if given; else the table's dense 16-bit tensor peak for
  a 16-bit `dtype` on a listed device model; else None (no percentage)."""
  if given_tflops is not None:
    return given_tflops * 1e12
  if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
    return None
  tflops = PEAK_TFLOPS.get(device_kind.strip())
  return None if tflops is None else tflops * 1e12


# --------------------------------------------------------------------------
# The kinds of a compiled module's instructions
# --------------------------------------------------------------------------

# Instructions (and fusion contents) that only move or fill memory.
_DATA_OPCODES = frozenset((
    "copy", "copy-start", "copy-done", "transpose", "concatenate", "slice",
    "dynamic-slice", "dynamic-update-slice", "pad", "gather", "broadcast",
    "bitcast", "reshape", "parameter", "constant", "tuple",
    "get-tuple-element"))
_REDUCTION_OPCODES = frozenset(("reduce", "reduce-window"))

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
# The opcode: the first `name(` after the `=` (a tuple shape's `(` has no
# name before it; a tiled layout's `T(` follows a colon, not a space).
_OPCODE = re.compile(r"(?:^|\s)([a-z][a-z0-9\-]*)\(")
# A computation's header: its name, then its signature or its body's `{`.
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*)?\{\s*$")
_CALLS = re.compile(r"\bcalls=%?([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class HloIndex:
  """What a compiled module says about its instructions.

  Attributes:
    module: the module's name (a profile event's `hlo_module`).
    kinds: instruction name -> its kind (see the module docstring).
    op_names: instruction name -> the JAX op it came from ('' if none).
  """

  module: str
  kinds: dict
  op_names: dict


def hlo_kinds(hlo_text: str) -> HloIndex:
  """Reads `compiled.as_text()` (an optimised HLO module) into an
  `HloIndex`."""
  module = ""
  computations = collections.defaultdict(list)  # name -> [(op, attrs)]
  instructions = []  # (name, opcode, attributes)
  op_names = {}
  current = None
  for line in hlo_text.splitlines():
    if line.startswith("HloModule "):
      module = line.split()[1].rstrip(",")
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      name, rest = match.groups()
      opcode = _OPCODE.search(rest)
      opcode = opcode.group(1) if opcode else ""
      computations[current].append((opcode, rest))
      instructions.append((name, opcode, rest))
      found = _OP_NAME.search(rest)
      op_names.setdefault(name, found.group(1) if found else "")
      continue
    header = _COMPUTATION.match(line)
    if header:
      current = header.group(1)
    elif line.strip() == "}":
      current = None

  def opcodes(computation, seen=frozenset()) -> set:
    """Every opcode in `computation`, and in the fusions it calls."""
    found = set()
    for opcode, rest in computations.get(computation, ()):
      found.add(opcode)
      called = _CALLS.search(rest)
      if called and called.group(1) not in seen:
        found |= opcodes(called.group(1), seen | {computation})
    return found

  kinds = {name: _instruction_kind(opcode, rest, opcodes)
           for name, opcode, rest in instructions}
  return HloIndex(module, kinds, op_names)


def _instruction_kind(opcode, attributes, opcodes) -> str:
  if opcode == "custom-call":
    target = _TARGET.search(attributes)
    target = target.group(1) if target else ""
    if target.startswith("__cudnn$conv"):
      return CONVOLUTION
    if target.startswith("__cublas") or "gemm" in target or (
        "matmul" in target):
      return MATMUL
    return OTHER
  if opcode == "fusion":
    called = _CALLS.search(attributes)
    return _contents_kind(opcodes(called.group(1)) if called else set())
  # A lone instruction that is no convolution, dot, reduce or copy (XLA
  # wraps element-wise ones in fusions): a collective, a send, ...
  kind = _contents_kind({opcode})
  return OTHER if kind == ELEMENTWISE else kind


def _contents_kind(opcodes) -> str:
  """The kind of a fusion (or one instruction) by what it computes: a
  convolution or a dot makes it one (cuDNN, Triton, CUTLASS fusions); a
  reduce makes the rest a reduction; only data movement makes it that."""
  if "convolution" in opcodes:
    return CONVOLUTION
  if "dot" in opcodes:
    return MATMUL
  if opcodes & _REDUCTION_OPCODES:
    return REDUCTION
  if not opcodes:
    return OTHER
  if opcodes <= _DATA_OPCODES:
    return DATA_MOVEMENT
  return ELEMENTWISE


# --------------------------------------------------------------------------
# The kind of a GPU kernel by its name
# --------------------------------------------------------------------------

# XLA names a fusion's kernel after its kind and root instruction(s):
# `loop_convert_fusion`, `input_reduce_fusion_92`, `loop_transpose_fusion.1`;
# a lone instruction's after it: `wrapped_transpose`.
_XLA_FUSION = re.compile(
    r"^(?:(?:loop|input)_(?P<roots>[a-z0-9_]+?)_fusion|"
    r"wrapped_(?P<wrapped>[a-z0-9_]+?))(?:[._]\d+)*$")
# XLA's data-movement instructions, as kernel names spell them.
_DATA_NAMES = ("dynamic_update_slice", "dynamic_slice", "concatenate",
               "transpose", "broadcast", "bitcast", "reshape", "gather",
               "slice", "copy", "pad")
_TRITON_GEMM = re.compile(r"^(?:gemm_fusion|triton_gemm|triton_.*dot)")
_CUDNN_CONVOLUTION = re.compile(
    r"fprop|dgrad|wgrad|convolve|conv[123]d|convolution|winograd|fft[23]d")
_LAYOUT = re.compile(r"nchwtonhwc|nhwctonchw|transpose|copy_kernel")
_GEMM = re.compile(r"gemm|gemv|cutlass|cublas|nvjet|matmul")


def kernel_kind(name: str) -> str:
  """The kind of a GPU kernel (see the module docstring) by its name."""
  lower = name.strip().lower()
  if lower.startswith(("memcpy", "memset")):  # CUPTI's copies and fills.
    return DATA_MOVEMENT
  fusion = _XLA_FUSION.match(lower)
  if fusion:
    roots = fusion.group("roots") or fusion.group("wrapped")
    if "reduce" in roots:
      return REDUCTION
    for data in _DATA_NAMES:
      roots = roots.replace(data, "")
    return DATA_MOVEMENT if not roots.strip("_") else ELEMENTWISE
  if _TRITON_GEMM.match(lower):
    return MATMUL
  if lower.startswith("triton_"):
    return REDUCTION if "softmax" in lower or "reduce" in lower else (
        ELEMENTWISE)
  if _CUDNN_CONVOLUTION.search(lower):
    return CONVOLUTION
  if _LAYOUT.search(lower):
    return DATA_MOVEMENT
  if _GEMM.search(lower):
    return MATMUL
  if "cudnn" in lower:  # XLA calls cuDNN for its convolutions.
    return CONVOLUTION
  return OTHER


# --------------------------------------------------------------------------
# A profile, summed by kind
# --------------------------------------------------------------------------


def gpu_time_by_kind(profile_data, index: HloIndex, steps: int):
  """Device time per step by kind, over the raw kernel lines of every GPU.

  Returns:
    (ms per step by kind, kernels per step by kind, the fraction of the
    time whose kind came from the module rather than a kernel name).
  """
  totals, kernels = collections.Counter(), collections.Counter()
  from_module = 0.0
  for plane in profile_data.planes:
    if not plane.name.startswith("/device:GPU:"):
      continue
    for line in plane.lines:
      # CUPTI's own lines are `Stream #N` or `Stream #N(Kernel,...)`; all
      # others are derived from them, or overhead.
      if not line.name.startswith("Stream #"):
        continue
      for event in line.events:
        stats = dict(event.stats)
        op = stats.get("hlo_op")
        ours = stats.get("hlo_module", index.module) == index.module
        if op in index.kinds and ours:
          kind = index.kinds[op]
          from_module += event.duration_ns
        else:
          kind = kernel_kind(event.name)
        totals[kind] += event.duration_ns / 1e6 / steps
        kernels[kind] += 1 / steps
  total_ns = sum(totals.values()) * 1e6 * steps
  return totals, kernels, (from_module / total_ns if total_ns else 0.0)


def cpu_time_by_kind(profile_data, index: HloIndex, steps: int):
  """CPU time per step by (forward / backward, kind of JAX op), summed over
  XLA's worker threads; ms per step by kind."""
  totals = collections.Counter()
  for plane in profile_data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):
        continue  # XLA's CPU worker threads run the ops.
      for event in line.events:
        if event.name not in index.op_names:
          continue
        op = index.op_names[event.name]
        kind = ("matmul" if "dot_general" in op else
                "convolution" if "conv_general" in op else
                "pooling" if "pool" in op or "reduce_window" in op else
                "element-wise and other")
        kind = ("backward " if "transpose(" in op else "forward ") + kind
        totals[kind] += event.duration_ns / 1e6 / steps
  return totals


def profile(ours, batch, count) -> None:
  """Prints where our step's device time goes: on a CPU by (forward /
  backward, kind of JAX op), summed over XLA's threads; on a GPU by kind
  of kernel (with kernel counts), summed over streams."""
  index = hlo_kinds(ours.step.lower(ours.state, ours.network, ours.mappings,
                                    batch).compile().as_text())
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      ours.run(batch, count)
    trace, = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    data = jax.profiler.ProfileData.from_file(trace)
  cpu = jax.default_backend() == "cpu"
  if cpu:
    totals, kernels, known = cpu_time_by_kind(data, index, count), None, None
  else:
    totals, kernels, known = gpu_time_by_kind(data, index, count)
  print(f"profile of our step ({sum(totals.values()):,.0f} ms of device "
        f"time per step, summed over {'threads' if cpu else 'streams'}"
        + ("" if cpu else f"; {known:.0%} of it classified by its HLO "
           f"instruction, the rest by kernel name") + "):")
  for name, ms in totals.most_common():
    print(f"  {name}: {ms:,.1f} ms"
          + ("" if cpu else f" ({kernels[name]:,.0f} kernels)"))
