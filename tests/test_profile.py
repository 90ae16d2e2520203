"""`bench --profile`'s classification of GPU work, and the peak table.

No GPU runs here, so the classifier is tested on recorded names and on
profiles written out by hand in the profiler's own format (an XSpace text
proto, read by the same `jax.profiler.ProfileData` a real trace is).
"""

import jax
import jax.numpy as jnp
from jax import lax
import pytest

from reprog_jax.tools import device_profile as dp

# Kernel names as GPU profiles of JAX/XLA programs (Nsight Systems, the
# JAX profiler's trace viewer) show them, written from our knowledge of
# XLA's, cuDNN's, cuBLAS's and CUTLASS's naming, several checked against
# profiles quoted in public repositories (found through a code search):
# `loop_convert_fusion` and its numbered forms, `gemm_fusion_dot_265`,
# `input_reduce_fusion_92`, `input_pad_reduce_fusion`, `wrapped_transpose`,
# the `sm90_xmma_fprop_implicit_gemm_*_cudnn` and `nvjet_tst_*` kernels.
RECORDED_KERNELS = [
    # XLA's element-wise fusions; a convert is no convolution (the old
    # substring "conv" counted every bfloat16 cast as one).
    ("loop_convert_fusion", dp.ELEMENTWISE),
    ("loop_convert_fusion_5", dp.ELEMENTWISE),
    ("loop_convert_fusion.111", dp.ELEMENTWISE),
    ("wrapped_convert", dp.ELEMENTWISE),
    ("loop_add_fusion", dp.ELEMENTWISE),
    ("loop_multiply_fusion_12", dp.ELEMENTWISE),
    ("loop_select_fusion", dp.ELEMENTWISE),
    ("input_scatter_fusion", dp.ELEMENTWISE),
    ("triton_poi_fused_add_0", dp.ELEMENTWISE),
    # Reductions: an input fusion whose hero is a reduce.
    ("input_reduce_fusion", dp.REDUCTION),
    ("input_reduce_fusion_92", dp.REDUCTION),
    ("input_pad_reduce_fusion", dp.REDUCTION),
    ("loop_reduce_fusion.3", dp.REDUCTION),
    ("input_reduce_window_fusion", dp.REDUCTION),
    ("triton_softmax_2_0", dp.REDUCTION),
    # Data movement: copies, transposes, fills, CUPTI's memcpy / memset.
    ("loop_transpose_fusion.1", dp.DATA_MOVEMENT),
    ("wrapped_transpose", dp.DATA_MOVEMENT),
    ("loop_broadcast_fusion", dp.DATA_MOVEMENT),
    ("loop_dynamic_update_slice_fusion_2", dp.DATA_MOVEMENT),
    ("wrapped_concatenate_1", dp.DATA_MOVEMENT),
    ("loop_copy_fusion", dp.DATA_MOVEMENT),
    ("MemcpyH2D", dp.DATA_MOVEMENT),
    ("MemcpyD2D", dp.DATA_MOVEMENT),
    ("Memset", dp.DATA_MOVEMENT),
    ("Memcpy HtoD (Pageable -> Device)", dp.DATA_MOVEMENT),
    ("void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, "
     "float, false, true, (cudnnKernelDataType_t)0>(cudnn::ops::"
     "nchw2nhwc_params_t<float>, __nv_bfloat16 const*, __nv_bfloat16*)",
     dp.DATA_MOVEMENT),
    # cuDNN's convolution kernels: forward, data and filter gradients.
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_"
     "tilesize128x128x64_warpgroupsize1x1x1_g1_execute_segment_k_off_"
     "kernel__5x_cudnn", dp.CONVOLUTION),
    ("sm80_xmma_fprop_implicit_gemm_indexed_wo_smem_bf16bf16_bf16f32_f32_"
     "nhwckrsc_nhwc_tilesize128x16x64_stage1_warpsize4x1x1_g1_tensor16x8x16"
     "_alignc4_execute_kernel__5x_cudnn", dp.CONVOLUTION),
    ("sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_"
     "tilesize256x128x64_warpgroupsize2x1x1_g1_strided_execute_kernel__5x_"
     "cudnn", dp.CONVOLUTION),
    ("sm86_xmma_wgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_"
     "tilesize64x64x64_stage4_warpsize2x2x1_g1_tensor16x8x16_execute_"
     "kernel__5x_cudnn", dp.CONVOLUTION),
    ("void cudnn::engines_precompiled::dgrad2d_grouped_direct_kernel<"
     "__nv_bfloat16, float, float, float>(cudnnTensorStruct, ...)",
     dp.CONVOLUTION),
    ("void implicit_convolveNd_sgemm<float, 2, 1024, 5, 5, 3, 3, 3, 1, "
     "false, false, true>(int, int, int, float const*, int, float*, ...)",
     dp.CONVOLUTION),
    ("void cudnn::winograd_nonfused::winogradForwardData4x4<float, float>"
     "(cudnn::winograd_nonfused::WinogradDataParams<float, float>)",
     dp.CONVOLUTION),
    # cuBLAS / cuBLASLt / CUTLASS GEMMs and XLA's Triton GEMM fusions.
    ("nvjet_tst_192x160_64x4_2x1_v_bz_coopB_bias_TNT", dp.MATMUL),
    ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NTN", dp.MATMUL),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_"
     "warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas", dp.MATMUL),
    ("ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_stages_64x4_tn",
     dp.MATMUL),
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_"
     "64x64_32x6_tn_align8>(cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_"
     "64x64_32x6_tn_align8::Params)", dp.MATMUL),
    ("cutlass3x_sm90_tensorop_gemm_bf16_bf16_f32_bf16_bf16_128x256x64_1x2x1"
     "_0_tnn_align8_warpspecialized_cooperative_epi_tma", dp.MATMUL),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16,"
     " float, false, __nv_bfloat16, __nv_bfloat16, true, false, false>"
     "(cublasLt::cublasSplitKParams<float>, ...)", dp.MATMUL),
    ("void gemv2T_kernel_val<int, int, float, float, float, float, 128, 16, "
     "4, 4, false, false, cublasGemvParamsEx<...>>(...)", dp.MATMUL),
    ("gemm_fusion_dot_265", dp.MATMUL),
    ("gemm_fusion_dot_general_1", dp.MATMUL),
    ("triton_gemm_dot_3", dp.MATMUL),
    # Nothing in the name to go by.
    ("fusion_12", dp.OTHER),
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevComm*, unsigned long, "
     "ncclWork*)", dp.OTHER),
    ("redzone_checker", dp.OTHER),
]


