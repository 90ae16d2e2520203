"""Tests for reprog_jax.model.prompts: the ILM-VP expansive prompt and the
padding prompt."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reprog_jax.model import prompts

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def torch_expansive_prompt(x_nchw, program_chw, image_size, output_size=224):
  """The PyTorch version's ExpansiveVisualPrompt.forward, transcribed (NCHW)."""
  torch = pytest.importorskip("torch")
  transforms = pytest.importorskip("torchvision.transforms")
  functional = torch.nn.functional
  l_pad = int((output_size - image_size + 1) / 2)
  r_pad = int((output_size - image_size) / 2)
  mask = torch.zeros(3, image_size, image_size)
  mask = functional.pad(mask, (l_pad, r_pad, l_pad, r_pad), value=1)
  program = torch.nn.Parameter(torch.from_numpy(program_chw))
  x = torch.from_numpy(x_nchw)
  x = functional.pad(x, (l_pad, r_pad, l_pad, r_pad), value=0)
  x = x + torch.sigmoid(program) * mask
  normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406],
                                   std=[0.229, 0.224, 0.225])
  return normalize(x).detach().numpy()


def init_prompt(image_size, **kwargs):
  module = prompts.ExpansivePrompt(image_size=image_size, **kwargs)
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return module, module.init(jax.random.key(0), x)


@pytest.mark.parametrize("image_size", [32, 128, 31])
def test_matches_pytorch_transcription(image_size):
  rng = np.random.default_rng(image_size)
  x_nhwc = rng.uniform(size=(2, image_size, image_size, 3)).astype(np.float32)
  # A non-zero program, so a transposed or shifted frame would show.
  program_hwc = rng.normal(scale=2.0, size=(224, 224, 3)).astype(np.float32)
  module, _ = init_prompt(image_size)

  ours = module.apply({"params": {"program": program_hwc}}, x_nhwc)
  theirs = torch_expansive_prompt(
      np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)),
      np.ascontiguousarray(program_hwc.transpose(2, 0, 1)), image_size)

  assert ours.shape == (2, 224, 224, 3)
  np.testing.assert_allclose(np.asarray(ours), theirs.transpose(0, 2, 3, 1),
                             rtol=1e-6, atol=1e-6)


def test_program_param_is_zero_float32_and_full_canvas():
  _, variables = init_prompt(32)
  program = variables["params"]["program"]
  assert program.shape == (224, 224, 3)
  assert program.dtype == jnp.float32
  # 3 * 224 * 224, as the PyTorch version counts it.
  assert sum(p.size for p in jax.tree.leaves(variables)) == 150_528
  assert not np.any(np.asarray(program))


def test_zero_program_frames_with_one_half_and_keeps_image():
  image_size = 31  # Odd: 193 frame pixels, 97 before and 96 after.
  module, variables = init_prompt(image_size, normalize=False)
  x = np.random.default_rng(0).uniform(
      size=(1, image_size, image_size, 3)).astype(np.float32)
  out = np.asarray(module.apply(variables, x))[0]

  assert prompts.padding(image_size) == (97, 96)
  # sigmoid(0) = 0.5 on every frame pixel; the image passes through exactly.
  np.testing.assert_array_equal(out[97:97 + 31, 97:97 + 31], x[0])
  frame = np.ones((224, 224), bool)
  frame[97:128, 97:128] = False
  np.testing.assert_array_equal(out[frame], 0.5)


def test_normalisation_of_the_frame():
  module, variables = init_prompt(32)
  out = np.asarray(module.apply(variables, np.ones((1, 32, 32, 3), np.float32)))
  # Frame: (0.5 - mean) / std; image of ones: (1 - mean) / std.
  np.testing.assert_allclose(out[0, 0, 0], (0.5 - MEAN) / STD, rtol=1e-6)
  np.testing.assert_allclose(out[0, 100, 100], (1.0 - MEAN) / STD, rtol=1e-6)


def test_imagenet_normalize_values():
  x = jnp.array([[0.485, 0.456, 0.406], [1.0, 0.0, 0.5]], jnp.float32)
  expected = np.array([[0.0, 0.0, 0.0],
                       [(1 - 0.485) / 0.229, -0.456 / 0.224,
                        (0.5 - 0.406) / 0.225]], np.float32)
  np.testing.assert_allclose(prompts.imagenet_normalize(x), expected,
                             rtol=1e-6, atol=1e-7)


