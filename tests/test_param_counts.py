"""Parameter counts equal the reference standalone SaShiMi's (state-spaces/s4 models/sashimi).

Reference setting: d_model 64, pool [4, 4], expand 2, ff 2, d_state 64, DPLR S4 layers, with
Embedding(256, 64) and Linear(64, 256); complex parameters count as 2 reals. The figures are
those of the PyTorch standalone (state-spaces/s4 `models/sashimi/sashimi.py` with `models/s4/s4.py`;
paper: 1.29M and 4.1M). Arithmetic for n_layers 2, `id` output (1,289,600): embedding 256*64 +
head 64*256+256 + final LayerNorm 128; per S4 block at width H (N/2 = 32 complex modes, one SSM):
log_dt H, A 2*32 (Re, Im), B 2*32, P 2*32, C 2*H*32, D H, output Linear H*H+H, LayerNorm 2H; per FF
block: 2*(2H*H) + 2H + H + 2H (LayerNorm); two of each at H = 64, 128, 256, plus the pooling
linears (4*64*128+128, 4*128*256+256 down; 256*512+512, 128*256+256 up).
"""

import jax
import pytest
from flax import nnx

from sashimi_jax.models.sashimi import SaShiMiLM


def _count(*, layer, n_layers, final_act, n_ssm):
  def make():
    return SaShiMiLM(vocab_size=256, output_dim=256, d_model=64, n_layers=n_layers, pool=(4, 4),
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
