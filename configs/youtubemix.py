"""YouTubeMix (piano music, 16 kHz): the paper's SaShiMi recipe; mono by default, `stereo` option.

From state-spaces/s4 `configs/experiment/audio/sashimi-youtubemix.yaml` and
`configs/dataset/youtubemix.yaml`: 8 layers per stage, mu-law 8 bit, sample_len 131072 frames,
batch 1, AdamW lr 4e-3, wd 0, plateau x0.2. `stereo` keeps both channels (temporal interleaving,
a 262144-token stream).

Run (from the repository root; point dataset.path at the YouTubeMix audio folder):
  python launch.py --config=configs/youtubemix.py --workdir=runs/ytm \
      --config.dataset.path=/data/youtube_mix
  python launch.py --config=configs/youtubemix.py:stereo --workdir=runs/ytm_stereo \
      --config.dataset.path=/data/youtube_mix_stereo
CPU-size variant on the bundled demo music:
  python launch.py --config=configs/youtubemix.py:tiny,stereo --workdir=runs/ytm_tiny
"""

import pathlib
import runpy

_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config(arg=None):
  """Returns the YouTubeMix config; `arg` words: "tiny", "stereo" (comma-separated)."""
  words = _default["parse_args"](arg, ("tiny", "stereo"))
  config = _default["base_config"]()
  config.dataset.path = "data/youtube_mix"
  config.dataset.sample_rate = 16000
  config.dataset.sample_len = 131072
  config.dataset.is_stereo = "stereo" in words
  config.dataset.interleaving_strategy = "temporal"
  config.dataset.bits = 8
  config.dataset.quantization = "mu-law"
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
