"""The SaShiMi model: `build_model(model_cfg, *, l_max, vocab_size, output_dim, rngs)`.

The model package is given numbers (sequence length, vocabulary, output width) and the `model`
section of a config, never dataset or training settings: `sashimi_jax.state.build_model` derives
the numbers from a whole config.
"""

from flax import nnx


def build_model(model_cfg, *, l_max: int, vocab_size: int, output_dim: int, rngs: nnx.Rngs):
  """Builds the `SaShiMiLM` a `config.model` section describes.

  Args:
    model_cfg: `config.model` (an ml_collections.ConfigDict or attribute-compatible object).
    l_max: the longest token sequence (kernel length of the finest level), in tokens.
    vocab_size: number of input token values (2**bits).
    output_dim: width of the output head's parameters per token.
    rngs: initialisation randomness (`params` stream).

  Returns:
    A `SaShiMiLM` mapping tokens (B, l_max) to outputs (B, l_max, output_dim).
  """
  from sashimi_jax.models.sashimi import SaShiMiLM  # pylint: disable=g-import-not-at-top

  if l_max < 1:
    raise ValueError(f"l_max must be >= 1 tokens, got {l_max}")
  m = model_cfg
  return SaShiMiLM(
      vocab_size=vocab_size,
      output_dim=output_dim,
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
      # Absent from configs saved before these options existed: the model's defaults.
      remat=getattr(m, "remat", "none"),
      compute_dtype=getattr(m, "compute_dtype", "float32"),
      input_conv_width=int(getattr(m, "input_conv_width", 0) or 0),
      input_conv_kind=str(getattr(m, "input_conv_kind", "dense")),
      fine_conv_width=int(getattr(m, "fine_conv_width", 0) or 0),
      fine_conv_kind=str(getattr(m, "fine_conv_kind", "dense")),
      l_max=l_max,
      rngs=rngs,
  )
