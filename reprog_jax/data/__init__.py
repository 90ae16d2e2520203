"""Target datasets for reprogramming: registry, few-shot sampling, decoding.

Public API:
- `get_dataset_info(name) -> DatasetInfo`, `dataset_names()`: the registry.
- `few_shot_indices`, `few_shot_indices_multi`: the PyTorch version's
  per-class draw, for one seed or several; `shot_name(n_shot)`: its one
  display form ('10-shot', 'full').
- `default_data_config()`: the `config.data` block.
- `open_split_from_config(config.data, split, n_shot)`: a split's source,
  labels and class names.
- `decode_once`, `decode_split`, `RowStore`, `Sampler`: decode a run's
  images once into memory and serve every epoch from there, per seed
  (`store.py`); `decode_batches`: the decoding pass itself (`pipeline.py`).
- `config.data.source='torchvision'` reads the PyTorch version's data root
  as it is (`torchvision_root.py`, `coop_lmdb.py`); `prepare --archive`
  writes tfds files without TensorFlow (`tfds_writer.py`).
- `DataError`: the one exception, a one-line message (`DataNotFound`, its
  kind for data that is not there); a file that does not decode is one
  (naming it), and `python -m reprog_jax.data.doctor ROOT` lists them all.
"""

from reprog_jax.data.errors import DataError
from reprog_jax.data.errors import DataNotFound
from reprog_jax.data.fewshot import few_shot_indices
from reprog_jax.data.fewshot import few_shot_indices_multi
from reprog_jax.data.fewshot import shot_name
from reprog_jax.data.fewshot import stratified_holdout
from reprog_jax.data.loader import default_data_config
from reprog_jax.data.loader import open_split_from_config
from reprog_jax.data.pipeline import decode_batches
from reprog_jax.data.registry import DatasetInfo
from reprog_jax.data.registry import dataset_names
from reprog_jax.data.registry import get_dataset_info
from reprog_jax.data.store import decode_once
from reprog_jax.data.store import decode_split
from reprog_jax.data.store import RowStore
from reprog_jax.data.store import Sampler
from reprog_jax.data.store import split_origin
