"""Parameter counts equal the reference standalone SaShiMi's (state-spaces/s4 models/sashimi).

Reference setting: d_model 64, pool [4, 4], expand 2, ff 2, d_state 64, DPLR S4 layers, with
Embedding(256, 64) and Linear(64, 256); complex parameters count as 2 reals. The figures are the
ones docs/REFERENCE.md reports for the PyTorch standalone (paper: 1.29M and 4.1M).
"""

import jax
import pytest
from flax import nnx

from sashimi_jax.models.sashimi import SaShiMiLM


def _count(*, layer, n_layers, final_act, n_ssm):
  def make():
    return SaShiMiLM(num_tokens=256, output_dim=256, d_model=64, n_layers=n_layers, pool=(4, 4),
                     expand=2, ff=2, layer=layer, d_state=64, n_ssm=n_ssm, final_act=final_act,
                     disc="bilinear" if layer == "s4" else "zoh", l_max=256, rngs=nnx.Rngs(0))

  # Shapes only: nothing is computed, so counting is cheap.
  _, params = nnx.split(nnx.eval_shape(make), nnx.Param)
  return sum(leaf.size for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("n_layers,final_act,n_ssm,expected", [
    (2, "id", 1, 1_289_600),
    (8, "id", 1, 4_072_448),
    (8, "glu", 1, 4_764_160),
    (8, "glu", None, 5_447_680),  # one SSM per channel in every S4 layer
])
def test_dplr_counts_equal_reference(n_layers, final_act, n_ssm, expected):
  assert _count(layer="s4", n_layers=n_layers, final_act=final_act, n_ssm=n_ssm) == expected


def test_s4d_drops_only_the_low_rank_term():
  # 3 levels x 2 S4 layers, each without P: n_ssm * d_state / 2 complex numbers = 64 reals.
  s4 = _count(layer="s4", n_layers=2, final_act="id", n_ssm=1)
  s4d = _count(layer="s4d", n_layers=2, final_act="id", n_ssm=1)
  assert s4 - s4d == 6 * 64
