"""Causal SSM convolution by chunks with the state passed between them: matmuls, no FFT.

The sequence is cut into M chunks of C tokens (the last one zero-padded). With x the real
N-dimensional state of y_k = c^T x_k, x_k = A x_{k-1} + b u_k (Mamba-2's SSD idea applied to S4):

  y[m, i] = sum_{j <= i} K_{i-j} u[m, j]               a C x C Toeplitz matmul per channel
          + r_i^T x_in[m],   r_i = (A^T)^(i+1) c       the state entering chunk m, read out
  x_in[m + 1] = A^C x_in[m] + sum_j A^(C-1-j) b u[m, j]  a short scan over chunks

Per token and channel that is about 2 C + 4 N + (N^2 or N) / C flops (dense or diagonal A^C),
against three length-2L transforms for the FFT path.

Memory: the backward pass keeps only the input u (B, L, H), the parameters and the states
entering each chunk (M, B, H, N: N / C floats per token and channel). The operators (taps, w_in,
r_out, A^C, the Toeplitz blocks: for DPLR four (H, N, N)-sized arrays per layer, which TPU pads
to 2x at N = C = 64) and the dense intermediates that build them are recomputed from the
parameters in the backward pass: kept for every scanned layer, they outweighed the FFT path's
residuals (README "Speed").
"""

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from sashimi_jax.models.ssm import channel_map
from sashimi_jax.models.ssm import complex_pairs
from sashimi_jax.models.ssm import discretize
from sashimi_jax.models.ssm import dplr
from sashimi_jax.models.ssm import s4d

_HIGHEST = jax.lax.Precision.HIGHEST
# The only intermediate of the convolution its backward pass keeps (jax.checkpoint policy name).
CHUNK_STATES = "chunk_states"
# Channels per loop trip when building DPLR operators (see _dplr_ops).
DPLR_BUILD_CHANNELS = 16


def _dense_transition(a_chunk, x):
  """A^C x for dense (H, N, N) A^C and x (..., H, N)."""
  return jnp.einsum("hnm,...hm->...hn", a_chunk, x, precision=_HIGHEST)


def _diagonal_transition(a_chunk, x):
  """A^C x for a complex-diagonal A^C = (Re, Im) (H, N / 2) acting on x = [Re s, Im s]."""
  return complex_pairs.diagonal_times_halves(*a_chunk, x)