def test_gradient_reaches_only_the_frame():
  module, variables = init_prompt(128)
  x = jnp.full((2, 128, 128, 3), 0.3, jnp.float32)
  grads = jax.grad(lambda v: jnp.sum(module.apply(v, x)))(variables)
  grad = np.asarray(grads["params"]["program"])
  before, after = prompts.padding(128)
  assert (before, after) == (48, 48)
  # d/dp sum(normalize(sigmoid(p))) = 2 examples * 0.25 / std on the frame.
  np.testing.assert_allclose(grad[0, 0], 2 * 0.25 / STD, rtol=1e-6)
  np.testing.assert_allclose(grad[223, 223], 2 * 0.25 / STD, rtol=1e-6)
  assert not np.any(grad[48:176, 48:176])
  assert np.all(grad[:48] != 0) and np.all(grad[176:] != 0)


def test_full_size_image_has_no_frame():
  module, variables = init_prompt(224)
  x = np.random.default_rng(1).uniform(size=(1, 224, 224, 3)).astype(
      np.float32)
  np.testing.assert_allclose(module.apply(variables, x), (x - MEAN) / STD,
                             rtol=1e-6, atol=1e-6)


def test_unbatched_input_and_vmap_agree_with_batched():
  module, variables = init_prompt(32)
  variables = {"params": {"program": jax.random.normal(
      jax.random.key(1), (224, 224, 3))}}
  x = jax.random.uniform(jax.random.key(2), (3, 32, 32, 3))
  batched = module.apply(variables, x)
  vmapped = jax.vmap(lambda image: module.apply(variables, image))(x)
  np.testing.assert_allclose(vmapped, batched, rtol=1e-6, atol=1e-6)


def test_compute_dtype_keeps_float32_program():
  module, variables = init_prompt(32, dtype=jnp.bfloat16)
  assert variables["params"]["program"].dtype == jnp.float32
  out = module.apply(variables, jnp.full((1, 32, 32, 3), 0.5))
  assert out.dtype == jnp.bfloat16
  # Normalised in float32, then rounded once: within half a bfloat16 ulp
  # (2**-9 relative). Normalising in bfloat16 would be ~4% off on channel 0.
  np.testing.assert_allclose(np.asarray(out[0, 0, 0], np.float32),
                             (0.5 - MEAN) / STD, rtol=2**-9)


@pytest.mark.parametrize("image_size", [0, 225])
def test_image_size_out_of_range_is_an_error(image_size):
  with pytest.raises(ValueError, match="image_size"):
    prompts.ExpansivePrompt(image_size=image_size)


def test_wrong_input_shape_is_an_error():
  module, variables = init_prompt(32)
  with pytest.raises(ValueError, match="32, 32, 3"):
    module.apply(variables, jnp.zeros((1, 3, 32, 32)))


def test_registry():
  assert prompts.get_prompt("expansive") is prompts.ExpansivePrompt
  with pytest.raises(ValueError, match="expansive"):
    prompts.get_prompt("pad")


# --- The padding prompt (Bahng et al. 2022) ---------------------------------


def test_border_mask_is_one_on_a_border_pad_wide():
  mask = prompts.border_mask(10, 3)[..., 0]
  assert mask.shape == (10, 10)
  assert mask[3:7, 3:7].sum() == 0 and mask.sum() == 100 - 16
  with pytest.raises(ValueError, match="pad must be in"):
    prompts.border_mask(10, 6)


def test_padding_prompt_resizes_normalises_and_adds_the_border():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(2)
  x = rng.random((2, 8, 8, 3), np.float32)
  module = prompts.PaddingPrompt(image_size=8, output_size=20, pad=4)
  params = module.init(jax.random.key(1), jnp.asarray(x))["params"]
  program = np.asarray(params["program"])
  assert program.shape == (20, 20, 3) and 0.8 < program.std() < 1.2
  got = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
  # By hand: PyTorch's bilinear resize (align_corners=False), ImageNet
  # normalisation, then the program on the border only.
  resized = torch.nn.functional.interpolate(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(20, 20),
      mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
  border = np.ones((20, 20, 1), np.float32)
  border[4:16, 4:16] = 0
  expected = (resized - MEAN) / STD + program * border
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
  assert prompts.get_prompt("padding") is prompts.PaddingPrompt
