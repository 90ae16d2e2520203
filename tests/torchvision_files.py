"""Tiny files in the PyTorch version's data-root formats, for tests.

Each writer puts `<root>/<name>/...` where torchvision's dataset class (built
with root `<root>/<name>`, as the PyTorch scripts do) or `COOPLMDBDataset`
finds it, with a few random images of odd sizes and modes, and returns what
it wrote per split as (images, labels) in torchvision's order where that
order is plain (array datasets).
"""

import io
import json
import os
import pickle

import numpy as np
from PIL import Image
import scipy.io


def _image(rng, mode="RGB", size=None):
  width, height = size or rng.integers(5, 20, size=2)
  pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
  image = Image.fromarray(pixels)
  return image if mode == "RGB" else image.convert(mode)


def _save(image, path, fmt):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, format=fmt)


def write_cifar(root, name, per_split=(7, 5), seed=0, cycle_labels=False):
  """CIFAR pickles; `cycle_labels` gives every class its share (few-shot)."""
  rng = np.random.default_rng(seed)
  base = os.path.join(root, name)
  if name == "cifar10":
    directory = os.path.join(base, "cifar-10-batches-py")
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)],
             "test": ["test_batch"]}
    meta = ("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    label_key, num_classes = "labels", 10
  else:
    directory = os.path.join(base, "cifar-100-python")
    files = {"train": ["train"], "test": ["test"]}
    meta = ("meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                     "coarse_label_names": [f"k{i}" for i in range(20)]})
    label_key, num_classes = "fine_labels", 100
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, meta[0]), "wb") as f:
    pickle.dump(meta[1], f)
  written = {}
  for split, count in zip(("train", "test"), per_split):
    images, labels = [], []
    for file_name in files[split]:
      data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
      batch_labels = rng.integers(0, num_classes, size=count).tolist()
      if cycle_labels:
        batch_labels = [(len(labels) + i) % num_classes for i in range(count)]
      entry = {"data": data, label_key: batch_labels}
      if name == "cifar100":
        entry["coarse_labels"] = (np.asarray(batch_labels) // 5).tolist()
      with open(os.path.join(directory, file_name), "wb") as f:
        pickle.dump(entry, f)
      images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
      labels += batch_labels
    written[split] = (np.concatenate(images), np.asarray(labels))
  return written


def write_svhn(root, per_split=(6, 4), seed=0):
  rng = np.random.default_rng(seed)
  base = os.path.join(root, "svhn")
  os.makedirs(base, exist_ok=True)
  for split, count in zip(("train", "test"), per_split):
    x = rng.integers(0, 256, size=(32, 32, 3, count), dtype=np.uint8)
    y = rng.integers(1, 11, size=(count, 1)).astype(np.uint8)  # 10 = digit 0
    scipy.io.savemat(os.path.join(base, f"{split}_32x32.mat"),
                     {"X": x, "y": y})


def write_gtsrb(root, seed=0):
  rng = np.random.default_rng(seed)
  base = os.path.join(root, "gtsrb", "gtsrb")
  for class_id in range(43):
    class_dir = os.path.join(base, "GTSRB", "Training", f"{class_id:05d}")
    for i in range(1 + class_id % 2):
      _save(_image(rng), os.path.join(class_dir, f"00000_{i:05d}.ppm"), "PPM")
    with open(os.path.join(class_dir, f"GT-{class_id:05d}.csv"), "w") as f:
      f.write("Filename;ClassId\n")
  test_dir = os.path.join(base, "GTSRB", "Final_Test", "Images")
  rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
  for i, class_id in enumerate((42, 3, 0, 17)):
    _save(_image(rng), os.path.join(test_dir, f"{i:05d}.ppm"), "PPM")
    rows.append(f"{i:05d}.ppm;1;1;0;0;1;1;{class_id}")
  with open(os.path.join(base, "GT-final_test.csv"), "w") as f:
    f.write("\n".join(rows) + "\n")


def write_dtd(root, seed=0):
  rng = np.random.default_rng(seed)
  data = os.path.join(root, "dtd", "dtd", "dtd")
  classes = [f"texture{i:02d}" for i in range(47)]
  for split, order in (("train", classes), ("test", classes[::-1])):
    lines = []
    for c in order:
      file_name = f"{c}_{split}.jpg"
      _save(_image(rng, "L" if c.endswith("3") else "RGB"),
            os.path.join(data, "images", c, file_name), "JPEG")
      lines.append(f"{c}/{file_name}")
    os.makedirs(os.path.join(data, "labels"), exist_ok=True)
    with open(os.path.join(data, "labels", f"{split}1.txt"), "w") as f:
      f.write("\n".join(lines) + "\n")


def write_flowers102(root, seed=0):
  rng = np.random.default_rng(seed)
  base = os.path.join(root, "flowers102", "flowers-102")
  labels = rng.integers(1, 103, size=9)
  for image_id in range(1, 10):
    _save(_image(rng), os.path.join(base, "jpg", f"image_{image_id:05d}.jpg"),
          "JPEG")
  scipy.io.savemat(os.path.join(base, "imagelabels.mat"),
                   {"labels": labels[None]})
  scipy.io.savemat(os.path.join(base, "setid.mat"),
                   {"trnid": np.array([[4, 1, 7]]), "valid": np.array([[2]]),
                    "tstid": np.array([[9, 3, 5, 6]])})


def write_oxfordpets(root, seed=0):
  rng = np.random.default_rng(seed)
  base = os.path.join(root, "oxfordpets", "oxford-iiit-pet")
  os.makedirs(os.path.join(base, "annotations"), exist_ok=True)
  entries = {"trainval": [("Abyssinian_1", 1, 1, 1), ("yorkshire_terrier_3",
                                                      37, 2, 25),
                          ("Bengal_10", 6, 1, 6)],
             "test": [("pug_2", 29, 2, 20), ("Abyssinian_5", 1, 1, 1)]}
  for split, rows in entries.items():
    with open(os.path.join(base, "annotations", f"{split}.txt"), "w") as f:
      for image_id, *numbers in rows:
        f.write(f"{image_id} {' '.join(map(str, numbers))}\n")
        _save(_image(rng, "RGBA" if image_id == "pug_2" else "RGB"),
              os.path.join(base, "images", f"{image_id}.jpg"),
              "PNG" if image_id == "pug_2" else "JPEG")


def write_eurosat(root, per_class=10, seed=0):
  rng = np.random.default_rng(seed)
  base = os.path.join(root, "eurosat", "eurosat", "2750")
  for c in ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway",
            "Industrial", "Pasture", "PermanentCrop", "Residential", "River",
            "SeaLake"):
    for i in range(per_class):
      _save(_image(rng, size=(8, 8)), os.path.join(base, c, f"{c}_{i}.jpg"),
            "JPEG")


