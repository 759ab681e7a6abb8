"""Stereo SaShiMi, blocking interleaving: the whole left channel, then the whole right channel.

Run (from the repository root):
  python launch.py --config=configs/stereo_blocking.py --workdir=runs/stereo_blocking
CPU-size variant:
  python launch.py --config=configs/stereo_blocking.py:tiny --workdir=runs/blocking_tiny
Override any field, e.g.:
  python launch.py --config=configs/stereo_blocking.py:tiny --workdir=runs/blocking_tiny \
      --config.dataset.sample_len=2048
"""

import pathlib
import runpy

_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config(arg=None):
  """Returns the stereo blocking config; `arg="tiny"` gives the CPU-size variant."""
  words = _default["parse_args"](arg, ("tiny",))
  config = _default["base_config"]()
  config.dataset.is_stereo = True
  config.dataset.interleaving_strategy = "blocking"
  config.train.batch_size = 8
  config.train.learning_rate = 4e-3
  if "tiny" in words:
    _default["apply_tiny"](config)
  return config
