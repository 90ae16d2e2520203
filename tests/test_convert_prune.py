"""`convert prune` (one-shot pruning of a network directory) and
`convert torch --mask-from-zeros` (a sparse checkpoint's zeros as its mask)."""

import contextlib
import io
import json

import flax.traverse_util
import jax
import numpy as np
import pytest

from conftest import listing, random_mask, save_pth
from convert import cli
from reprog_jax.model import network_dir
from reprog_jax.model import pruning


def _run(capsys, *args):
  code = cli.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return code, out, err


def kernels(tree):
  return {path: np.asarray(leaf)
          for path, leaf in flax.traverse_util.flatten_dict(
              jax.device_get(tree)).items() if path[-1] == "kernel"}


def read_meta(directory):
  return json.loads((directory / "meta.json").read_text())


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("nets") / "dense"
  assert cli.main(["torch", "--arch", "resnet18", "--random-init",
                   "--no-verify", "--out", str(out)]) == 0
  return out


@pytest.fixture(scope="module")
def pruned(dense_dir):
  """`convert prune` of the dense network to sparsity state 2: (dir, stdout)."""
  out = dense_dir.parent / "mp2"
  with contextlib.redirect_stdout(io.StringIO()) as stdout:
    code = cli.main(["prune", "--from", str(dense_dir), "--method",
                     "magnitude", "--scope", "global", "--sparsity-state", "2",
                     "--out", str(out)])
  assert code == 0
  return out, stdout.getvalue()


def test_prune_keeps_the_largest_weights_and_says_it_is_no_ticket(
    dense_dir, pruned):
  out, stdout = pruned
  source, pruned = network_dir.load(dense_dir), network_dir.load(out)
  weights, masks = kernels(source.params), kernels(pruned.masks)
  total = sum(w.size for w in weights.values())
  keep = round(0.8 ** 2 * total)
  assert sum(int(m.sum()) for m in masks.values()) == keep
  # numpy: the keep-th largest |w| over every conv and fc kernel separates
  # what is kept from what is pruned.
  magnitudes = np.sort(np.concatenate([np.abs(w).ravel()
                                       for w in weights.values()]))[::-1]
  threshold = magnitudes[keep - 1]
  assert magnitudes[keep] < threshold  # No tie at the boundary here.
  for path, w in weights.items():
    np.testing.assert_array_equal(masks[path], np.abs(w) >= threshold)
    # Pruned weights are stored as zeros, the kept ones unchanged.
    np.testing.assert_array_equal(kernels(pruned.params)[path],
                                  np.where(masks[path], w, 0))

  meta, src_meta = read_meta(out), read_meta(dense_dir)
  assert set(meta) == set(src_meta)  # The format `convert torch` writes.
  assert meta["dense"] is False and src_meta["dense"] is True
  assert meta["ticket"]["sparsity_state"] == 2
  assert meta["ticket"]["expected_remaining_percent"] == pytest.approx(64.0)
  assert meta["ticket"]["lottery_ticket"] is False
  assert "not a lottery ticket" in meta["ticket"]["note"]
  assert (meta["ticket"]["method"], meta["ticket"]["scope"]) == (
      "magnitude", "global")
  assert meta["sources"]["network"]["path"] == str(dense_dir)
  assert meta["sources"]["weights"] == src_meta["sources"]["weights"]
  assert meta["sparsity"]["global_remaining_percent"] == pytest.approx(
      100 * keep / total)
  assert meta["sparsity"] == json.loads(json.dumps(pruned.sparsity()))
  assert f"{meta['sparsity']['remaining_percent']:.2f} %" in stdout
  assert "not a lottery ticket" in stdout


def test_prune_again_random_layerwise_is_nested_and_seeded(
    pruned, tmp_path, capsys):
  first = pruned[0]
  outs = {}
  for name, seed in [("a", 3), ("c", 4)]:
    outs[name] = tmp_path / name
    code, stdout, err = _run(
        capsys, "prune", "--from", first, "--method", "random", "--scope",
        "layerwise", "--remaining", 0.3, "--seed", seed,
        "--no-prune-first-conv", "--out", outs[name], "--per-layer")
    assert code == 0, err
  assert "layer4.1.conv2" in stdout  # The per-layer table.
  source = network_dir.load(first)
  before = kernels(source.masks)
  a, c = (kernels(network_dir.load(outs[n]).masks) for n in "ac")
  # The flags reach the library: the same masks as calling it directly.
  b = kernels(pruning.prune(
      jax.device_get(source.params), jax.device_get(source.masks),
      remaining=0.3, method="random", scope="layerwise", seed=3,
      prune_first_conv=False))
  stem = ("conv1", "kernel")
  np.testing.assert_array_equal(a[stem], before[stem])
  for path in before:
    assert not (a[path] & ~before[path]).any()  # Nested.
    np.testing.assert_array_equal(a[path], b[path])
    if path != stem:
      assert a[path].sum() == round(0.3 * a[path].size)
  assert any(not np.array_equal(a[p], c[p]) for p in a)
  ticket = read_meta(outs["a"])["ticket"]
  assert ticket["sparsity_state"] is None and ticket["seed"] == 3
  assert ticket["prune_first_conv"] is False and ticket["method"] == "random"