def write_coop_lmdb(root, name, num_classes, per_split=(5, 3), seed=0):
  """`<root>/<name>/{train,test}.lmdb` and split.json as the PyTorch
  version's data preparation writes them: pickled `__len__`, `__keys__`
  and (encoded image, label) records."""
  import lmdb  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  base = os.path.join(root, name)
  os.makedirs(base, exist_ok=True)
  split_file = {"train": [], "val": [], "test": []}
  for c in range(num_classes):  # every class named in the test list
    split_file["test"].append([f"img/{c}.jpg", c, f"class {c}"])
  with open(os.path.join(base, "split.json"), "w") as f:
    json.dump(split_file, f)
  for split, count in zip(("train", "test"), per_split):
    env = lmdb.open(os.path.join(base, f"{split}.lmdb"), subdir=True,
                    map_size=1 << 24)
    keys = [f"{i:08d}".encode() for i in range(count)]
    with env.begin(write=True) as txn:
      for key in keys:
        buffer = io.BytesIO()
        _image(rng, "L" if key.endswith(b"1") else "RGB").save(buffer, "JPEG")
        txn.put(key, pickle.dumps((buffer.getvalue(),
                                   int(rng.integers(num_classes)))))
      txn.put(b"__keys__", pickle.dumps(keys))
      txn.put(b"__len__", pickle.dumps(len(keys)))
    env.close()


def write_root(root):
  """A whole tiny PyTorch data root: every reader's format."""
  write_cifar(root, "cifar10")
  write_cifar(root, "cifar100")
  write_svhn(root)
  write_gtsrb(root)
  write_dtd(root)
  write_flowers102(root)
  write_oxfordpets(root)
  write_eurosat(root)
  for name, num_classes in (("food101", 101), ("sun397", 397),
                            ("ucf101", 101), ("stanfordcars", 196)):
    write_coop_lmdb(root, name, num_classes)