@pytest.mark.parametrize("name, kind", RECORDED_KERNELS)
def test_recorded_kernel_names_are_classified_by_kind(name, kind):
  assert dp.kernel_kind(name) == kind


# The optimised module a GPU compiles for a tiny bfloat16 conv + matmul
# step, as XLA prints it (written out by hand in its format: cuDNN and
# cuBLAS custom calls, a Triton GEMM fusion whose dot sits in a nested
# fusion, loop and input fusions, a multi-output reduction, and a tuple
# signature whose `/*index=5*/` comment holds an `=`).
GPU_MODULE = """\
HloModule jit_train_step, is_scheduled=true, entry_computation_layout={(bf16[8,32,32,3]{3,2,1,0})->f32[8]{0}}

%fused_convert (param_0: f32[8,32,32,3]) -> bf16[8,32,32,3] {
  %param_0 = f32[8,32,32,3]{3,2,1,0} parameter(0)
  ROOT %convert.4 = bf16[8,32,32,3]{3,2,1,0} convert(%param_0), metadata={op_name="jit(train_step)/convert_element_type"}
}

%region_0.1 (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.9 = f32[] add(%a, %b)
}

%fused_reduce (param_0.1: bf16[8,16,16,64]) -> (f32[8], f32[64]) {
  %param_0.1 = bf16[8,16,16,64]{3,2,1,0} parameter(0)
  %convert.5 = f32[8,16,16,64]{3,2,1,0} convert(%param_0.1)
  %constant.1 = f32[] constant(0)
  %reduce.1 = f32[8]{0} reduce(%convert.5, %constant.1), dimensions={1,2,3}, to_apply=%region_0.1
  %reduce.2 = f32[64]{0} reduce(%convert.5, %constant.1), dimensions={0,1,2}, to_apply=%region_0.1
  ROOT %tuple.1 = (f32[8]{0}, f32[64]{0}) tuple(%reduce.1, %reduce.2)
}

%fused_transpose (param_0.2: bf16[64,3,3,3]) -> bf16[3,3,3,64] {
  %param_0.2 = bf16[64,3,3,3]{3,2,1,0} parameter(0)
  ROOT %transpose.3 = bf16[3,3,3,64]{3,2,1,0} transpose(%param_0.2), dimensions={2,3,1,0}
}

%gemm_fusion_dot.1_inner (param_0.3: bf16[8,64], param_1.1: bf16[64,10]) -> bf16[8,10] {
  %param_0.3 = bf16[8,64]{1,0} parameter(0)
  %param_1.1 = bf16[64,10]{1,0} parameter(1)
  ROOT %dot.7 = bf16[8,10]{1,0} dot(%param_0.3, %param_1.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%gemm_fusion_dot.1_computation (param_0.4: bf16[8,64], param_1.2: bf16[64,10]) -> bf16[8,10] {
  %param_0.4 = bf16[8,64]{1,0} parameter(0)
  %param_1.2 = bf16[64,10]{1,0} parameter(1)
  ROOT %nested = bf16[8,10]{1,0} fusion(%param_0.4, %param_1.2), kind=kCustom, calls=%gemm_fusion_dot.1_inner
}

%fused_multiply (param_0.5: bf16[8,16,16,64], param_1.3: bf16[64]) -> bf16[8,16,16,64] {
  %param_0.5 = bf16[8,16,16,64]{3,2,1,0} parameter(0)
  %param_1.3 = bf16[64]{0} parameter(1)
  %broadcast.2 = bf16[8,16,16,64]{3,2,1,0} broadcast(%param_1.3), dimensions={3}
  ROOT %multiply.3 = bf16[8,16,16,64]{3,2,1,0} multiply(%param_0.5, %broadcast.2)
}

ENTRY %main.42 (Arg_0.1: f32[8,32,32,3], Arg_1.2: bf16[64,3,3,3], Arg_2.3: bf16[64,10], Arg_3.4: bf16[64]) -> (f32[8], f32[8], f32[8], f32[8], f32[8], /*index=5*/f32[8]) {
  %Arg_0.1 = f32[8,32,32,3]{3,2,1,0} parameter(0)
  %Arg_1.2 = bf16[64,3,3,3]{3,2,1,0} parameter(1)
  %Arg_2.3 = bf16[64,10]{1,0} parameter(2)
  %Arg_3.4 = bf16[64]{0} parameter(3)
  %loop_convert_fusion = bf16[8,32,32,3]{3,2,1,0} fusion(%Arg_0.1), kind=kLoop, calls=%fused_convert, metadata={op_name="jit(train_step)/convert_element_type"}
  %wrapped_transpose = bf16[3,3,3,64]{3,2,1,0} fusion(%Arg_1.2), kind=kLoop, calls=%fused_transpose
  %cudnn-conv.1 = (bf16[8,16,16,64]{3,2,1,0}, u8[0]{0}) custom-call(%loop_convert_fusion, %wrapped_transpose), window={size=3x3 stride=2x2 pad=0_1x0_1}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convForward", backend_config={"cudnn_conv_backend_config":{"conv_result_scale":1,"activation_mode":"kNone"}}
  %get-tuple-element.1 = bf16[8,16,16,64]{3,2,1,0} get-tuple-element(%cudnn-conv.1), index=0
  %fusion.12 = bf16[8,16,16,64]{3,2,1,0} fusion(%get-tuple-element.1, %Arg_3.4), kind=kLoop, calls=%fused_multiply
  %cudnn-conv-bw-input.2 = (bf16[8,32,32,3]{3,2,1,0}, u8[0]{0}) custom-call(%fusion.12, %wrapped_transpose), window={size=3x3 stride=2x2 pad=0_1x0_1 lhs_dilate=2x2}, dim_labels=b01f_01oi->b01f, custom_call_target="__cudnn$convBackwardInput"
  %cudnn-conv-bw-filter.3 = (bf16[3,3,3,64]{3,2,1,0}, u8[0]{0}) custom-call(%loop_convert_fusion, %fusion.12), window={size=3x3 stride=2x2 pad=0_1x0_1}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %input_reduce_fusion = (f32[8]{0}, f32[64]{0}) fusion(%fusion.12), kind=kInput, calls=%fused_reduce
  %cublas-gemm.1.0 = (bf16[8,10]{1,0}, s8[4194304]{0}) custom-call(%Arg_2.3, %Arg_2.3), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"alpha_real":1}}
  %cublas-lt-matmul.2 = (bf16[8,10]{1,0}, s8[0]{0}) custom-call(%Arg_2.3, %Arg_2.3), custom_call_target="__cublas$lt$matmul"
  %gemm_fusion_dot.1 = bf16[8,10]{1,0} fusion(%Arg_2.3, %Arg_2.3), kind=kCustom, calls=%gemm_fusion_dot.1_computation, backend_config={"fusion_backend_config":{"kind":"__triton_gemm","triton_gemm_config":{"block_m":"16"}}}
  %copy-start.1 = (f32[8]{0}, f32[8]{0}, u32[]) copy-start(%Arg_0.1)
  %all-reduce-start = f32[8]{0} all-reduce-start(%Arg_0.1), replica_groups={}, to_apply=%region_0.1
  %get-tuple-element.2 = f32[8]{0} get-tuple-element(%input_reduce_fusion), index=0
  ROOT %tuple.3 = (f32[8]{0}, f32[8]{0}, f32[8]{0}, f32[8]{0}, f32[8]{0}, /*index=5*/f32[8]{0}) tuple(%get-tuple-element.2, %get-tuple-element.2, %get-tuple-element.2, %get-tuple-element.2, %get-tuple-element.2, %get-tuple-element.2)
}
"""