@pytest.mark.parametrize("extra, message", [
    (["--remaining", "0.9"], "cannot keep 90 % "),
    (["--remaining", "1e-9", "--scope", "layerwise"], "keeps none"),
])
def test_impossible_prunes_are_one_line_errors_writing_nothing(
    pruned, tmp_path, capsys, extra, message):
  code, _, err = _run(capsys, "prune", "--from", pruned[0], *extra,
                      "--out", tmp_path / "more")
  assert code == 1
  assert err.startswith("convert: error: ") and message in err
  assert err.count("\n") == 1
  assert listing(tmp_path) == []


def test_prune_refuses_existing_out_and_bad_source(dense_dir, tmp_path, capsys):
  out = tmp_path / "mp1"
  args = ["prune", "--from", dense_dir, "--sparsity-state", 1, "--out", out]
  assert _run(capsys, *args)[0] == 0
  code, _, err = _run(capsys, *args)
  assert code == 1 and "exists; pass --force" in err
  assert _run(capsys, *args, "--force")[0] == 0
  code, _, err = _run(capsys, "prune", "--from", tmp_path / "nothing",
                      "--sparsity-state", 1, "--out", tmp_path / "x")
  assert code == 1 and "no such network directory" in err
  assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------
# convert torch --mask-from-zeros
# --------------------------------------------------------------------------


def test_mask_from_zeros_turns_a_sparse_checkpoint_into_a_ticket(
    tmp_path, resnet18_state, capsys):
  mask = random_mask(resnet18_state, keep=0.3, seed=2)
  sparse = {k: v * mask[k] if k in mask else v
            for k, v in resnet18_state.items()}
  path = save_pth(tmp_path / "sparse.pth", sparse)
  code, out, err = _run(capsys, "torch", "--arch", "resnet18", "--weights",
                        path, "--mask-from-zeros", "--verify-size", 32,
                        "--out", tmp_path / "net")
  assert code == 0, err
  net = network_dir.load(tmp_path / "net")
  masks = flax.traverse_util.flatten_dict(jax.device_get(net.masks))
  np.testing.assert_array_equal(  # OIHW -> HWIO.
      masks[("layer2", "0", "downsample", "0", "kernel")],
      mask["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0) == 1)
  np.testing.assert_array_equal(masks[("fc", "kernel")],
                                mask["fc.weight"].T == 1)
  assert masks[("bn1", "scale")] is None
  meta = read_meta(tmp_path / "net")
  assert meta["dense"] is False and meta["ticket"]["mask_from_zeros"] is True
  ones = sum(int(m.sum()) for m in mask.values())
  total = sum(m.size for m in mask.values())
  assert meta["sparsity"]["mask_remaining_percent"] == pytest.approx(
      100 * ones / total)
  assert meta["verification"]["max_abs_logit_diff"] < 1e-4
  assert "nothing to mask" not in out


def test_mask_from_zeros_on_a_dense_checkpoint_warns_and_stays_dense(
    tmp_path, resnet18_pth, capsys):
  code, out, err = _run(capsys, "torch", "--arch", "resnet18", "--weights",
                        resnet18_pth, "--mask-from-zeros", "--no-verify",
                        "--out", tmp_path / "net")
  assert code == 0, err
  warnings = [line for line in out.splitlines() if "nothing to mask" in line]
  assert len(warnings) == 1 and warnings[0].startswith("warning: ")
  meta = read_meta(tmp_path / "net")
  assert meta["dense"] is True and meta["ticket"] is None
  assert meta["sparsity"]["mask_remaining_percent"] == 100.0


@pytest.mark.parametrize("source", [
    ["--random-init"], ["--weights", "W.pth", "--mask", "M.pth"],
    ["--lt-dir", ".", "--sparsity-state", "2"]])
def test_mask_from_zeros_takes_no_other_mask_source(tmp_path, capsys, source):
  with pytest.raises(SystemExit) as e:
    cli.main(["torch", "--arch", "resnet18", *source, "--mask-from-zeros",
              "--out", str(tmp_path / "net")])
  assert e.value.code == 1
  assert capsys.readouterr().err == (
      "python -m convert: error: --mask-from-zeros takes the mask from "
      "--weights' zeros: not with --mask, --lt-dir or --random-init (see "
      "--help)\n")
  assert listing(tmp_path) == []
