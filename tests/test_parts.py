"""Methods from parts (`methods/parts.py`, `compose.py`): the family follows
from the parts, each part owns its fields, init draws and export keys, a
config field can choose a part, `Method` has defaults, and a run's recorded
config is compared by what its parts use."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reprog_jax import errors
from reprog_jax import methods
from reprog_jax.methods import base
from reprog_jax.methods import compose
from reprog_jax.methods import inputs
from reprog_jax.methods import outputs
from reprog_jax.methods import parts
from reprog_jax.methods import readouts
from reprog_jax.model import prompts
from reprog_jax.train import run_config

NAMES = [f"class {i}" for i in range(12)]  # A tiny "network" of 12 classes.


@pytest.mark.parametrize("composition, family", [
    ((inputs.NONE, readouts.FEATURES, outputs.LINEAR), "probe"),
    ((inputs.NONE, readouts.LOGITS, outputs.LINEAR), "probe"),
    ((inputs.PROMPT, readouts.LOGITS, outputs.LABEL_MAPPING), "prompt"),
    ((inputs.PADDING, readouts.LOGITS, outputs.LINEAR), "prompt"),
    ((inputs.PROMPT, readouts.FEATURES, outputs.LINEAR), "hybrid"),
])
def test_the_family_follows_from_the_parts(composition, family):
  parts_ = compose.Composition(*composition)
  assert parts_.family == family
  assert parts_.encodes == (composition[0] is inputs.NONE)


def test_the_built_in_methods_families_and_a_contradicting_one():
  family = {n: methods.get(n).family for n in methods.names()}
  assert (family["linear_probe"], family["ilm_vp"], family["vp_lp"]) == (
      "probe", "prompt", "hybrid")
  with pytest.raises(errors.ConfigError, match="contradicts its parts"):
    base.MethodSpec(name="x", short="x", label="X", family="prompt",
                    parts=methods.get("vp_lp").parts)
  with pytest.raises(errors.ConfigError, match="maps the network's own"):
    compose.Composition(inputs.NONE, readouts.FEATURES, outputs.MAPPING)


def test_each_part_owns_its_fields_and_a_choice_owns_its_options():
  assert parts.fields(inputs.NONE) == {"image_size"}
  assert parts.fields(inputs.PADDING) == {"image_size",
                                          "prompt_output_size", "pad"}
  assert parts.fields(inputs.PROMPT) == {"prompt", "image_size",
                                         "prompt_output_size", "pad"}
  assert parts.fields(outputs.LINEAR) == set()
  assert parts.fields(outputs.LABEL_MAPPING) == {
      "label_mapping", "mapping_interval", "lap", "top_k", "topk_ratio"}
  vp_lp = run_config.method_config("vp_lp", "smoke")
  # A composed method's config is its parts' fields, at their smoke sizes.
  assert (vp_lp.prompt, vp_lp.prompt_output_size, vp_lp.pad,
          vp_lp.image_size) == ("expansive", 64, 8, None)
  assert "label_mapping" not in vp_lp


def test_a_choice_names_its_options_in_one_line():
  config = run_config.method_config("vp_lp", "smoke")
  config.prompt = "frame"
  with pytest.raises(errors.ConfigError) as raised:
    run_config.check(config)
  assert str(raised.value) == (
      "config: prompt 'frame' is not one of expansive, padding")
  config.prompt = "padding"
  config.pad = 33
  with pytest.raises(errors.ConfigError, match=r"pad 33 must be in \[1, "
                     r"prompt_output_size // 2 = 32\]"):
    run_config.check(config)


def _config(name, **fields):
  config = ml_collections.ConfigDict(
      run_config.method_config(name, "smoke").to_dict())
  config.update(fields)
  return config


def test_init_gives_each_trained_part_its_own_draw():
  """The first part that trains starts from the run's key, the next from
  fold_in(key, 1); a linear head splits its key into kernel and bias and
  draws U(+-1/sqrt(width)), torch.nn.Linear's init."""
  key = jax.random.key(7)

  def head(rng, width, classes):
    bound = 1 / np.sqrt(width)
    kernel_rng, bias_rng = jax.random.split(rng)
    return (jax.random.uniform(kernel_rng, (width, classes), jnp.float32,
                               -bound, bound),
            jax.random.uniform(bias_rng, (classes,), jnp.float32, -bound,
                               bound))

  vp_lp = compose.assemble("vp_lp", methods.get("vp_lp").parts,
                           _config("vp_lp", prompt="padding"),
                           readouts.features_of(20), 5, 16)
  trained = vp_lp.init(key)
  assert set(trained) == {"program", "kernel", "bias"}
  program = prompts.PaddingPrompt(16, 64, 8).init(
      key, jnp.zeros((1, 16, 16, 3)))["params"]["program"]
  np.testing.assert_array_equal(trained["program"], program)
  kernel, bias = head(jax.random.fold_in(key, 1), 20, 5)
  np.testing.assert_array_equal(trained["kernel"], kernel)
  np.testing.assert_array_equal(trained["bias"], bias)

  probe = methods.linear_probe.linear_probe(20, 5).init(key)
  kernel, bias = head(key, 20, 5)  # The head alone trains: the run's key.
  np.testing.assert_array_equal(probe["kernel"], kernel)
  np.testing.assert_array_equal(probe["bias"], bias)


