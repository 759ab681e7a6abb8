"""Config derivation and validation, run before anything is built or compiled.

`validate(config)` collects every problem it finds and raises one `ValueError` listing them, one
clear line per problem, so a bad command line fails in milliseconds instead of after compilation.
`token_stream_length` / `l_max` derive the sequence length the model sees (never set by hand).
"""

from __future__ import annotations

import functools
import math
import os
import runpy
from typing import Any, Mapping

from sashimi_jax import heads
from sashimi_jax import optim
from sashimi_jax.data import audio
from sashimi_jax.data import quantize
from sashimi_jax.data import stereo
from sashimi_jax.models import input_conv
from sashimi_jax.models import kernels
from sashimi_jax.models import s4
from sashimi_jax.models import sashimi
from sashimi_jax.models import stage
from sashimi_jax.models.ssm import discretize

# Each list of allowed values is declared by the module that implements it.
LAYERS = kernels.LAYERS
FINAL_ACTS = s4.FINAL_ACTS
OUTPUT_HEADS = heads.HEADS
QUANTIZATIONS = quantize.METHODS
SCHEDULES = optim.SCHEDULES
DISCRETIZATIONS = discretize.DISCRETIZATIONS
CONV_IMPLS = s4.CONV_IMPLS
VERIFY_AUDIO = audio.VERIFY_AUDIO
REMATS = stage.REMATS
COMPUTE_DTYPES = sashimi.COMPUTE_DTYPES
INPUT_CONV_KINDS = input_conv.KINDS
MIN_BITS, MAX_BITS = quantize.MIN_BITS, quantize.MAX_BITS


def to_dict(config) -> dict:
  """A ConfigDict (or mapping) as a plain nested dict."""
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def flatten(tree, prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}; tuples become lists (as in saved JSON configs)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


# The presets' shared base config (outside the package, beside it in the repository).
BASE_CONFIG_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "configs", "default.py")


@functools.cache
def base_defaults() -> dict[str, Any]:
  """`configs/default.py`'s base_config() flattened ({"model.d_model": 64, ...}); {} if absent.

  A field added to the project after a checkpoint was saved is absent from its saved config; the
  base default is the value the older code behaved as.
  """
  if not os.path.isfile(BASE_CONFIG_PATH):
    return {}
  return flatten(to_dict(runpy.run_path(BASE_CONFIG_PATH)["base_config"]()))


def token_stream_length(dataset_cfg) -> int:
  """Tokens per training example: `sample_len` (mono) or `2 * sample_len` (stereo)."""
  return stereo.stream_length(int(dataset_cfg.sample_len), bool(dataset_cfg.is_stereo))


def l_max(config) -> int:
  """The longest sequence the model's convolution kernels must cover (= token-stream length)."""
  return token_stream_length(config.dataset)


def pool_factor(model_cfg) -> int:
  """Total down-sampling of the U-Net: the product of `model.pool` (1 if empty)."""
  return int(math.prod(int(p) for p in model_cfg.pool)) if len(model_cfg.pool) else 1


def head_args(config) -> dict[str, Any]:
  """The output head's arguments {head, bits, n_mixtures} for `heads` and `sampling.generate`.

  n_mixtures is 0 unless the head is "dml" (a categorical head ignores it).
  """
  head = str(config.model.output_head)
  n_mixtures = int(config.model.get("n_mixtures", 0)) if head == "dml" else 0
  return {"head": head, "bits": int(config.dataset.bits), "n_mixtures": n_mixtures}


def _get(cfg, name: str, problems: list[str]) -> Any:
  """Reads dotted field `name` from `cfg`, recording a problem if it is missing."""
  node = cfg
  for part in name.split("."):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      problems.append(f"{name} is missing from the config.")
      return None
  return node


def _check_int(cfg, name, problems, *, minimum=None, maximum=None):
  value = _get(cfg, name, problems)
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, int):
    problems.append(f"{name}={value!r} must be an integer.")
    return None
  if minimum is not None and value < minimum:
    problems.append(f"{name}={value} must be >= {minimum}.")
    return None
  if maximum is not None and value > maximum:
    problems.append(f"{name}={value} must be <= {maximum}.")
    return None
  return value