GPU_MODULE_KINDS = {
    "loop_convert_fusion": dp.ELEMENTWISE,
    "wrapped_transpose": dp.DATA_MOVEMENT,
    "cudnn-conv.1": dp.CONVOLUTION,
    "fusion.12": dp.ELEMENTWISE,  # Its name says nothing; its root does.
    "cudnn-conv-bw-input.2": dp.CONVOLUTION,
    "cudnn-conv-bw-filter.3": dp.CONVOLUTION,
    "input_reduce_fusion": dp.REDUCTION,  # Multi-output: a tuple root.
    "cublas-gemm.1.0": dp.MATMUL,
    "cublas-lt-matmul.2": dp.MATMUL,
    "gemm_fusion_dot.1": dp.MATMUL,  # The dot is in a nested fusion.
    "copy-start.1": dp.DATA_MOVEMENT,
    "all-reduce-start": dp.OTHER,
}


def test_a_gpu_modules_instructions_are_classified_by_what_they_compute():
  index = dp.hlo_kinds(GPU_MODULE)
  assert index.module == "jit_train_step"
  for name, kind in GPU_MODULE_KINDS.items():
    assert index.kinds[name] == kind, name
  assert index.op_names["loop_convert_fusion"] == (
      "jit(train_step)/convert_element_type")
  # The same module as newer XLA prints it: no `%` before names.
  bare = dp.hlo_kinds(GPU_MODULE.replace("%", ""))
  assert {n: bare.kinds[n] for n in GPU_MODULE_KINDS} == GPU_MODULE_KINDS