def test_scores_go_through_input_readout_and_output_in_order():
  """VP+LP: the prompt frames the image, the readout reads features from
  the prompted canvas, the head maps them; checked with stand-in readouts
  against the same computation by hand."""
  readout = parts.BuiltReadout(
      apply=lambda network, x: jnp.mean(x, axis=(1, 2)) * network,
      width=3, own_head=False)
  method = compose.assemble("vp_lp", methods.get("vp_lp").parts,
                            _config("vp_lp"), readout, 4, 8)
  trained = method.init(jax.random.key(0))
  trained["program"] = jax.random.normal(jax.random.key(1), (64, 64, 3))
  images = np.random.default_rng(0).random((2, 8, 8, 3), np.float32)
  canvas = prompts.ExpansivePrompt(8, 64).apply(
      {"params": {"program": trained["program"]}}, images)
  expected = (jnp.mean(canvas, axis=(1, 2)) * 2.0) @ trained["kernel"] + (
      trained["bias"])
  np.testing.assert_allclose(method.scores(trained, 2.0, images), expected,
                             rtol=1e-6)
  assert method.encode is None and method.num_scores == 4
  np.testing.assert_array_equal(method.initial_mapping, np.arange(4))


def test_a_frozen_input_encodes_once_and_scores_the_encoding():
  readout = parts.BuiltReadout(apply=lambda network, x: x[:, 0, 0, :] + 1,
                               width=3, own_head=False)
  method = compose.assemble("lp", methods.get("linear_probe").parts,
                            _config("linear_probe"), readout, 2, 4)
  images = np.full((1, 4, 4, 3), 0.5, np.float32)
  encoded = method.encode(None, images)
  np.testing.assert_allclose(
      encoded, prompts.imagenet_normalize(images)[:, 0, 0, :] + 1)
  trained = method.init(jax.random.key(0))
  np.testing.assert_allclose(method.scores(trained, None, encoded),
                             encoded @ trained["kernel"] + trained["bias"])


def test_method_defaults_state_only_what_it_has():
  method = base.Method("m", init=lambda rng: {}, scores=None, num_scores=3)
  np.testing.assert_array_equal(method.initial_mapping, [0, 1, 2])
  assert method.initial_mapping.dtype == np.int32
  current = np.array([[2, 0, 1]])
  # No mapping pass: the count pass is never run.
  assert method.epoch_mapping(4, current, [0], count_pass=None) is current
  assert method.pictures("dir", {}, None, current[0], None, [], "t") == {}
  assert method.encode is None and method.mapping_statistic is None


