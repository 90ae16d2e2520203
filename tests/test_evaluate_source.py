"""Source (ImageNet) top-1 in meta.json: `convert --source-accuracy` records
it, `python -m reprog_jax.evaluate_source` measures it the way torchvision
evaluates ImageNet, and the network directory stays loadable."""

import json

import numpy as np
from PIL import Image
import pytest
import torch
import torchvision
from torchvision import transforms

from conftest import save_random_network
from convert import cli
from reprog_jax.model import network_dir
from reprog_jax.tools import evaluate_source

CLASSES = ("n01", "n02", "n03")


@pytest.fixture(scope="module")
def mini_network(tmp_path_factory):
  """A random resnet_mini with 3 classes, saved as a network directory
  (its values drawn in numpy: flax's `init`, op by op, compiles for ~10 s)."""
  return save_random_network(tmp_path_factory.mktemp("nets") / "mini",
                             num_classes=len(CLASSES))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  """3 class folders, images of odd sizes (portrait, landscape), one in a
  subfolder, and a file that is not an image."""
  root = tmp_path_factory.mktemp("val")
  rng = np.random.default_rng(0)
  sizes = [(300, 260), (257, 400), (500, 333)]
  for c, name in enumerate(CLASSES):
    (root / name / "sub").mkdir(parents=True)
    for i in range(3):
      where = root / name / ("sub" if i == 2 else "") / f"img_{i}.jpeg"
      pixels = rng.integers(0, 256, (*sizes[(c + i) % 3], 3), np.uint8)
      Image.fromarray(pixels).save(where)
    (root / name / "notes.txt").write_text("not an image")
  return root


def test_order_and_transform_equal_torchvision(image_folder):
  paths, labels, classes = evaluate_source.list_image_folder(image_folder)
  theirs = torchvision.datasets.ImageFolder(str(image_folder))
  assert classes == theirs.classes == list(CLASSES)
  assert list(zip(paths, labels.tolist())) == theirs.samples
  transform = transforms.Compose([
      transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
      transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
  for path in paths[:4]:
    with Image.open(path) as image:
      expected = transform(image.convert("RGB")).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(evaluate_source.load_image(path), expected,
                               atol=1e-5)


def test_evaluate_records_top1_and_keeps_the_directory_loadable(
    mini_network, image_folder, capsys):
  assert evaluate_source.main([str(mini_network), "--data_dir",
                               str(image_folder), "--batch_size", "4",
                               "--no-progress"]) == 0
  assert "recorded in" in capsys.readouterr().out
  # Expected: the network on torchvision's own batches.
  network = network_dir.load(str(mini_network), verify=True)
  transform = transforms.Compose([
      transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
      transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
  data = torchvision.datasets.ImageFolder(str(image_folder), transform)
  images = torch.stack([x for x, _ in data]).permute(0, 2, 3, 1).numpy()
  predicted = np.asarray(network.logits(images)).argmax(-1)
  expected = 100 * np.mean(predicted == np.asarray(data.targets))
  meta = json.loads((mini_network / "meta.json").read_text())
  assert meta["source_top1"] == pytest.approx(expected)
  assert "evaluate_source" in meta["source_top1_from"]
  assert network.meta["source_top1"] == meta["source_top1"]


def test_a_tree_that_does_not_match_is_one_line(mini_network, tmp_path,
                                                capsys):
  (tmp_path / "only_one_class").mkdir()
  assert evaluate_source.main([str(mini_network), "--data_dir",
                               str(tmp_path), "--no-progress"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "1 class folders" in err
  assert evaluate_source.main([str(mini_network), "--data_dir",
                               str(tmp_path / "nowhere")]) == 1
  assert "no such directory" in capsys.readouterr().err


def test_record_refuses_a_fraction_out_of_range(mini_network):
  with pytest.raises(network_dir.NetworkDirError, match=r"in \[0, 100\]"):
    network_dir.record_source_accuracy(mini_network, 761.0, "typo")


def test_convert_and_prune_record_the_given_source_accuracy(tmp_path,
                                                            capsys):
  dense = tmp_path / "dense"
  assert cli.main(["torch", "--arch", "resnet18", "--random-init",
                   "--no-verify", "--source-accuracy", "69.76",
                   "--out", str(dense)]) == 0
  meta = json.loads((dense / "meta.json").read_text())
  assert meta["source_top1"] == 69.76
  assert "--source-accuracy" in meta["source_top1_from"]
  assert cli.main(["prune", "--from", str(dense), "--sparsity-state", "1",
                   "--source-accuracy", "68.5", "--out",
                   str(tmp_path / "mp1")]) == 0
  pruned = network_dir.load(str(tmp_path / "mp1"), verify=True)
  assert pruned.meta["source_top1"] == 68.5
  capsys.readouterr()
  with pytest.raises(SystemExit):
    cli.main(["torch", "--arch", "resnet18", "--random-init", "--no-verify",
              "--source-accuracy", "0.761x", "--out", str(tmp_path / "x")])
  assert "is not a number" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()
