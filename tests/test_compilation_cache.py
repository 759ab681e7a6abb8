"""The persistent compilation cache: on in the given directory, off with "", env var wins."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: jax's cache settings are process-global.
_PROBE = """
import sys, jax, jax.numpy as jnp
from sashimi_jax import compilation_cache
used = compilation_cache.enable(sys.argv[1])
print("USED", used)
print("CONFIG", jax.config.jax_compilation_cache_dir)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
print(float(jax.jit(lambda x: jnp.sin(x) * 2.0)(jnp.arange(8.0)).sum()))
"""


def _probe(cache_dir: str, env_dir: str | None = None) -> str:
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  if env_dir is not None:
    env["JAX_COMPILATION_CACHE_DIR"] = env_dir
  result = subprocess.run([sys.executable, "-c", _PROBE, cache_dir], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
  return result.stdout


def test_cache_dir_is_created_and_filled(tmp_path):
  cache = tmp_path / "nested" / "xla"
  out = _probe(str(cache))
  assert f"USED {cache}" in out
  assert f"CONFIG {cache}" in out
  entries = list(cache.iterdir())
  assert entries, "no compiled program was written to the cache"


def test_empty_dir_turns_cache_off(tmp_path):
  out = _probe("")
  assert "USED None" in out
  assert "CONFIG None" in out


def test_environment_variable_wins(tmp_path):
  env_dir = tmp_path / "from_env"
  out = _probe(str(tmp_path / "from_flag"), env_dir=str(env_dir))
  assert f"USED {env_dir}" in out
  assert not (tmp_path / "from_flag").exists()
  assert list(env_dir.iterdir()), "JAX did not use JAX_COMPILATION_CACHE_DIR"