@pytest.mark.parametrize("name, fields, keys", [
    ("vp_lp", {}, {"visual_prompt_dict", "fc_dict"}),
    ("vp_lp", {"prompt": "padding"}, {"padding_prompt_dict", "fc_dict"}),
    ("ilm_vp", {}, {"visual_prompt_dict", "mapping_sequence"}),
    ("ilm_vp", {"label_mapping": "blm"}, {"visual_prompt_dict",
                                          "mapping_matrix"}),
    ("ilm_vp", {"label_mapping": "fullymap"}, {"visual_prompt_dict",
                                               "output_mapping_dict"}),
    ("linear_probe", {}, {"fc_dict"}),
])
def test_each_part_exports_its_own_keys(name, fields, keys):
  spec = methods.get(name)
  config = _config(name, **fields)
  readout = (readouts.logits_of(NAMES) if spec.parts.readout.own_head else
             readouts.features_of(6))
  method = compose.assemble(name, spec.parts, config, readout, 4, 16)
  trained = jax.tree.map(np.asarray, method.init(jax.random.key(0)))
  exported = spec.to_pytorch(trained, method.initial_mapping, 16,
                             config.to_dict())
  assert set(exported) == keys
  if "fc_dict" in keys:  # (T, F) as torch.nn.Linear holds it.
    np.testing.assert_array_equal(exported["fc_dict"]["weight"],
                                  trained["kernel"].T)
  for key in ("visual_prompt_dict", "padding_prompt_dict"):
    if key in keys:
      assert exported[key]["program"].shape == (3, 64, 64)
      np.testing.assert_array_equal(exported[key]["program"],
                                    trained["program"].transpose(2, 0, 1))


def test_a_variant_is_the_parts_choices_off_their_defaults():
  ilm_vp, vp_lp = methods.get("ilm_vp"), methods.get("vp_lp")
  assert ilm_vp.variant_fields == ("label_mapping", "prompt")
  assert vp_lp.variant_fields == ("prompt",)
  assert ilm_vp.variant({"label_mapping": "blmpp", "prompt": "padding"}) == (
      "blmpp-padding")
  assert ilm_vp.variant({"label_mapping": "ilm"}) == ""
  assert vp_lp.variant({"prompt": "padding"}) == "padding"


OLD_ILM = {"method": "ilm_vp", "label_mapping": "ilm", "lap": None,
           "top_k": 3, "prompt": "expansive", "pad": 30,
           "mapping_interval": 1}


def _flat(name, **fields):
  return dict(run_config.to_dict(_config(name, **fields)).items())


def _same_run(old, new, name="ilm_vp") -> bool:
  spec = methods.get(name)
  return spec.comparable(old) == spec.comparable(new)


def test_a_recorded_config_compares_by_what_its_parts_use():
  new = {k: v for k, v in _flat("ilm_vp").items() if k in (
      *OLD_ILM, "topk_ratio")}
  # A run from before the published defaults (no topk_ratio; lap None,
  # top_k 3) resumes as it ran: ILM uses none of them.
  assert _same_run(OLD_ILM, new)
  assert _same_run({**OLD_ILM, "pad": 12}, new)  # No padding prompt.
  assert not _same_run({**OLD_ILM, "prompt": "padding"}, new)
  fullymap = {**OLD_ILM, "label_mapping": "fullymap"}
  assert _same_run(fullymap, {**new, "label_mapping": "fullymap"})
  # BLM++ then meant lap 0 and k = 3: not today's defaults, but the same
  # run when they are given explicitly.
  old_blmpp = {**OLD_ILM, "label_mapping": "blmpp"}
  new_blmpp = {**new, "label_mapping": "blmpp"}
  assert not _same_run(old_blmpp, new_blmpp)
  assert _same_run(old_blmpp, {**new_blmpp, "lap": 0.0, "top_k": 3})
  # Old BLM's None was 1, today's default.
  assert _same_run({**OLD_ILM, "label_mapping": "blm"},
                   {**new, "label_mapping": "blm"})
  assert not _same_run({**OLD_ILM, "label_mapping": "blm"},
                       {**new, "label_mapping": "blm", "lap": 0.5})


