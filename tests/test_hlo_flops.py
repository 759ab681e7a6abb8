"""benchmarks/hlo_flops.py counts every trip of every loop, as XLA's own count of the unrolled program."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp

_SPEC = importlib.util.spec_from_file_location(
    "hlo_flops", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "hlo_flops.py")
hlo_flops = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(hlo_flops)


def _loss(w, x, unroll):
  def layer(carry, wi):
    return jnp.tanh(carry @ wi), None

  y, _ = jax.lax.scan(layer, x, w, unroll=unroll)

  def chunk(state, yi):
    state = 0.9 * state + yi
    return state, state

  _, z = jax.lax.scan(chunk, jnp.zeros((32, 64)), y.reshape(8, 32, 64), unroll=unroll)
  return jnp.sum(jnp.fft.irfft(jnp.fft.rfft(z.reshape(y.shape), n=512, axis=0), n=512, axis=0))


def _compiled(unroll):
  args = (jnp.zeros((6, 64, 64)), jnp.zeros((256, 64)))
  return jax.jit(jax.grad(lambda w, x: _loss(w, x, unroll))).lower(*args).compile()


def _xla_flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost["flops"]


def test_loop_trips_counted_like_the_unrolled_program():
  looped, unrolled = _compiled(1), _compiled(True)
  reference = _xla_flops(unrolled)
  counted = hlo_flops.count_flops(looped.as_text()).flops
  assert abs(counted - reference) < 0.05 * reference, (counted, reference)
  # XLA counts each loop body once: far below (what the counter corrects).
  assert _xla_flops(looped) < 0.5 * reference
  assert hlo_flops.count_flops(looped.as_text(), loop_trips=False).flops < 0.5 * reference


def test_unrolled_program_matches_xla():
  unrolled = _compiled(True)
  counted = hlo_flops.count_flops(unrolled.as_text())
  assert abs(counted.flops - _xla_flops(unrolled)) < 0.05 * _xla_flops(unrolled)
