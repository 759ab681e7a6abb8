"""SC09 (spoken digits, 1 s at 16 kHz, mono): the paper's 4.1M-parameter SaShiMi recipe.

From state-spaces/s4 `configs/experiment/audio/sashimi-sc09.yaml`: S4 (DPLR, LegS) with n_ssm 1,
8 layers per stage, pool [4, 4], mu-law 8 bit, sample_len 16000, batch 32, AdamW lr 1e-3 (the
paper era used 4e-3), wd 0, lr x0.2 when validation stalls for 20 evaluations (the reference
counts epochs; one evaluation here is ~1000 steps, about one SC09 epoch at batch 32).

Run (from the repository root; point dataset.path at the SC09 audio folder):
  python launch.py --config=configs/sc09.py --workdir=runs/sc09 --config.dataset.path=/data/sc09
Through TFDS instead (`dataset.tfds_name`, see data/tfds_source.py): TFDS `speech_commands` is
not SC09 as published. Its builder (tensorflow_datasets/datasets/speech_commands) keeps 12 labels,
10 command words + `_silence_` + `_unknown_`, and files every digit word ("zero".."nine") under
`_unknown_` with 15 other words, so the digits cannot be selected from it; and its audio is a
`tfds.features.Audio`, which needs TensorFlow to prepare and to read. The route that works without
TensorFlow: prepare the ten digit folders of Speech Commands v0.02 as your own TFDS dataset whose
PCM is a `tfds.features.Tensor(shape=(None,), dtype=np.int16)` (tests/test_tfds.py builds one
this way), with `file_format="array_record"`, then
  python launch.py --config=configs/sc09.py --workdir=runs/sc09 --config.dataset.path= \
      --config.dataset.tfds_name=sc09_digits --config.dataset.tfds_data_dir=/data/tfds \
      --config.dataset.tfds_split=train+validation+test
(the pipeline then splits by dataset.valid_fraction/test_fraction, like a folder).
CPU-size variant on the bundled demo music (checks the plumbing, not SC09):
  python launch.py --config=configs/sc09.py:tiny --workdir=runs/sc09_tiny
"""

import pathlib
import runpy

_default = runpy.run_path(str(pathlib.Path(__file__).with_name("default.py")))


def get_config(arg=None):
  """Returns the SC09 config; `arg="tiny"` gives the CPU-size variant."""
  words = _default["parse_args"](arg, ("tiny",))
  config = _default["base_config"]()
  config.dataset.path = "data/sc09"
  config.dataset.sample_rate = 16000
  config.dataset.sample_len = 16000
  config.dataset.is_stereo = False
  config.dataset.bits = 8
  config.dataset.quantization = "mu-law"
  config.model.layer = "s4"
  config.model.init = "legs"
  config.model.n_layers = 8
  config.model.n_ssm = 1
  config.train.batch_size = 32
  config.train.learning_rate = 1e-3
  config.train.schedule = "plateau"
  config.train.num_steps = 200_000
  config.train.eval_every_steps = 1000
  if "tiny" in words:
    _default["apply_tiny"](config)
    config.dataset.sample_len = 2000
  return config