def test_a_module_this_xla_compiled_is_read():
  # This machine's XLA (CPU): its text format, and convolutions and dots
  # that are instructions, not custom calls.
  f = jax.jit(lambda x, w, m: (jnp.tanh(lax.conv(x, w, (1, 1), "SAME"))
                               @ m).sum(axis=0).T)
  text = f.lower(jnp.zeros((2, 3, 8, 8)), jnp.zeros((4, 3, 3, 3)),
                 jnp.zeros((8, 5))).compile().as_text()
  index = dp.hlo_kinds(text)
  assert index.module.startswith("jit_")
  launched = {kind for name, kind in index.kinds.items()
              if not name.startswith(("x", "w", "m", "param", "Arg"))}
  assert {dp.CONVOLUTION, dp.MATMUL, dp.REDUCTION} <= launched, text


def _event(metadata_id, start_ps, duration_ps, stats=()):
  stat_text = " ".join(f'stats {{ metadata_id: {key} str_value: "{value}" }}'
                       for key, value in stats)
  return (f"events {{ metadata_id: {metadata_id} offset_ps: {start_ps} "
          f"duration_ps: {duration_ps} {stat_text} }}")


HLO_OP, HLO_MODULE = 100, 101
MS = 1_000_000_000  # Picoseconds in a millisecond.


