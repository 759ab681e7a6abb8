"""The SaShiMi model: `build_model(config, rngs)` and the modules it assembles."""

from flax import nnx


def build_model(config, rngs: nnx.Rngs):
  """Builds the `SaShiMiLM` a config describes.

  Reads `config.model.*` and `config.dataset.{bits, sample_len, is_stereo}`; derives
  `l_max = sample_len * (2 if is_stereo else 1)` tokens (a stereo clip is one 2L-token stream),
  `num_tokens = 2**bits` and `output_dim` from the output head.

  Args:
    config: an ml_collections.ConfigDict (or attribute-compatible object).
    rngs: initialisation randomness (`params` stream).

  Returns:
    A `SaShiMiLM` mapping tokens (B, l_max) to outputs (B, l_max, output_dim).
  """
  # Imported here so `import sashimi_jax.models` stays light (configs import this package).
  from sashimi_jax import heads
  from sashimi_jax.models.sashimi import SaShiMiLM

  m, d = config.model, config.dataset
  if d.sample_len < 1:
    raise ValueError(f"dataset.sample_len must be >= 1 frames, got {d.sample_len}")
  l_max = d.sample_len * (2 if d.is_stereo else 1)
  n_mixtures = m.get("n_mixtures", 0) if hasattr(m, "get") else getattr(m, "n_mixtures", 0)
  return SaShiMiLM(
      num_tokens=2**d.bits,
      output_dim=heads.output_dim(m.output_head, d.bits, n_mixtures),
      d_model=m.d_model,
      n_layers=m.n_layers,
      pool=tuple(m.pool),
      expand=m.expand,
      ff=m.ff,
      unet=m.unet,
      dropout=m.dropout,
      layer=m.layer,
      d_state=m.d_state,
      n_ssm=m.n_ssm,
      final_act=m.final_act,
      init=m.init,
      disc=m.disc,
      dt_min=m.dt_min,
      dt_max=m.dt_max,
      conv_impl=m.conv_impl,
      l_max=l_max,
      rngs=rngs,
  )
