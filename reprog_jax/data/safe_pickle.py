"""Unpickling data files without running what they name.

CIFAR's python batches and the PyTorch version's CoOp LMDB records are
pickles, which torchvision and the PyTorch code read with plain `pickle`:
a pickle may name any importable callable (`os.system`) and call it while
loading, so a downloaded or shared data root would be a program. Ours name
only the callables that rebuild plain data: NumPy arrays, dtypes and
scalars, and the few builtins that protocols 0 to 5 use for bytes,
bytearrays and sets. Everything else (dicts, lists, tuples, str, bytes,
ints, floats) needs no callable at all. A pickle naming another one is
refused before anything is called, in one line naming the file (and the
LMDB key) and the callable.
"""

from __future__ import annotations

import builtins
import codecs
import io
import pickle

import numpy as np

from reprog_jax.data.errors import DataError

try:
  from numpy._core import multiarray as _multiarray  # NumPy 2.
  from numpy._core import numeric as _numeric
except ImportError:  # NumPy 1.
  from numpy.core import multiarray as _multiarray
  from numpy.core import numeric as _numeric

# (module, name) as a pickle spells it -> the object it may stand for. Each
# spelling is listed (NumPy 1 wrote `numpy.core`, NumPy 2 writes
# `numpy._core`; Python 2 pickles say `__builtin__`), and resolved here
# rather than imported by name: NumPy 2's `numpy.core` alias warns.
_ALLOWED = {}
for _module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
  _ALLOWED[(_module, '_reconstruct')] = _multiarray._reconstruct  # pylint: disable=protected-access
  _ALLOWED[(_module, 'scalar')] = _multiarray.scalar
for _module in ('numpy.core.numeric', 'numpy._core.numeric'):
  # Protocol 5's array reduction.
  _ALLOWED[(_module, '_frombuffer')] = _numeric._frombuffer  # pylint: disable=protected-access
_ALLOWED[('numpy', 'ndarray')] = np.ndarray
_ALLOWED[('numpy', 'dtype')] = np.dtype
for _module in ('builtins', '__builtin__'):
  for _name in ('bytes', 'bytearray', 'set', 'frozenset', 'complex'):
    _ALLOWED[(_module, _name)] = getattr(builtins, _name)
# Protocols 0 to 2 written by Python 3 spell a bytes object as
# `_codecs.encode(text, 'latin1')`.
_ALLOWED[('_codecs', 'encode')] = codecs.encode


class _Refused(pickle.UnpicklingError):
  """A global outside `_ALLOWED`; carries its dotted name."""

  def __init__(self, dotted: str):
    super().__init__(dotted)
    self.dotted = dotted


class _Unpickler(pickle.Unpickler):
  """Resolves only the globals of `_ALLOWED`; refuses any other."""

  def find_class(self, module, name):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise _Refused(f'{module}.{name}') from None


def _refusal(what: str, dotted: str) -> DataError:
  return DataError(
      f'{what}: the pickle calls {dotted}, which no data file holds; '
      'refused without running it (a data root that runs code is unsafe: '
      'get this file again from its original source).')


def load(file, *, what: str, encoding: str = 'ASCII'):
  """`pickle.load` that admits only plain data (see the module docstring).

  Args:
    file: a binary file object.
    what: where the pickle comes from, the head of a refusal's line (e.g.
      'cifar10: /data/cifar10/cifar-10-batches-py/data_batch_1').
    encoding: how Python 2 strings are decoded ('latin1' for CIFAR's).

  Returns:
    The unpickled object.

  Raises:
    DataError: the pickle names a callable outside the allowed ones
      (nothing of it was run).
    pickle.UnpicklingError, EOFError, ValueError, ...: a truncated or
      malformed pickle, as `pickle.load` raises them.
  """
  try:
    return _Unpickler(file, encoding=encoding).load()
  except _Refused as e:
    raise _refusal(what, e.dotted) from None


def loads(data: bytes, *, what: str, encoding: str = 'ASCII'):
  """`load` of a bytes object (an LMDB value)."""
  return load(io.BytesIO(data), what=what, encoding=encoding)
