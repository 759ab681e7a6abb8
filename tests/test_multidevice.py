"""Scale-out: the train step on 8 simulated CPU devices equals the 1-device step.

XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before jax is imported, so the
comparison runs in a subprocess; it prints one JSON line of measured differences that the test
asserts on.
"""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, runpy
import jax, jax.numpy as jnp, numpy as np
from sashimi_jax import sharding, train
from sashimi_jax import state as state_lib
from sashimi_jax.data import pipeline

assert jax.device_count() == 8, jax.devices()
config = runpy.run_path("configs/stereo_temporal.py")["get_config"]("tiny")
config.dataset.sample_len = 32
config.model.update(dict(n_layers=1, d_model=8, pool=(2,), d_state=4, ff=1, dropout=0.0))
config.train.update(dict(batch_size=8, schedule="constant", warmup_steps=0, num_steps=10))
iterator = pipeline.create_train_iterator(config.dataset, global_batch_size=8, seed=0)
batches = [next(iterator) for _ in range(2)]

def run(mesh, shard_optimizer_state, poison=False):
  config.train.shard_optimizer_state = shard_optimizer_state
  graphdef, state, tx = state_lib.init_train_state(config, mesh)
  shardings = jax.tree_util.tree_map(lambda a: a.sharding, state)
  step = train.jit_train_step(config, graphdef, tx, mesh, shardings)
  losses = []
  opt_specs = sorted({str(s.spec) for s in jax.tree_util.tree_leaves(shardings["opt_state"])})
  for batch in batches:
    if poison:
      batch = dict(batch, y=np.full_like(batch["y"], 10**6))
    before = jax.device_get(state["params"])
    state, metrics = step(state, sharding.global_batch(mesh, batch))
    losses.append(float(metrics["bits_per_token"]))
  return (losses, jax.device_get(state["params"]), jax.device_get(state["opt_state"]),
          jax.device_get(metrics), before, opt_specs)

one = sharding.create_mesh(jax.devices()[:1])
eight = sharding.create_mesh()
l1, p1, o1, m1, _, _ = run(one, False)
l8, p8, o8, m8, _, _ = run(eight, False)
ls, ps, os_, ms, _, specs = run(eight, True)
lp, pp, _, mp, before_p, _ = run(eight, False, poison=True)

def maxdiff(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

p0 = jax.device_get(state_lib.init_train_state(config, one)[1]["params"])
print("RESULT " + json.dumps({
    "losses_1": l1, "losses_8": l8, "losses_sharded": ls,
    "params_moved": maxdiff(p1, p0),
    "params_8_vs_1": maxdiff(p8, p1), "params_sharded_vs_1": maxdiff(ps, p1),
    "opt_8_vs_1": maxdiff(o8, o1), "opt_sharded_vs_1": maxdiff(os_, o1),
    "grad_norm_1": float(m1["grad_norm"]), "grad_norm_8": float(m8["grad_norm"]),
    "sharded_specs": specs,
    "poison_losses": lp, "poison_finite": float(mp["finite"]),
    "poison_total": int(mp["nonfinite_total"]), "poison_consecutive": int(mp["nonfinite_consecutive"]),
    "poison_params_changed": maxdiff(pp, before_p), "poison_params_vs_init": maxdiff(pp, p0),
}))
"""


def test_eight_devices_equal_one_device(tmp_path):
  env = dict(os.environ)
  env.update({"PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
              "JAX_PLATFORMS": "cpu",
              # The poisoned run recompiles the same 8-device program: served from this cache.
              "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache"),
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
              "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  (line,) = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  r = json.loads(line[len("RESULT "):])
  tol = dict(rtol=1e-5, atol=1e-6)
  import numpy as np  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(r["losses_8"], r["losses_1"], **tol)
  np.testing.assert_allclose(r["losses_sharded"], r["losses_1"], **tol)
  np.testing.assert_allclose(r["grad_norm_8"], r["grad_norm_1"], **tol)
  assert r["params_moved"] > 1e-4  # the comparison is not vacuous: training changed params ...
  assert r["params_8_vs_1"] < 1e-5  # ... identically on 8 devices,
  assert r["params_sharded_vs_1"] < 1e-5  # also with the optimizer state split over devices,
  assert r["opt_8_vs_1"] < 1e-5 and r["opt_sharded_vs_1"] < 1e-5
  assert any("data" in s for s in r["sharded_specs"])  # which really was split.
  # Non-finite loss (impossible targets): the update is skipped, counted, params untouched.
  assert all(not np.isfinite(l) for l in r["poison_losses"])
  assert r["poison_finite"] == 0 and r["poison_total"] == 2 and r["poison_consecutive"] == 2
  assert r["poison_params_changed"] == 0 and r["poison_params_vs_init"] == 0
