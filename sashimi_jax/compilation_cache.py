"""JAX's persistent compilation cache for the entry points.

Compiling a paper-size train step takes minutes on a CPU host (and longer for a TPU pod), and a
preempted run recompiles the same program when it resumes. With the cache on, a resumed run,
a second sampling job or a rerun of the tests loads the compiled executable from disk instead.
"""

import os

DEFAULT_DIR = os.path.join("~", ".cache", "sashimi_jax", "xla")
# Only programs that took this long to compile are written (small helpers are not worth a file).
MIN_COMPILE_SECONDS = 1.0


def enable(cache_dir: str | None) -> str | None:
  """Turns the cache on in `cache_dir` ("" or None: off). Returns the directory used, or None.

  A JAX_COMPILATION_CACHE_DIR environment variable wins over `cache_dir` (JAX reads it itself).
  """
  import jax  # pylint: disable=g-import-not-at-top

  from_env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if from_env:
    return from_env
  if not cache_dir:
    return None
  path = os.path.expanduser(cache_dir)
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path
