"""`python -m reprog_jax.evaluate_source`: runs
`reprog_jax.tools.evaluate_source` (see its docstring)."""

import runpy

if __name__ == "__main__":
  runpy.run_module("reprog_jax.tools.evaluate_source", run_name="__main__",
                   alter_sys=True)
