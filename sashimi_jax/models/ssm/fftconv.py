"""Causal convolution of a sequence with a per-channel kernel through the FFT."""

import jax
import jax.numpy as jnp
import scipy.fft


def causal_fft_conv(u: jax.Array, k: jax.Array) -> jax.Array:
  """y[b, l, h] = sum_{j <= l} k[h, j] u[b, l - j, h].

  Zero-padded to a fast FFT size >= 2L - 1, so there is no circular wrap-around.

  Args:
    u: (B, L, H) float.
    k: (H, Lk) float32 with Lk >= L (only the first L taps are used).

  Returns:
    (B, L, H) float32.
  """
  length = u.shape[1]
  if k.shape[-1] < length:
    raise ValueError(f"kernel has {k.shape[-1]} taps, fewer than the sequence length {length}")
  n_fft = scipy.fft.next_fast_len(2 * length - 1, real=True)
  # FFTs along the last (contiguous) axis were measured faster than along axis 1.
  k_f = jnp.fft.rfft(k[:, :length].astype(jnp.float32), n=n_fft, axis=-1)  # (H, F)
  u_f = jnp.fft.rfft(jnp.swapaxes(u, 1, 2).astype(jnp.float32), n=n_fft, axis=-1)  # (B, H, F)
  y = jnp.fft.irfft(u_f * k_f[None], n=n_fft, axis=-1)[..., :length]
  return jnp.swapaxes(y, 1, 2)