def _per_channel_einsum(subscripts: str, operators, x, x_channel_axis: int, out_channel_axis: int):
  """einsum(subscripts, operators[h], x's channel h) for each channel h, over channel groups.

  A batched HIGHEST matmul over H channels compiles per channel on TPU (channel_map.py); mapped
  over groups of channels it compiles once. operators: (H, ...); subscripts name one channel's
  operands (no channel letter); the output's channel axis is put at out_channel_axis.
  """
  out = channel_map.map_channels(
      lambda op, v: jnp.einsum(subscripts, op, v, precision=_HIGHEST), operators,
      jnp.moveaxis(x, x_channel_axis, 0))
  return jnp.moveaxis(out, 0, out_channel_axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _pass_states(transition, a_chunk, z):
  """x[m] = transition(a_chunk, x[m - 1]) + z[m] with x[-1] = 0; z, x (M, B, H, N).

  A custom VJP so that the backward pass needs x once (scan's own would keep the carries too).
  """
  def body(x, z_m):
    x = transition(a_chunk, x) + z_m
    return x, x

  return jax.lax.scan(body, jnp.zeros_like(z[0]), z)[1]


def _pass_states_fwd(transition, a_chunk, z):
  x = checkpoint_name(_pass_states(transition, a_chunk, z), CHUNK_STATES)
  return x, (a_chunk, x)


def _pass_states_bwd(transition, residuals, g):
  a_chunk, x = residuals
  transpose = jax.linear_transpose(lambda v: transition(a_chunk, v), x[0])

  def body(lam_next, g_m):  # lam[m] = g[m] + (A^C)^T lam[m + 1]
    lam = g_m + transpose(lam_next)[0]
    return lam, lam

  _, lam = jax.lax.scan(body, jnp.zeros_like(g[0]), g, reverse=True)
  x_prev = jnp.concatenate([jnp.zeros_like(x[:1]), x[:-1]])
  _, a_vjp = jax.vjp(lambda a: transition(a, x_prev), a_chunk)
  return a_vjp(lam)[0], lam


_pass_states.defvjp(_pass_states_fwd, _pass_states_bwd)


def _convolve(u, ops):
  batch, length, channels = u.shape
  ops = ops()
  taps = ops["taps"]
  chunk = taps.shape[-1]
  num_chunks = -(-length // chunk)
  u = jnp.pad(u.astype(jnp.float32), ((0, 0), (0, num_chunks * chunk - length), (0, 0)))
  u = u.reshape(batch, num_chunks, chunk, channels)
  lag = jnp.arange(chunk)[:, None] - jnp.arange(chunk)[None, :]  # i - j
  toeplitz = jnp.where(lag >= 0, taps[:, jnp.clip(lag, 0, None)], 0.0)  # (H, C, C)
  y = _per_channel_einsum("ij,bmj->bmi", toeplitz, u, 3, 3)  # (B, M, C, H)
  if num_chunks > 1:
    z = _per_channel_einsum("nj,bmj->mbn", ops["w_in"], u[:, :-1], 3, 2)  # (M - 1, B, H, N)
    a_chunk = ops["a_chunk"]
    transition = (_diagonal_transition if isinstance(a_chunk, (tuple, list))
                  else _dense_transition)
    x_in = _pass_states(transition, a_chunk, z)  # (M - 1, B, H, N): entering chunks 1..M-1
    y_state = _per_channel_einsum("in,mbn->bmi", ops["r_out"], x_in, 2, 3)  # (B, M - 1, C, H)
    y = y.at[:, 1:].add(y_state)
  return y.reshape(batch, num_chunks * chunk, channels)[:, :length]


_convolve_rematerialised = jax.checkpoint(
    _convolve, policy=jax.checkpoint_policies.save_only_these_names(CHUNK_STATES))


def chunked_causal_conv(u: jax.Array, ops: jax.tree_util.Partial) -> jax.Array:
  """y[b, l, h] = sum_{j <= l} K[h, j] u[b, l - j, h] for the system described by `ops`.

  Args:
    u: (B, L, H) float, any L (the last chunk is zero-padded).
    ops: from s4d_chunk_ops / dplr_chunk_ops: the layer's parameters bound to a builder that
      returns the operators (called here, so that the backward pass can recompute them):
      "taps" (H, C) K_0..K_{C-1}; "w_in" (H, N, C) = A^(C-1-j) b; "r_out" (H, C, N) = r_i;
      "a_chunk": dense (H, N, N) A^C, or a (Re, Im) pair of (H, N / 2) for a complex-diagonal
      A^C acting on x = [Re s, Im s]. The chunk size C is taps.shape[-1].

  Returns:
    (B, L, H) float32.
  """
  return _convolve_rematerialised(u, ops)


def s4d_chunk_ops(log_dt, log_A_real, A_imag, B, C, *, chunk: int,
                  disc: str) -> jax.tree_util.Partial:
  """chunked_causal_conv operators of an S4D layer, bound to its parameters (called: a dict)."""
  return jax.tree_util.Partial(functools.partial(_s4d_ops, chunk=chunk, disc=disc),
                               log_dt, log_A_real, A_imag, B, C)


def _s4d_ops(log_dt, log_A_real, A_imag, B, C, *, chunk: int, disc: str) -> dict:
  """Operators of an S4D layer (state x = [Re s, Im s], N = 2 N2)."""
  dt, A, B, C = s4d.continuous_params(log_dt, log_A_real, A_imag, B, C)
  log_a, _, b_bar = discretize.discretize_diag(dt, A, B, disc)
  powers = jnp.exp(log_a[..., None] * jnp.arange(chunk + 1, dtype=jnp.float32))  # (H, N2, C+1)
  taps = 2.0 * jnp.real(jnp.einsum("hn,hnj->hj", C * b_bar, powers[..., :chunk],
                                   precision=_HIGHEST))
  w_in = b_bar[..., None] * jnp.flip(powers[..., :chunk], axis=-1)  # a^(C-1-j) b
  r = C[..., None] * powers[..., 1:]  # c a^(i+1); y = 2 Re(r s)
  r_out = jnp.concatenate([2.0 * jnp.real(r), -2.0 * jnp.imag(r)], axis=1)
  a_chunk = jnp.exp(chunk * log_a)
  return {"taps": taps.astype(jnp.float32),
          "w_in": jnp.concatenate([jnp.real(w_in), jnp.imag(w_in)], axis=1),
          "r_out": jnp.swapaxes(r_out, 1, 2),
          "a_chunk": (jnp.real(a_chunk), jnp.imag(a_chunk))}


def dplr_chunk_ops(log_dt, log_A_real, A_imag, B, P, C, *, chunk: int,
                   l_max: int) -> jax.tree_util.Partial:
  """chunked_causal_conv operators of a DPLR layer, bound to its parameters (called: a dict)."""
  return jax.tree_util.Partial(functools.partial(_dplr_ops, chunk=chunk, l_max=l_max),
                               log_dt, log_A_real, A_imag, B, P, C)


def _dplr_ops(log_dt, log_A_real, A_imag, B, P, C, *, chunk: int, l_max: int) -> dict:
  """Operators of a DPLR layer (real state, C from C~ of length l_max).

  Built in a loop over groups of DPLR_BUILD_CHANNELS channels, each rematerialised: the backward
  pass of the ~20 dense (N, N) intermediates per channel then needs one group's at a time, not
  all H channels' at once (an SC09 center stage on a v5e chip: ~180 MiB at H = 256).
  """
  channels = log_dt.shape[0]
  per_channel = (log_dt, s4d.tile_ssm(log_A_real, channels), s4d.tile_ssm(A_imag, channels),
                 s4d.tile_ssm(B, channels), s4d.tile_ssm(P[0], channels), C)

  @jax.checkpoint
  def build(arrays):
    log_dt, log_A_real, A_imag, B, P, C = arrays
    a_bar, b_bar, c = dplr.real_system(log_dt, log_A_real, A_imag, B, P[None], C, length=l_max)
    c_a = jnp.einsum("hn,hnm->hm", c, a_bar, precision=_HIGHEST)
    cols, rows, a_chunk = _krylov_pair(a_bar, b_bar, c_a, chunk)
    taps = jnp.concatenate([jnp.sum(c * b_bar, axis=-1, keepdims=True),
                            jnp.einsum("hin,hn->hi", rows[:, :chunk - 1], b_bar,
                                       precision=_HIGHEST)], axis=-1)
    return {"taps": taps, "w_in": jnp.flip(cols, axis=-1), "r_out": rows, "a_chunk": a_chunk}

  return channel_map.map_channel_blocks(build, per_channel, channels_per_trip=DPLR_BUILD_CHANNELS)


def _krylov_pair(a, b, r, size: int):
  """A^j b as (H, N, size), r^T A^i as (H, size, N) (i, j < size) and A^size, for (H, N, N) a.

  One chain of squarings A, A^2, A^4, ... serves the columns, the rows and A^size.
  """
  cols, rows, power = b[..., None], r[..., None, :], a
  while cols.shape[-1] < size:
    cols = jnp.concatenate([cols, jnp.matmul(power, cols, precision=_HIGHEST)], axis=-1)
    rows = jnp.concatenate([rows, jnp.matmul(rows, power, precision=_HIGHEST)], axis=-2)
    power = jnp.matmul(power, power, precision=_HIGHEST)
  if cols.shape[-1] != size:  # size not a power of two
    power = dplr.matrix_power(a, size)
  return cols[..., :size], rows[..., :size, :], power