def _check_float(cfg, name, problems, *, minimum=None, maximum=None, strict_min=False):
  value = _get(cfg, name, problems)
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    problems.append(f"{name}={value!r} must be a finite number.")
    return None
  if minimum is not None and (value <= minimum if strict_min else value < minimum):
    problems.append(f"{name}={value} must be {'>' if strict_min else '>='} {minimum}.")
    return None
  if maximum is not None and value > maximum:
    problems.append(f"{name}={value} must be <= {maximum}.")
    return None
  return float(value)


def _check_choice(cfg, name, choices, problems):
  value = _get(cfg, name, problems)
  if value is not None and value not in choices:
    problems.append(f"{name}={value!r} is unknown; choose one of {', '.join(map(repr, choices))}.")
    return None
  return value


def _check_bool(cfg, name, problems):
  value = _get(cfg, name, problems)
  if value is not None and not isinstance(value, bool):
    problems.append(f"{name}={value!r} must be True or False.")
    return None
  return value


def find_problems(config, *, num_devices: int | None = None,
                  process_count: int = 1) -> list[str]:
  """Returns every problem found in `config` (empty list if it is valid).

  Args:
    config: the ConfigDict from `configs/*.py`.
    num_devices: global device count to check the batch against (None skips that check).
    process_count: number of hosts; the global batch must split evenly across them.
  """
  problems: list[str] = []
  _check_int(config, "seed", problems, minimum=0)

  # dataset
  d = "dataset"
  _get(config, f"{d}.path", problems)
  _check_int(config, f"{d}.sample_rate", problems, minimum=1)
  sample_len = _check_int(config, f"{d}.sample_len", problems, minimum=2)
  is_stereo = _check_bool(config, f"{d}.is_stereo", problems)
  strategy = _get(config, f"{d}.interleaving_strategy", problems)
  block_frames = None
  if strategy is not None:
    try:
      block_frames = stereo.parse_strategy(strategy).block_frames
    except ValueError as e:
      problems.append(f"dataset.interleaving_strategy: {e}")
      strategy = None
  _check_int(config, f"{d}.bits", problems, minimum=MIN_BITS, maximum=MAX_BITS)
  _check_choice(config, f"{d}.quantization", QUANTIZATIONS, problems)
  _check_bool(config, f"{d}.normalize", problems)
  _check_bool(config, f"{d}.resample", problems)
  mono_to_stereo = _get(config, f"{d}.mono_to_stereo", problems)
  if mono_to_stereo is not None and not isinstance(mono_to_stereo, str):
    problems.append(f"{d}.mono_to_stereo={mono_to_stereo!r} must be a string such as 'error'.")
  valid = _check_float(config, f"{d}.valid_fraction", problems, minimum=0.0, maximum=1.0)
  test = _check_float(config, f"{d}.test_fraction", problems, minimum=0.0, maximum=1.0)
  if valid is not None and test is not None and valid + test >= 1.0:
    problems.append(f"{d}.valid_fraction + {d}.test_fraction = {valid + test} leaves no training "
                    "data; their sum must be < 1.")
  _check_int(config, f"{d}.num_workers", problems, minimum=0)
  _check_choice(config, f"{d}.verify_audio", VERIFY_AUDIO, problems)
  # TFDS fields (optional: configs saved before they existed lack them).
  tfds = {name: config.dataset.get(name) for name in ("tfds_name", "tfds_split", "tfds_data_dir",
                                                      "tfds_audio_key")}
  for name, value in tfds.items():
    if value is not None and not isinstance(value, str):
      problems.append(f"{d}.{name}={value!r} must be a string.")
  if isinstance(tfds["tfds_name"], str) and tfds["tfds_name"]:
    for name in ("tfds_split", "tfds_audio_key"):
      if not tfds[name]:
        problems.append(f"{d}.{name} must be set when {d}.tfds_name is.")
    if config.dataset.get("path"):
      problems.append(f"{d}.path={config.dataset.path!r} and {d}.tfds_name="
                      f"{tfds['tfds_name']!r} are both set; use one of them.")
  if is_stereo and sample_len is not None and block_frames is not None:
    # A last block shorter than N is allowed (stereo.py); a block longer than the clip is
    # just `blocking` under another name, almost always a units mistake (frames vs tokens).
    if block_frames > sample_len:
      problems.append(
          f"{d}.interleaving_strategy={strategy!r} has blocks of {block_frames} frames, longer than "
          f"{d}.sample_len={sample_len} frames; use 'blocking' or a smaller N.")

  # model
  m = "model"
  layer = _check_choice(config, f"{m}.layer", LAYERS, problems)
  _check_int(config, f"{m}.d_model", problems, minimum=1)
  _check_int(config, f"{m}.n_layers", problems, minimum=1)
  pool = _get(config, f"{m}.pool", problems)
  if pool is not None:
    if (not isinstance(pool, (list, tuple))
        or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in pool)):
      problems.append(f"{m}.pool={pool!r} must be a list of positive integers.")
      pool = None
  _check_int(config, f"{m}.expand", problems, minimum=1)
  _check_int(config, f"{m}.ff", problems, minimum=0)
  _check_bool(config, f"{m}.unet", problems)
  _check_int(config, f"{m}.d_state", problems, minimum=2)
  n_ssm = _get(config, f"{m}.n_ssm", problems)
  if n_ssm is not None and (isinstance(n_ssm, bool) or not isinstance(n_ssm, int) or n_ssm < 1):
    problems.append(f"{m}.n_ssm={n_ssm!r} must be a positive integer, or None for one SSM per "
                    "channel.")
  _check_float(config, f"{m}.dropout", problems, minimum=0.0, maximum=0.99)
  _check_choice(config, f"{m}.final_act", FINAL_ACTS, problems)
  init = _get(config, f"{m}.init", problems)
  if init is not None and layer is not None and init not in kernels.INITS[layer]:
    problems.append(f"{m}.init={init!r} does not fit layer={layer!r}; choose one of "
                    f"{', '.join(map(repr, kernels.INITS[layer]))}, or None for the layer's "
                    f"default {kernels.DEFAULT_INIT[layer]!r}.")
  disc = _get(config, f"{m}.disc", problems)
  if disc is not None and disc not in DISCRETIZATIONS:
    problems.append(f"{m}.disc={disc!r} is unknown; choose one of "
                    f"{', '.join(map(repr, DISCRETIZATIONS))}, or None for the layer's default.")
  if layer == "s4" and disc == "zoh":
    problems.append(f"{m}.disc='zoh' is not available for layer='s4' (DPLR); use 'bilinear', or "
                    "layer='s4d'.")
  dt_min = _check_float(config, f"{m}.dt_min", problems, minimum=0.0, strict_min=True)
  dt_max = _check_float(config, f"{m}.dt_max", problems, minimum=0.0, strict_min=True)
  if dt_min is not None and dt_max is not None and dt_min > dt_max:
    problems.append(f"{m}.dt_min={dt_min} must be <= {m}.dt_max={dt_max}.")
  _check_choice(config, f"{m}.conv_impl", CONV_IMPLS, problems)
  _check_choice(config, f"{m}.remat", REMATS, problems)
  _check_choice(config, f"{m}.compute_dtype", COMPUTE_DTYPES, problems)
  head = _check_choice(config, f"{m}.output_head", OUTPUT_HEADS, problems)
  n_mixtures = _check_int(config, f"{m}.n_mixtures", problems, minimum=1)
  del n_mixtures, head
  # Optional (configs saved before these fields existed lack them).
  if "input_conv_width" in config[m]:
    _check_int(config, f"{m}.input_conv_width", problems, minimum=0, maximum=64)
  if "input_conv_kind" in config[m]:
    _check_choice(config, f"{m}.input_conv_kind", INPUT_CONV_KINDS, problems)
  if "fine_conv_width" in config[m]:
    _check_int(config, f"{m}.fine_conv_width", problems, minimum=0, maximum=64)
  if "fine_conv_kind" in config[m]:
    _check_choice(config, f"{m}.fine_conv_kind", INPUT_CONV_KINDS, problems)

  if sample_len is not None and is_stereo is not None and pool is not None:
    tokens = stereo.stream_length(sample_len, is_stereo)
    factor = int(math.prod(pool)) if pool else 1
    if tokens % factor:
      what = (f"the stereo token stream 2 * dataset.sample_len = {tokens}" if is_stereo
              else f"dataset.sample_len={tokens}")
      problems.append(
          f"{what} is not divisible by the total pooling factor {factor} = prod(model.pool="
          f"{list(pool)}); every U-Net stage needs whole pooled steps. Choose a length that is a "
          f"multiple of {factor}.")

  # train
  t = "train"
  num_steps = _check_int(config, f"{t}.num_steps", problems, minimum=1)
  batch_size = _check_int(config, f"{t}.batch_size", problems, minimum=1)
  _check_float(config, f"{t}.learning_rate", problems, minimum=0.0, strict_min=True)
  _check_float(config, f"{t}.ssm_learning_rate", problems, minimum=0.0)
  _check_float(config, f"{t}.weight_decay", problems, minimum=0.0)
  warmup = _check_int(config, f"{t}.warmup_steps", problems, minimum=0)
  if warmup is not None and num_steps is not None and warmup > num_steps:
    problems.append(f"{t}.warmup_steps={warmup} exceeds {t}.num_steps={num_steps}.")
  schedule = _check_choice(config, f"{t}.schedule", SCHEDULES, problems)
  if schedule == "plateau" and valid == 0.0:
    problems.append(f"{t}.schedule='plateau' needs a validation split (it lowers the learning "
                    f"rate when validation bits stall), but {d}.valid_fraction=0; use another "
                    "schedule or a positive valid_fraction.")
  _check_float(config, f"{t}.plateau_factor", problems, minimum=0.0, maximum=1.0, strict_min=True)
  _check_int(config, f"{t}.plateau_patience", problems, minimum=0)
  _check_float(config, f"{t}.grad_clip_norm", problems, minimum=0.0)
  _check_int(config, f"{t}.checkpoint_every_steps", problems, minimum=1)
  _check_int(config, f"{t}.eval_every_steps", problems, minimum=1)
  _check_int(config, f"{t}.log_every_steps", problems, minimum=1)
  _check_int(config, f"{t}.eval_batches", problems, minimum=1)
  _check_int(config, f"{t}.keep_checkpoints", problems, minimum=1)
  _check_int(config, f"{t}.max_consecutive_nonfinite", problems, minimum=1)
  _check_bool(config, f"{t}.shard_optimizer_state", problems)
  _check_int(config, f"{t}.num_eval_samples", problems, minimum=0)
  if batch_size is not None:
    if num_devices is not None and batch_size % num_devices:
      problems.append(
          f"{t}.batch_size={batch_size} (global) is not divisible by the {num_devices} devices; "
          f"use a multiple of {num_devices}.")
    if process_count > 1 and batch_size % process_count:
      problems.append(f"{t}.batch_size={batch_size} (global) is not divisible by the "
                      f"{process_count} processes (hosts).")
  return problems


def validate(config, *, num_devices: int | None = None, process_count: int = 1) -> None:
  """Raises one ValueError naming every problem in `config`; returns None if it is valid.

  Args:
    config: the ConfigDict from `configs/*.py`.
    num_devices: global device count (`jax.device_count()`); None skips the batch check.
    process_count: number of hosts (`jax.process_count()`).
  """
  problems = find_problems(config, num_devices=num_devices, process_count=process_count)
  if problems:
    lines = "\n".join(f"  - {p}" for p in problems)
    raise ValueError(f"Invalid config ({len(problems)} problem{'s' if len(problems) > 1 else ''}):"
                     f"\n{lines}")
