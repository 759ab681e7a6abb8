"""Beethoven piano sonatas (16 kHz, mono): the paper's SaShiMi recipe with LINEAR 8-bit codes.

From state-spaces/s4 `configs/experiment/audio/sashimi-beethoven.yaml` and
`configs/dataset/beethoven.yaml`: 8 layers per stage, linear 8 bit, sample_len 128000, batch 1,
AdamW lr 4e-3, wd 0, plateau x0.2.

Run (from the repository root; point dataset.path at the Beethoven audio folder):
  python launch.py --config=configs/beethoven.py --workdir=runs/beethoven \
      --config.dataset.path=/data/beethoven
CPU-size variant on the bundled demo music:
  python launch.py --config=configs/beethoven.py:tiny --workdir=runs/beethoven_tiny
"""

import pathlib
import runpy

_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config(arg=None):
  """Returns the Beethoven config; `arg="tiny"` gives the CPU-size variant."""
  words = _default["parse_args"](arg, ("tiny",))
  config = _default["base_config"]()
  config.dataset.path = "data/beethoven"
  config.dataset.sample_rate = 16000
  config.dataset.sample_len = 128000
  config.dataset.is_stereo = False
  config.dataset.bits = 8
  config.dataset.quantization = "linear"
  config.model.n_layers = 8
  config.train.batch_size = 1
  config.train.learning_rate = 4e-3
  config.train.schedule = "plateau"
  config.train.num_steps = 1_000_000
  config.train.eval_every_steps = 5000
  config.train.checkpoint_every_steps = 5000
  if "tiny" in words:
    _default["apply_tiny"](config)
  return config
