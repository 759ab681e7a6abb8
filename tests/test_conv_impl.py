"""Tests of the convolution implementations (model.conv_impl): fft_freq and chunked equal fft."""

import functools
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sashimi_jax import config as config_lib
from sashimi_jax.models import kernels
from sashimi_jax.models import s4
from sashimi_jax.models.ssm import chunkconv
from sashimi_jax.models.ssm import fftconv
from sashimi_jax.models.ssm import freqconv

TOLERANCE = {"s4d": 1e-5, "s4": 1e-4}
CHUNK = 16


def _kernel(layer, l_max, disc=None):
  return kernels.ssm_kernel(8, layer=layer, d_state=16, n_ssm=2, disc=disc, l_max=l_max,
                            rngs=nnx.Rngs(0))


def _conv(kernel, u, impl):
  length = u.shape[1]
  if impl == "fft":
    return fftconv.causal_fft_conv(u, kernel(length))
  if impl == "fft_freq":
    return freqconv.causal_spectrum_conv(u, kernel.spectrum(length))
  return chunkconv.chunked_causal_conv(u, kernel.chunk_ops(min(CHUNK, length)))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _value_and_grads(graphdef, state, u, impl):
  def loss(state, u):
    y = _conv(nnx.merge(graphdef, state), u, impl)
    return jnp.sum(jnp.sin(y)), y
  (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(state, u)
  return y, grads


def _rel(a, b):
  a, b = np.asarray(a, np.complex128), np.asarray(b, np.complex128)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# (layer, disc, sequence length, l_max): lengths below, at and not a multiple of CHUNK; for DPLR
# also sequences shorter than the C~ length.
CASES = [("s4d", "zoh", 5, 5), ("s4d", "zoh", 100, 100), ("s4d", "bilinear", 37, 37),
         ("s4", None, 100, 100), ("s4", None, 37, 64)]


@pytest.mark.parametrize("impl", ["fft_freq", "chunked"])
@pytest.mark.parametrize("layer,disc,length,l_max", CASES)
def test_equals_fft_with_gradients(impl, layer, disc, length, l_max):
  graphdef, state = nnx.split(_kernel(layer, l_max, disc))
  u = jnp.asarray(np.random.default_rng(length).normal(size=(2, length, 8)), jnp.float32)
  y_want, (g_state_want, g_u_want) = _value_and_grads(graphdef, state, u, "fft")
  y, (g_state, g_u) = _value_and_grads(graphdef, state, u, impl)
  tol = TOLERANCE[layer]
  assert _rel(y, y_want) <= tol
  assert _rel(g_u, g_u_want) <= tol
  for (path, g), g_want in zip(jax.tree_util.tree_leaves_with_path(g_state),
                               jax.tree.leaves(g_state_want)):
    assert _rel(g, g_want) <= tol, (jax.tree_util.keystr(path), _rel(g, g_want))


def test_dplr_operators_built_in_channel_groups_equal_fft(monkeypatch):
  # 4 loop trips of 2 channels (n_ssm = 2 copies tiled over 8 channels), values and gradients.
  monkeypatch.setattr(chunkconv, "DPLR_BUILD_CHANNELS", 2)
  graphdef, state = nnx.split(_kernel("s4", 40))
  u = jnp.asarray(np.random.default_rng(3).normal(size=(1, 40, 8)), jnp.float32)
  y_want, (g_state_want, g_u_want) = _value_and_grads(graphdef, state, u, "fft")
  y, (g_state, g_u) = _value_and_grads.__wrapped__(graphdef, state, u, "chunked")
  assert _rel(y, y_want) <= TOLERANCE["s4"] and _rel(g_u, g_u_want) <= TOLERANCE["s4"]
  for g, g_want in zip(jax.tree.leaves(g_state), jax.tree.leaves(g_state_want)):
    assert _rel(g, g_want) <= TOLERANCE["s4"]


@pytest.mark.parametrize("layer", ["s4d", "s4"])
def test_chunked_backward_keeps_only_inputs_and_chunk_states(layer, capsys):
  # The operators (for DPLR (H, N, N)-sized per layer) are recomputed, not kept for the backward.
  graphdef, state = nnx.split(_kernel(layer, 100))
  u = jnp.ones((2, 100, 8), jnp.float32)

  def loss(state, u):
    y = chunkconv.chunked_causal_conv(u, nnx.merge(graphdef, state).chunk_ops(CHUNK))
    return jnp.sum(y)

  jax.ad_checkpoint.print_saved_residuals(loss, state, u)
  kept = [line for line in capsys.readouterr().out.splitlines()
          if line and "from the argument" not in line]
  assert len(kept) == 1 and f"named '{chunkconv.CHUNK_STATES}'" in kept[0], kept
  assert kept[0].startswith("f32[6,2,8,16]")  # (M - 1, B, H, N): 7 chunks of 16 for L = 100


def test_spectrum_is_rfft_of_kernel_at_2l():
  # Not only equal convolutions: the bins are the kernel's own rfft, incl. the odd ones.
  graphdef, state = nnx.split(_kernel("s4", 64))
  k, k_f = jax.jit(lambda s: (lambda m: (m(40), m.spectrum(40)))(nnx.merge(graphdef, s)))(state)
  want = np.fft.rfft(np.asarray(k, np.float64), n=80)
  assert _rel(k_f, want) <= 1e-4


def test_auto_is_the_platform_choice():
  block = s4.S4Block(8, l_max=48, layer="s4d", d_state=16, rngs=nnx.Rngs(0))
  u = jnp.asarray(np.random.default_rng(0).normal(size=(1, 48, 8)), jnp.float32)
  platform = jax.default_backend()
  auto = jax.jit(lambda u: block._convolve(u))(u)  # pylint: disable=protected-access
  chosen = jax.jit(lambda u: block._convolve(  # pylint: disable=protected-access
      u, s4.AUTO_CONV_IMPL[platform], platform))(u)
  np.testing.assert_array_equal(auto, chosen)
  assert s4.resolve_conv_impl("auto", "tpu") == "chunked"  # README "Speed"
  assert s4.resolve_conv_impl("auto", "cpu") == "fft"
  assert s4.resolve_conv_impl("fft_freq", "tpu") == "fft_freq"


def test_bad_conv_impl_is_rejected():
  with pytest.raises(ValueError, match="conv_impl"):
    s4.S4Block(8, l_max=16, layer="s4d", conv_impl="fast", rngs=nnx.Rngs(0))
  cfg = runpy.run_path("configs/sc09.py")["get_config"]("tiny")
  cfg.model.conv_impl = "fast"
  assert any("model.conv_impl" in p for p in config_lib.find_problems(cfg))
  assert config_lib.CONV_IMPLS == s4.CONV_IMPLS
