"""Mono SaShiMi (8 layers per stage, S4 DPLR) on mono audio; the demo music is averaged to mono.

Run (from the repository root):
  python launch.py --config=configs/mono.py --workdir=runs/mono
CPU-size variant that trains in seconds:
  python launch.py --config=configs/mono.py:tiny --workdir=runs/mono_tiny
Override any field, e.g. your own folder of audio files:
  python launch.py --config=configs/mono.py --workdir=runs/mono \
      --config.dataset.path=/data/my_audio --config.train.batch_size=8
"""

import pathlib
import runpy

_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config(arg=None):
  """Returns the mono config; `arg="tiny"` gives the CPU-size variant."""
  words = _default["parse_args"](arg, ("tiny",))
  config = _default["base_config"]()
  config.dataset.is_stereo = False
  config.train.batch_size = 8
  config.train.learning_rate = 4e-3
  if "tiny" in words:
    _default["apply_tiny"](config)
    config.dataset.sample_len = 2048  # as many tokens as the stereo tiny stream.
  return config
