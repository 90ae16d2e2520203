"""Target datasets for reprogramming: registry, few-shot sampling, loaders.

Public API:
- `get_dataset_info(name) -> DatasetInfo`, `dataset_names()`: the registry.
- `few_shot_indices`, `few_shot_indices_multi`: the PyTorch version's
  per-class draw, for one seed or several.
- `default_data_config()`: the `config.data` block.
- `make_loader(...)`, `make_loader_from_config(config.data, split, ...)`:
  a `Loader` whose `epoch(e)` yields {'image', 'label', 'mask'} batches.
- `split_labels`, `split_labels_from_config`: labels of a whole split.
- `open_split_from_config(config.data, split)`: a split's source, labels
  and class names.
- `decode_once`, `RowStore`, `Sampler`: decode a run's images once into
  memory and serve every epoch from there, per seed (`store.py`).
- `prefetch_to_device`: keeps batches in flight to the accelerator.
- `config.data.source='torchvision'` reads the PyTorch version's data root
  as it is (`torchvision_root.py`, `coop_lmdb.py`); `prepare --archive`
  writes tfds files without TensorFlow (`tfds_writer.py`).
- `DataError`: the one exception, a one-line message.
"""

from reprog_jax.data.errors import DataError
from reprog_jax.data.fewshot import few_shot_indices
from reprog_jax.data.fewshot import few_shot_indices_multi
from reprog_jax.data.fewshot import stratified_holdout
from reprog_jax.data.loader import default_data_config
from reprog_jax.data.loader import make_loader
from reprog_jax.data.loader import make_loader_from_config
from reprog_jax.data.loader import open_split_from_config
from reprog_jax.data.loader import split_labels
from reprog_jax.data.loader import split_labels_from_config
from reprog_jax.data.pipeline import Loader
from reprog_jax.data.pipeline import prefetch_to_device
from reprog_jax.data.preprocess import load_image
from reprog_jax.data.registry import DatasetInfo
from reprog_jax.data.registry import dataset_names
from reprog_jax.data.registry import get_dataset_info
from reprog_jax.data.store import decode_once
from reprog_jax.data.store import RowStore
from reprog_jax.data.store import Sampler
