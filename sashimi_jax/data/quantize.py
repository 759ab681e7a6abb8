"""Audio quantization: mu-law and linear codecs, and the optional per-clip min-max scaling.

Definitions follow the reference (state-spaces/s4 `src/dataloaders/audio.py`), with Q = 2**bits:

  * quantize a value u in [0, 1] to a code: `floor(u * (Q - 0.01) + 0.005)`, in [0, Q - 1];
  * dequantize a code q: `q / (Q / 2) - 1`, in [-1, 1 - 2/Q];
  * mu-law (mu = Q - 1): compand `sign(x) log1p(mu |x|) / log1p(mu)`, shift to [0, 1], quantize;
    decode: dequantize, then expand `sign(y) ((1 + mu)**|y| - 1) / mu`;
  * linear: quantize `(x + 1) / 2`; decode: dequantize.

So `decode(encode(x))` is within one quantization step of x for x in [-1, 1] (linear: 2/Q;
mu-law: 2/Q in the companded domain; plus 0.01/(Q - 0.01) from the epsilon, which widens the bins
slightly), and `encode(decode(q))` is q or q - 1 (the reference's
epsilon puts decoded values on the lower bin edge). The reference folds a per-clip min-max scaling
into both encoders; here it is the separate step `normalize`, applied jointly over all channels so
inter-channel level differences survive. Inputs outside [-1, 1] are clipped before encoding; NaN
encodes as silence and +-inf as full scale, so no float input yields a code outside [0, 2**bits)
(the reader skips non-finite audio before it gets here; see audio.py).

Every function works on numpy arrays (computed in float64, returned as numpy) and on jax arrays
(float32, jit-safe).
"""

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("mu-law", "linear")
MIN_BITS = 8
MAX_BITS = 16
_EPSILON = 0.01  # the reference's quantize() epsilon


def _check(bits: int, method: str | None = None) -> int:
  if isinstance(bits, bool) or int(bits) != bits or not MIN_BITS <= bits <= MAX_BITS:
    raise ValueError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}.")
  if method is not None and method not in METHODS:
    raise ValueError(f"Unknown quantization method {method!r}; valid: {', '.join(METHODS)}.")
  return int(bits)


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


def zero_token(bits: int) -> int:
  """The code of silence, 2**(bits - 1) (used as the first input token)."""
  return 1 << (_check(bits) - 1)


def vocab_size(bits: int) -> int:
  """Vocabulary size, 2**bits."""
  return 1 << _check(bits)


def normalize(x):
  """Per-clip min-max scaling to [-1, 1], joint over all channels.

  Args:
    x: numpy or jax array (L,) or (L, C): one clip. The min and max are taken over every sample
      of every channel, so a quiet channel stays quieter than a loud one.

  Returns:
    float32 array of the same shape in [-1, 1]. A constant clip maps to zeros (silence), rather
    than to -1 as the reference's `x - min / (max - min + 1e-6)` would. Non-finite samples count
    as 0.
  """
  xp = _xp(x)
  dtype = np.float64 if xp is np else jnp.float32
  x = xp.asarray(x, dtype=dtype)
  x = xp.where(xp.isfinite(x), x, 0.0)  # NaN/inf carry no level; never let them set the range.
  lo = xp.min(x)
  hi = xp.max(x)
  span = hi - lo
  safe_span = xp.where(span > 0, span, 1.0)
  scaled = xp.where(span > 0, 2.0 * (x - lo) / safe_span - 1.0, 0.0)
  return xp.clip(scaled, -1.0, 1.0).astype(np.float32)


def _compand(x, mu, xp):
  return xp.sign(x) * xp.log1p(mu * xp.abs(x)) / np.log1p(mu)


def _expand(y, mu, xp):
  return xp.sign(y) * xp.expm1(xp.abs(y) * np.log1p(mu)) / mu


def encode(x, bits: int, method: str):
  """Quantizes audio to integer codes.

  Args:
    x: numpy or jax float array (...) with values in [-1, 1] (values outside are clipped; NaN
      -> 0, +-inf -> +-1).
    bits: bits per sample, 8..16.
    method: `mu-law` or `linear`.

  Returns:
    int32 array (...) of codes in [0, 2**bits).
  """
  bits = _check(bits, method)
  xp = _xp(x)
  dtype = np.float64 if xp is np else jnp.float32
  levels = float(1 << bits)
  # NaN -> silence and +-inf -> full scale, so every float input gives a code in range.
  x = xp.nan_to_num(xp.asarray(x, dtype=dtype), nan=0.0, posinf=1.0, neginf=-1.0)
  x = xp.clip(x, -1.0, 1.0)
  if method == "mu-law":
    x = _compand(x, levels - 1.0, xp)
  unit = (x + 1.0) / 2.0
  codes = xp.floor(unit * (levels - _EPSILON) + _EPSILON / 2)
  return xp.clip(codes, 0, levels - 1).astype(np.int32)


def decode(q, bits: int, method: str):
  """Maps integer codes back to audio.

  Args:
    q: numpy or jax integer array (...) of codes in [0, 2**bits).
    bits: bits per sample, 8..16.
    method: `mu-law` or `linear`.

  Returns:
    float32 array (...) with values in [-1, 1].
  """
  bits = _check(bits, method)
  xp = _xp(q)
  dtype = np.float64 if xp is np else jnp.float32
  levels = float(1 << bits)
  y = xp.asarray(q, dtype=dtype) / (levels / 2.0) - 1.0
  if method == "mu-law":
    y = _expand(y, levels - 1.0, xp)
  return y.astype(np.float32)
