"""Tests of S4Block (sashimi_jax/models/s4.py): conv == recurrence, prefill, causality, params."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sashimi_jax.models import s4
from sashimi_jax.models.ssm import init as ssm_init


def _block(layer="s4d", d_model=16, l_max=256, d_state=16, **kwargs):
  return s4.S4Block(d_model, l_max=l_max, layer=layer, d_state=d_state, rngs=nnx.Rngs(0),
                    **kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, params, x):
  return nnx.merge(graphdef, params)(x)


def _call(block, x):
  return _apply(*nnx.split(block), x)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _conv_scan_prefill(graphdef, params, x, prompt_len):
  """Conv output, stepped output and state, prefill state; and prefill(x[:, :P]) + steps."""
  block = nnx.merge(graphdef, params)
  y_conv = block(x)
  rec = block.setup_recurrence()

  def body(state, x_t):
    y_t, state = block.step(rec, state, x_t)
    return state, y_t

  steps = lambda state, xs: jax.lax.scan(body, state, jnp.swapaxes(xs, 0, 1))
  state, y_step = steps(block.init_state(x.shape[0]), x)
  _, y_cont = steps(block.prefill_state(rec, x[:, :prompt_len]), x[:, prompt_len:])
  return (y_conv, jnp.swapaxes(y_step, 0, 1), state, block.prefill_state(rec, x),
          jnp.swapaxes(y_cont, 0, 1))


def _rel(a, b):
  """Relative norm of a - b; states (tuples of arrays) are joined first."""
  a, b = (jnp.concatenate(x, -1) if isinstance(x, tuple) else x for x in (a, b))
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _input(shape, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# Every init and disc with the platform's default convolution (auto); the other conv_impls on
# one S4D and the S4 case.
CASES = ([("s4d", init, disc, 1e-5, "auto") for init in ssm_init.DIAG_INITS
          for disc in ("zoh", "bilinear")]
         + [("s4d", "diag-lin", "zoh", 1e-5, impl) for impl in ("fft_freq", "chunked")]
         + [("s4", "legs", "bilinear", 1e-3, impl) for impl in ("auto", "fft_freq", "chunked")])


@pytest.mark.parametrize("layer,init,disc,tol,conv_impl", CASES)
def test_conv_equals_recurrence_and_prefill(layer, init, disc, tol, conv_impl):
  # d_state 64 and n_ssm 2 for S4 (the paper's LegS size); the full l_max-long sequence.
  d_state, n_ssm = (64, 2) if layer == "s4" else (16, 1)
  block = _block(layer, l_max=512, d_state=d_state, n_ssm=n_ssm, init=init, disc=disc,
                 conv_impl=conv_impl)
  x = _input((2, 512, 16))
  y_conv, y_step, state, prefill, y_cont = _conv_scan_prefill(*nnx.split(block), x, 300)
  chex.assert_shape((y_conv, y_step, y_cont), [x.shape, x.shape, (2, 212, 16)])
  chex.assert_tree_all_finite((y_conv, y_step, state, prefill))
  assert _rel(y_step, y_conv) <= tol, (layer, init, disc, _rel(y_step, y_conv))
  # States are compared entry by entry (no averaging over channels as in outputs): A_bar^l
  # by l multiplications vs exp(l log A_bar) differ by ~l eps, so allow 5x.
  assert _rel(prefill, state) <= 5 * tol, (layer, init, disc, _rel(prefill, state))
  # Prefill the first 300 inputs, then step: equals conv over prompt + continuation.
  assert _rel(y_cont, y_conv[:, 300:]) <= tol, (layer, init, disc, _rel(y_cont, y_conv[:, 300:]))


@pytest.mark.parametrize("layer", ["s4d", "s4"])
def test_causal_and_shorter_sequences(layer):
  block = _block(layer, l_max=64, n_ssm=4)
  x = _input((1, 64, 16))
  x2 = x.at[:, 40:].set(_input((1, 24, 16), seed=5))
  y, y2 = _call(block, x), _call(block, x2)
  np.testing.assert_allclose(y[:, :40], y2[:, :40], atol=1e-5)
  assert float(jnp.abs(y[:, 40:] - y2[:, 40:]).max()) > 1e-3
  # A prefix of length 40 < l_max gives the same outputs as the full sequence.
  np.testing.assert_allclose(_call(block, x[:, :40]), y[:, :40], atol=1e-5)


def test_s4_rejects_sequences_longer_than_l_max():
  block = _block("s4", l_max=32)
  with pytest.raises(ValueError, match="l_max=32"):
    jax.eval_shape(lambda x: block(x), jnp.zeros((1, 33, 16)))


def _num_params(module):
  return sum(p.size for p in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize("layer,final_act", [("s4d", "id"), ("s4d", "glu"), ("s4", "id"),
                                             ("s4", "glu")])
def test_param_count_matches_reference(layer, final_act):
  # Reference S4Block (H, N=64, n_ssm S, complex as 2 reals): D H; inv_dt H; C H*N;
  # B, A_real, A_imag S*N; P S*N (DPLR only); Linear H -> H (id) or H -> 2H (glu) with bias.
  H, S = 64, 1
  want = H + H + 64 * H + 2 * 32 * S + 32 * S + 32 * S + (64 * S if layer == "s4" else 0)
  want += (2 * H * H + 2 * H) if final_act == "glu" else (H * H + H)
  block = nnx.eval_shape(lambda: s4.S4Block(H, l_max=128, layer=layer, final_act=final_act,
                                            rngs=nnx.Rngs(0)))
  assert _num_params(block) == want
  # One S4D layer of the 1,289,600-parameter reference model (H=64, id): 8,512; S4: 8,576.
  if final_act == "id":
    assert want == {"s4d": 8512, "s4": 8576}[layer]


@pytest.mark.parametrize("layer", ["s4d", "s4"])
def test_only_params_and_kernel_group(layer):
  block = nnx.eval_shape(lambda: s4.S4Block(16, l_max=32, layer=layer, d_state=16, n_ssm=4,
                                            rngs=nnx.Rngs(0)))
  _, params = nnx.split(block)
  names = {"log_dt", "log_A_real", "A_imag", "B", "C"} | ({"P"} if layer == "s4" else set())
  assert set(params["kernel"].keys()) == names
  assert params["kernel"]["B"].shape == (4, 8, 2)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  _, _, rest = nnx.split(block, nnx.Param, ...)
  assert not jax.tree.leaves(rest)


def test_init_values():
  block = _block("s4d", l_max=16, d_state=64)
  dt = np.exp(np.asarray(block.kernel.log_dt[...]))
  assert 1e-3 * 0.999 <= dt.min() and dt.max() <= 1e-1 * 1.001 and dt.std() > 0
  np.testing.assert_allclose(np.exp(block.kernel.log_A_real[...]), 0.5, rtol=1e-6)
  c = np.asarray(block.kernel.C[...])
  assert 0.4 < c.var() < 0.6  # Complex standard normal: variance 1/2 per real component.


def test_dropout_needs_rngs_and_is_identity_when_deterministic():
  block = _block("s4d", l_max=64, dropout=0.5)
  x = _input((2, 64, 16))

  @nnx.jit
  def train_mode(block, x, rngs):
    return block(x, deterministic=False, rngs=rngs)

  y = _call(block, x)
  with pytest.raises(ValueError, match="rngs"):
    jax.eval_shape(lambda x: block(x, deterministic=False), x)
  y_train = train_mode(block, x, nnx.Rngs(dropout=3))
  assert float(jnp.abs(y_train - y).max()) > 1e-3


def test_bad_arguments():
  with pytest.raises(ValueError, match="layer"):
    s4.S4Block(16, l_max=8, layer="s5", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="final_act"):
    s4.S4Block(16, l_max=8, layer="s4d", final_act="relu", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="n_ssm"):
    s4.S4Block(16, l_max=8, layer="s4d", n_ssm=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="disc"):
    s4.S4Block(16, l_max=8, layer="s4", disc="zoh", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="init"):
    s4.S4Block(16, l_max=8, layer="s4d", init="legs", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="shape"):
    jax.eval_shape(lambda x: _block("s4d", l_max=8)(x), jnp.zeros((2, 8, 5)))


@pytest.mark.parametrize("layer", ["s4d", "s4"])
def test_gradients_are_finite_and_reach_every_param(layer):
  block = _block(layer, l_max=64, n_ssm=2)
  graphdef, params = nnx.split(block)
  x = _input((2, 64, 16))
  loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(x) ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  chex.assert_tree_all_finite(grads)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