def _profile():
  """A two-step GPU profile in the profiler's XSpace format: kernels on two
  CUPTI streams, the lines a profiler derives from them (which must not be
  counted again), CUPTI's overhead line, and a host plane."""
  names = ["sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc"
           "_tilesize128x128x64_warpgroupsize1x1x1_g1_execute_kernel__5x_"
           "cudnn",                      # 1: conv, by its op and its name
           "loop_convert_fusion_3",      # 2: element-wise, by name only
           "fusion_12",                  # 3: element-wise only by its op
           "nvjet_tst_128x64_64x8_1x1_v_bz_TNN",  # 4: matmul, by op
           "input_reduce_fusion",        # 5: reduction, by op
           "MemcpyH2D",                  # 6: no op, by name
           "cudnn-conv.1", "jit_train_step", "Step 1"]  # 7-9: derived names
  metadata = "\n".join(
      f'  event_metadata {{ key: {i} value {{ id: {i} name: "{n}" }} }}'
      for i, n in enumerate(names, 1))
  op = lambda name: [(HLO_OP, name), (HLO_MODULE, "jit_train_step")]
  compute = [
      _event(1, 0, 4 * MS, op("cudnn-conv.1")),
      _event(2, 5 * MS, 1 * MS),
      _event(3, 7 * MS, 2 * MS, op("fusion.12")),
      _event(4, 10 * MS, 3 * MS, op("cublas-lt-matmul.2")),
      _event(5, 14 * MS, 1 * MS, op("input_reduce_fusion")),
      # Another program's `fusion.12` is not ours: classified by name.
      _event(3, 16 * MS, 6 * MS, [(HLO_OP, "fusion.12"),
                                  (HLO_MODULE, "jit_other")]),
      _event(1, 30 * MS, 4 * MS, op("cudnn-conv.1")),
  ]
  copies = [_event(6, 0, 2 * MS)]
  derived = {"XLA Ops": [_event(7, 0, 8 * MS)],
             "XLA Modules": [_event(8, 0, 40 * MS)],
             "Steps": [_event(9, 0, 40 * MS)],
             "Launch Stats": [_event(7, 0, 1 * MS)],
             "CUPTI overhead": [_event(2, 0, 50 * MS)]}
  lines = [("Stream #7(Kernel)", compute), ("Stream #13(MemcpyH2D)", copies)]
  lines += list(derived.items())
  line_text = "\n".join(
      f'  lines {{ id: {i} name: "{name}" timestamp_ns: 1000 '
      + " ".join(events) + " }"
      for i, (name, events) in enumerate(lines, 1))
  text = f"""
planes {{
  id: 1
  name: "/device:GPU:0"
{line_text}
{metadata}
  stat_metadata {{ key: {HLO_OP} value {{ id: {HLO_OP} name: "hlo_op" }} }}
  stat_metadata {{ key: {HLO_MODULE} value {{ id: {HLO_MODULE} name: "hlo_module" }} }}
}}
planes {{
  id: 2
  name: "/host:CPU"
  lines {{ id: 1 name: "python" {_event(1, 0, 100 * MS)} }}
  event_metadata {{ key: 1 value {{ id: 1 name: "loop_convert_fusion" }} }}
}}
"""
  return jax.profiler.ProfileData.from_text_proto(text)


