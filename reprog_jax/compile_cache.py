"""A persistent XLA compilation cache, on by default for every run.

ResNet-50's jitted steps take tens of seconds to compile on a CPU (plus
cuDNN autotuning on a GPU), and a sweep runs many cells of the same shapes.
`enable` points JAX's persistent cache at a directory under the user's cache
(`$XDG_CACHE_HOME/reprog_jax/xla`, else `~/.cache/reprog_jax/xla`), so a
second run or sweep cell of the same shapes loads its executables instead
of compiling them. `--config.compile_cache=DIR` moves it, `''` turns it off;
`$JAX_COMPILATION_CACHE_DIR`, when set, is used as is.

Several processes may share the directory: with a size limit set, JAX takes
a file lock around every write (`filelock`), and an entry that cannot be
read is recompiled, never trusted.
"""

import os

import jax

ENV = "JAX_COMPILATION_CACHE_DIR"
# Evicted least-recently-used past this; also what makes JAX lock writes.
MAX_BYTES = 8 << 30

_enabled = {"directory": None}


def default_directory() -> str:
  """Where the cache goes unless told otherwise."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "reprog_jax", "xla")


def enable(directory: str | None = None) -> str | None:
  """Turns the persistent cache on (or off) for this process.

  Args:
    directory: the cache directory; '' turns the cache off; None:
      `$JAX_COMPILATION_CACHE_DIR` if set, else `default_directory()`.

  Returns:
    The directory in use, or None when off. JAX reads the setting at its
    first compilation, so the first call of a process decides: a later
    call naming another directory keeps the first (and says so).
  """
  if directory == "":
    if _enabled["directory"] is None:
      jax.config.update("jax_enable_compilation_cache", False)
    return _enabled["directory"]
  path = os.path.abspath(os.path.expanduser(
      directory or os.environ.get(ENV) or default_directory()))
  if _enabled["directory"] is not None:
    # None asks for "a cache": the one already on (e.g. the demo's) is one.
    if directory is not None and path != _enabled["directory"]:
      print(f"NOTE: the compilation cache stays {_enabled['directory']} "
            f"for this process (asked for {path})")
    return _enabled["directory"]
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:  # A cache is an optimisation, never a reason to fail.
    print(f"NOTE: no compilation cache ({path}: {e.strerror}); every run "
          f"compiles its steps; set --config.compile_cache=DIR to move it")
    return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  # Small programs too: a few-shot smoke step compiles in under a second,
  # and a second run should compile nothing at all.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  _enabled["directory"] = path
  return path
