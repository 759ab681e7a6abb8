"""Shared base config for every preset in this directory (not meant to be run by itself).

The presets (`mono.py`, `stereo_temporal.py`, `sc09.py`, ...) start from `base_config()` and change
only what differs; `apply_tiny(config)` turns any of them into a CPU-size variant that trains in
seconds on the bundled demo music. Every field is documented in README.md; `l_max` is derived from
`dataset.sample_len` (times 2 for stereo) and never set here. Fields can be overridden on the
command line, e.g.

  python launch.py --config=configs/stereo_temporal.py:tiny --workdir=runs/demo \
      --config.train.num_steps=200 --config.model.d_model=32
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """The reference SaShiMi (8 layers per stage, pool [4, 4], expand 2, ff 2, GLU) on mono audio.

  Hyper-parameters follow state-spaces/s4 `configs/experiment/audio/sashimi-sc09.yaml` and
  `configs/model/{sashimi,layer/s4}.yaml`: AdamW, lr 1e-3, wd 0, SSM lr 1e-3, dt in [1e-3, 1e-1].
  """
  config = ml_collections.ConfigDict()
  config.seed = 0  # everything random: init, data order, dropout.

  config.dataset = ml_collections.ConfigDict()
  config.dataset.path = ""  # "" = the bundled demo music (sashimi_jax/demo_data).
  config.dataset.sample_rate = 16000  # Hz; files at other rates are resampled or rejected.
  config.dataset.sample_len = 16384  # frames per training clip (tokens = 2x for stereo).
  config.dataset.is_stereo = False  # True: a (L, 2) clip becomes one 2L-token stream.
  config.dataset.interleaving_strategy = "temporal"  # temporal | blocking | blocking-N.
  config.dataset.bits = 8  # 8..16; vocabulary = 2**bits.
  config.dataset.quantization = "mu-law"  # mu-law | linear.
  config.dataset.normalize = True  # joint min-max of each clip to [-1, 1] (the reference's).
  config.dataset.resample = True  # False: files at another rate are an error.
  config.dataset.mono_to_stereo = "error"  # what a stereo config does with a mono file.
  config.dataset.valid_fraction = 0.06  # the reference's 88/6/6 split by file order.
  config.dataset.test_fraction = 0.06  # 0 = no test split; too few files: split by time.
  config.dataset.num_workers = 0  # grain worker processes (0 = in the training process).
  config.dataset.verify_audio = "tail"  # tail | full (decode every file once before training).
  # A prepared TFDS dataset (ArrayRecord) instead of dataset.path; see data/tfds_source.py.
  config.dataset.tfds_name = ""  # e.g. "speech_commands"; "" = read dataset.path.
  config.dataset.tfds_split = "train"  # the TFDS split(s) read, e.g. "train+validation".
  config.dataset.tfds_data_dir = ""  # "" = TFDS's default (~/tensorflow_datasets).
  config.dataset.tfds_audio_key = "audio"  # the feature holding (frames,) or (frames, C) PCM.

  config.model = ml_collections.ConfigDict()
  config.model.layer = "s4"  # s4 (DPLR) | s4d (diagonal).
  config.model.d_model = 64  # channels of the first U-Net level (x expand per pooling).
  config.model.n_layers = 8  # residual blocks per U-Net stage.
  config.model.pool = (4, 4)  # a tuple, so --config.model.pool="(2,)" can override it.
  config.model.expand = 2  # channel multiplier at each pooling step.
  config.model.ff = 2  # feed-forward expansion after each S4 block (0 = none).
  config.model.unet = False
  config.model.d_state = 64  # SSM state size N.
  config.model.n_ssm = 1  # None = one SSM per channel.
  config.model.dropout = 0.0  # on S4 and FF outputs, during training only.
  config.model.final_act = "glu"  # glu | id: output of each S4 block.
  config.model.init = "legs"  # legs (s4) | diag-lin, diag-inv, diag-legs (s4d).
  config.model.disc = "bilinear"  # DPLR S4 (layer s4) discretises bilinearly; S4D: zoh.
  config.model.dt_min = 1e-3  # range of the initial log-uniform SSM step size ...
  config.model.dt_max = 1e-1  # ... dt.
  config.model.conv_impl = "auto"  # auto (per platform) | fft | fft_freq | chunked.
  config.model.remat = "none"  # none | block (recompute each residual block in the backward pass).
  config.model.compute_dtype = "float32"  # float32 | bfloat16 (activations; params stay float32).
  config.model.output_head = "categorical"  # categorical | dml.
  config.model.n_mixtures = 10  # DML only.
  config.model.input_conv_width = 0  # >0: residual causal conv over the embeddings (frames of tokens).
  config.model.input_conv_kind = "dense"  # dense | depthwise.
  config.model.fine_conv_width = 0  # >0: residual causal conv before each S4 layer of level 0.
  config.model.fine_conv_kind = "dense"  # dense | depthwise.

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 200_000  # total train steps (a finished run does nothing when rerun).
  config.train.batch_size = 32  # global, over all devices and hosts.
  config.train.learning_rate = 1e-3  # AdamW peak learning rate (non-SSM parameters).
  config.train.ssm_learning_rate = 1e-3  # dt, A, B, P: this lr and no weight decay.
  config.train.weight_decay = 0.0  # AdamW weight decay (non-SSM parameters).
  config.train.warmup_steps = 1000  # linear warm-up from 0 to the learning rates.
  config.train.schedule = "plateau"  # cosine | constant | plateau (after warmup).
  config.train.plateau_factor = 0.2  # plateau: lr *= factor when validation bits stall ...
  config.train.plateau_patience = 20  # ... for this many evaluations in a row.
  config.train.grad_clip_norm = 0.0  # global-norm clipping; 0 = off (the reference's default).
  config.train.checkpoint_every_steps = 5000  # also at the last step and on SIGTERM.
  config.train.eval_every_steps = 1000  # validation bits per token, also at the last step.
  config.train.log_every_steps = 100  # console / TensorBoard / metrics.jsonl train lines.
  config.train.eval_batches = 16  # validation batches per evaluation.
  config.train.keep_checkpoints = 3  # the last K, plus the best by validation bits.
  config.train.max_consecutive_nonfinite = 20  # skipped non-finite steps in a row that stop a run.
  config.train.shard_optimizer_state = False  # shard Adam moments over devices (saves memory).
  config.train.num_eval_samples = 0  # audio samples written to TensorBoard at each evaluation.
  return config


def apply_tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks `config` in place to a 2-layer S4D model on short demo clips that trains on a CPU.

  Measured on the demo music (stereo, 2048-token streams, batch 4): lr 4e-3 stays at the
  unigram entropy (~7.4 bits) for 300+ steps, lr 1e-3 leaves that plateau after ~180 steps.
  """
  config.dataset.path = ""
  config.dataset.sample_len = 1024
  config.model.layer = "s4d"
  config.model.init = "diag-lin"
  config.model.disc = "zoh"
  config.model.n_layers = 2
  config.model.d_model = 64
  config.train.num_steps = 500
  config.train.batch_size = 4
  config.train.learning_rate = 1e-3
  config.train.ssm_learning_rate = 1e-3
  config.train.warmup_steps = 20
  config.train.schedule = "constant"
  config.train.grad_clip_norm = 1.0
  config.train.checkpoint_every_steps = 100
  config.train.eval_every_steps = 100
  config.train.log_every_steps = 20
  config.train.eval_batches = 4
  config.train.keep_checkpoints = 2
  return config


def parse_args(arg: str | None, allowed: tuple[str, ...]) -> set[str]:
  """Splits a `file.py:a,b` config argument into its words, rejecting unknown ones.

  Raises:
    ValueError: naming the unknown word and the accepted ones.
  """
  words = {w.strip() for w in (arg or "").split(",") if w.strip()}
  for word in words:
    if word not in allowed and not (word.isdigit() and "N" in allowed):
      raise ValueError(f"Unknown config argument {word!r}; accepted: {', '.join(allowed)}.")
  return words
