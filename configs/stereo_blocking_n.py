"""Stereo SaShiMi, blocking-N interleaving: N left frames, then the same N right frames, repeated.

N must not exceed `dataset.sample_len` (validated; a short last block is fine). The argument is `tiny` and/or N
(default 256 frames), comma-separated.

Run (from the repository root):
  python launch.py --config=configs/stereo_blocking_n.py --workdir=runs/blocking256
  python launch.py --config=configs/stereo_blocking_n.py:64 --workdir=runs/blocking64
CPU-size variant:
  python launch.py --config=configs/stereo_blocking_n.py:tiny,64 --workdir=runs/blocking64_tiny
Override any field, e.g. the strategy directly:
  python launch.py --config=configs/stereo_blocking_n.py:tiny --workdir=runs/b \
      --config.dataset.interleaving_strategy=blocking-16
"""

import pathlib
import runpy

_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))

DEFAULT_BLOCK_FRAMES = 256


def get_config(arg=None):
  """Returns the stereo blocking-N config; `arg` is "tiny", "N" or "tiny,N"."""
  words = _default["parse_args"](arg, ("tiny", "N"))
  numbers = [int(w) for w in words if w.isdigit()]
  if len(numbers) > 1:
    raise ValueError(f"Give one block size N, got {sorted(numbers)}.")
  block_frames = numbers[0] if numbers else DEFAULT_BLOCK_FRAMES
  config = _default["base_config"]()
  config.dataset.is_stereo = True
  config.dataset.interleaving_strategy = f"blocking-{block_frames}"
  config.train.batch_size = 8
  config.train.learning_rate = 4e-3
  if "tiny" in words:
    _default["apply_tiny"](config)
  return config