@pytest.mark.parametrize("classes, k", [(10, 1), (100, 15), (397, 59),
                                        (5, 1)])
def test_blmpp_k_is_the_published_ratio_of_the_classes(classes, k):
  """BLM's cfg.py: k = int(0.15 * T) (1 for 10 classes, 15 for 100, 59 for
  397), at least 1 here (theirs is 0 below 7 classes: an empty top-k)."""
  config = _config("ilm_vp", label_mapping="blmpp")
  assert outputs.top_k(config, classes) == k
  config.top_k = 4  # Still settable.
  assert outputs.top_k(config, classes) == 4


def test_blmpp_top_k_is_settable_from_bench_set():
  config = run_config.method_config("ilm_vp", "smoke").unlock()
  run_config.set_field(config, "top_k=5")  # An unset placeholder: an int.
  assert config.top_k == 5
  with pytest.raises(errors.ConfigError, match="'x' is not a int"):
    run_config.set_field(config, "top_k=x")


def test_blmpp_k_beyond_the_source_classes_is_one_line():
  config = _config("ilm_vp", label_mapping="blmpp", topk_ratio=1.0)
  with pytest.raises(errors.ConfigError, match=r"k = 13 .* exceeds the "
                     r"network's 12 source classes; set --config.top_k"):
    compose.assemble("ilm_vp", methods.get("ilm_vp").parts, config,
                     readouts.logits_of(NAMES), 13, 16)


def _patch(config, image_size):
  """docs/adding-a-method.md's part of one's own: a learned additive patch
  over the whole image."""
  del config

  def init(rng):
    del rng  # Starts at zero: the plain image.
    return {"patch": jnp.zeros((image_size, image_size, 3), jnp.float32)}

  def apply(trained, images):
    return prompts.imagenet_normalize(images + trained["patch"])

  return parts.BuiltInput(apply=apply, init=init)


PATCH = parts.Input(
    name="patch", transforms=True, build=_patch,
    configure=inputs.NONE.configure, smoke=inputs.NONE.smoke,
    export=lambda params, image_size, config: {"patch": np.transpose(
        np.asarray(params["patch"]), (2, 0, 1))})


def test_a_part_of_ones_own_composes_with_the_built_in_ones(monkeypatch):
  monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
  monkeypatch.setattr(methods, "_SOURCES", dict(methods._SOURCES))
  spec = methods.register(compose.compose(
      name="patch_lp", short="plp", label="Patch+LP",
      parts=compose.Composition(PATCH, readouts.FEATURES, outputs.LINEAR)))
  assert (spec.family, spec.encodes, spec.module) == ("hybrid", False,
                                                      "test_parts")
  config = run_config.method_config("patch_lp", "smoke")
  assert config.image_size == 64  # NONE's smoke size, reused.
  readout = parts.BuiltReadout(apply=lambda network, x: x.sum(axis=(1, 2)),
                               width=3, own_head=False)
  method = compose.assemble("patch_lp", spec.parts, config, readout, 2, 4)
  trained = method.init(jax.random.key(0))
  assert set(trained) == {"patch", "kernel", "bias"}
  trained["patch"] = jnp.full((4, 4, 3), 0.25)
  images = np.full((1, 4, 4, 3), 0.5, np.float32)
  values = prompts.imagenet_normalize(images + 0.25).sum(axis=(1, 2))
  np.testing.assert_allclose(
      method.scores(trained, None, images),
      values @ trained["kernel"] + trained["bias"], rtol=1e-6)
  exported = spec.to_pytorch(jax.tree.map(np.asarray, trained),
                             method.initial_mapping, 4, config.to_dict())
  assert set(exported) == {"patch", "fc_dict"}
  assert exported["patch"].shape == (3, 4, 4)