def test_a_gpu_profile_sums_raw_kernel_lines_by_kind():
  totals, kernels, known = dp.gpu_time_by_kind(
      _profile(), dp.hlo_kinds(GPU_MODULE), steps=2)
  # Hand-summed from `_profile` (ms over two steps, halved): conv 4 + 4,
  # element-wise 1 + 2 (`fusion.12` of our module), matmul 3, reduction 1,
  # data movement 2 (the copy stream), and `fusion_12` of another module
  # (6) by its name, which says nothing. Derived lines, CUPTI's overhead
  # and the host add nothing.
  assert dict(totals) == pytest.approx({
      dp.CONVOLUTION: 4.0, dp.ELEMENTWISE: 1.5, dp.MATMUL: 1.5,
      dp.REDUCTION: 0.5, dp.DATA_MOVEMENT: 1.0, dp.OTHER: 3.0})
  assert dict(kernels) == pytest.approx({
      dp.CONVOLUTION: 1.0, dp.ELEMENTWISE: 1.0, dp.MATMUL: 0.5,
      dp.REDUCTION: 0.5, dp.DATA_MOVEMENT: 0.5, dp.OTHER: 0.5})
  # conv 8 + fusion.12 2 + matmul 3 + reduction 1 of 23 ms: by the module.
  assert known == pytest.approx(14 / 23)


@pytest.mark.parametrize("device_kind, tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756),
    ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989), ("NVIDIA H200 NVL", 835),
    ("NVIDIA A100-SXM4-40GB", 312), ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A100-PCIE-40GB", 312), ("NVIDIA A100 80GB PCIe", 312),
    ("NVIDIA L4", 121), ("NVIDIA L40S", 362), ("NVIDIA A10G", 70),
    ("Tesla V100-SXM2-32GB", 125), ("Tesla V100-PCIE-16GB", 112),
    ("Tesla T4", 65), ("TPU v4", 275), ("TPU v5 lite", 197),
    ("TPU v5p", 459), ("TPU v6 lite", 918),
])
def test_the_peak_is_the_exact_device_models(device_kind, tflops):
  assert dp.peak_flops(device_kind, jnp.bfloat16) == tflops * 1e12
  assert dp.peak_flops(device_kind, jnp.float16) == tflops * 1e12
  # No float32 peak is listed; one given is used as given.
  assert dp.peak_flops(device_kind, jnp.float32) is None
  assert dp.peak_flops(device_kind, jnp.float32, 19.5) == 19.5e12


@pytest.mark.parametrize("device_kind", [
    "NVIDIA H100", "NVIDIA H800", "NVIDIA GeForce RTX 4090",
    "NVIDIA RTX 6000 Ada Generation", "cpu", "NVIDIA A100-SXM4"])
def test_an_unlisted_device_has_no_peak_unless_given(device_kind):
  # No guess from a similar name: "NVIDIA H100" could be any of three.
  assert dp.peak_flops(device_kind, jnp.bfloat16) is None
  assert dp.peak_flops(device_kind, jnp.bfloat16, 100.0) == 100e12
