"""cpu_devices.configure: how many XLA devices a CPU host is split into for sampling."""

import os
import subprocess
import sys

import pytest

from sashimi_jax import cpu_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_xla_flags_device_count_wins_over_the_request():
  environ = {"XLA_FLAGS": "--foo=1 --xla_force_host_platform_device_count=3"}
  assert cpu_devices.configure(None, environ) == 3
  assert cpu_devices.configure(5, environ) == 3


def test_a_device_count_below_one_is_refused():
  with pytest.raises(ValueError, match="--cpu_devices must be >= 1, got 0"):
    cpu_devices.configure(0, {})


def _devices_in_fresh_process(requested) -> int:
  code = ("import sys; from sashimi_jax import cpu_devices; import jax; "
          f"n = cpu_devices.configure({requested!r}, {{}}); "
          "assert n == jax.device_count(), (n, jax.devices()); print(jax.device_count())")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  return int(done.stdout.split()[-1])


def test_default_is_one_device_per_available_core_and_a_request_is_honoured():
  assert _devices_in_fresh_process(None) == cpu_devices.available_cores()
  assert _devices_in_fresh_process(3) == 3


def test_after_jax_has_started_the_existing_devices_are_kept():
  import jax  # pylint: disable=g-import-not-at-top
  existing = len(jax.devices("cpu"))
  assert cpu_devices.configure(existing + 2, {}) == existing
