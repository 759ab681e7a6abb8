"""Causal SSM convolution by chunks with the state passed between them: matmuls, no FFT.

The sequence is cut into M chunks of C tokens (the last one zero-padded). With x the real
N-dimensional state of y_k = c^T x_k, x_k = A x_{k-1} + b u_k (Mamba-2's SSD idea applied to S4):

  y[m, i] = sum_{j <= i} K_{i-j} u[m, j]               a C x C Toeplitz matmul per channel
          + r_i^T x_in[m],   r_i = (A^T)^(i+1) c       the state entering chunk m, read out
  x_in[m + 1] = A^C x_in[m] + sum_j A^(C-1-j) b u[m, j]  a short scan over chunks

Per token and channel that is about 2 C + 4 N + (N^2 or N) / C flops (dense or diagonal A^C),
against three length-2L transforms for the FFT path; memory is O(B L H (1 + N / C)).

The operators (taps, w_in, r_out, A^C) do not depend on the batch, but building them for DPLR
takes ~35 dense (H, N, N) intermediates (matrix powers to l_max and C, Krylov doublings, the
solve for c). Kept for the backward pass of every scanned layer, those dominated the train step's
memory (SC09 on TPU: 7.6 GiB/chip against 2.4 GiB with `fft`), so the builders are
rematerialised: only the parameters and the operators themselves are saved, and the
intermediates are recomputed once in the backward pass.
"""

import functools

import jax
import jax.numpy as jnp

from sashimi_jax.models.ssm import channel_map
from sashimi_jax.models.ssm import discretize
from sashimi_jax.models.ssm import dplr
from sashimi_jax.models.ssm import s4d

_HIGHEST = jax.lax.Precision.HIGHEST


def _rematerialised(build):
  """`build(*arrays, **static)` whose intermediates are recomputed in the backward pass."""

  @functools.wraps(build)
  def wrapped(*arrays, **static):
    return jax.checkpoint(functools.partial(build, **static),
                          policy=jax.checkpoint_policies.nothing_saveable)(*arrays)

  return wrapped


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


def chunked_causal_conv(u: jax.Array, ops: dict) -> jax.Array:
  """y[b, l, h] = sum_{j <= l} K[h, j] u[b, l - j, h] for the system described by `ops`.

  Args:
    u: (B, L, H) float, any L (the last chunk is zero-padded).
    ops: from s4d_chunk_ops / dplr_chunk_ops (chunk size C = taps.shape[-1]):
      "taps" (H, C) K_0..K_{C-1}; "w_in" (H, N, C) = A^(C-1-j) b; "r_out" (H, C, N) = r_i;
      "a_chunk": dense (H, N, N) A^C, or a (Re, Im) pair of (H, N / 2) for a complex-diagonal
      A^C acting on x = [Re s, Im s].

  Returns:
    (B, L, H) float32.
  """
  batch, length, channels = u.shape
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
    if isinstance(a_chunk, (tuple, list)):
      a_re, a_im = a_chunk
      n2 = a_re.shape[-1]

      def transition(x):
        x_re, x_im = x[..., :n2], x[..., n2:]
        return jnp.concatenate([a_re * x_re - a_im * x_im, a_re * x_im + a_im * x_re], axis=-1)
    else:
      def transition(x):
        return jnp.einsum("hnm,bhm->bhn", a_chunk, x, precision=_HIGHEST)

    def body(x_in, z_m):
      x_next = transition(x_in) + z_m
      return x_next, x_next

    _, x_in = jax.lax.scan(body, jnp.zeros_like(z[0]), z)  # (M - 1, B, H, N): chunks 1..M-1
    y_state = _per_channel_einsum("in,mbn->bmi", ops["r_out"], x_in, 2, 3)  # (B, M - 1, C, H)
    y = y.at[:, 1:].add(y_state)
  return y.reshape(batch, num_chunks * chunk, channels)[:, :length]


@_rematerialised
def s4d_chunk_ops(log_dt, log_A_real, A_imag, B, C, *, chunk: int, disc: str) -> dict:
  """chunked_causal_conv operators of an S4D layer (state x = [Re s, Im s], N = 2 N2)."""
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


@_rematerialised
def dplr_chunk_ops(log_dt, log_A_real, A_imag, B, P, C, *, chunk: int, l_max: int) -> dict:
  """chunked_causal_conv operators of a DPLR layer (real state, C from C~ of length l_max)."""
  a_bar, b_bar, c = dplr.real_system(log_dt, log_A_real, A_imag, B, P, C, length=l_max)
  w_in = jnp.flip(dplr.krylov(a_bar, b_bar, chunk), axis=-1)  # A^(C-1-j) b
  a_t = jnp.swapaxes(a_bar, -1, -2)
  first_row = jnp.einsum("hnm,hm->hn", a_t, c, precision=_HIGHEST)
  rows = dplr.krylov(a_t, first_row, chunk)  # (H, N, C): (A^T)^(i+1) c
  taps = jnp.concatenate([jnp.sum(c * b_bar, axis=-1, keepdims=True),
                          jnp.einsum("hni,hn->hi", rows[..., :chunk - 1], b_bar,
                                     precision=_HIGHEST)], axis=-1)
  return {"taps": taps, "w_in": w_in, "r_out": jnp.swapaxes(rows, 1, 2),
          "a_chunk": dplr.matrix_power(a_bar, chunk)}
