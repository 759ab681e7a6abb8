"""Config presets and validation: every preset is valid; every bad field gets its own message."""

import pathlib
import runpy

import ml_collections
import pytest

from sashimi_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRESETS = ("mono", "stereo_temporal", "stereo_blocking", "stereo_blocking_n", "sc09",
           "youtubemix", "beethoven")


def get_config(name, arg=None):
  return runpy.run_path(str(ROOT / "configs" / f"{name}.py"))["get_config"](arg)


def problems_of(config, **kwargs):
  return config_lib.find_problems(config, **kwargs)


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("arg", [None, "tiny"])
def test_presets_are_valid(name, arg):
  config = get_config(name, arg)
  assert problems_of(config, num_devices=1) == []
  tokens = config.dataset.sample_len * (2 if config.dataset.is_stereo else 1)
  assert config_lib.l_max(config) == tokens
  assert "l_max" not in config.model  # derived, never set.


@pytest.mark.parametrize("name", PRESETS)
def test_docstring_shows_the_command(name):
  doc = (ROOT / "configs" / f"{name}.py").read_text()
  assert f"python launch.py --config=configs/{name}.py" in doc
  assert "--config." in doc  # shows how to override a field.


def test_tiny_is_small_and_uses_demo_data():
  full, tiny = get_config("stereo_temporal"), get_config("stereo_temporal", "tiny")
  assert tiny.dataset.path == ""
  assert tiny.model.n_layers < full.model.n_layers
  assert tiny.train.num_steps < full.train.num_steps


def test_paper_presets_follow_the_reference_recipe():
  sc09 = get_config("sc09")
  assert (sc09.dataset.sample_len, sc09.train.batch_size, sc09.model.n_layers) == (16000, 32, 8)
  assert (sc09.dataset.quantization, sc09.dataset.bits, sc09.train.schedule) == ("mu-law", 8,
                                                                              "plateau")
  assert sc09.train.plateau_factor == 0.2 and sc09.train.plateau_patience == 20
  ytm = get_config("youtubemix")
  assert (ytm.dataset.sample_len, ytm.train.batch_size, ytm.train.learning_rate) == (131072, 1,
                                                                                     4e-3)
  assert not ytm.dataset.is_stereo and get_config("youtubemix", "stereo").dataset.is_stereo
  beethoven = get_config("beethoven")
  assert (beethoven.dataset.quantization, beethoven.dataset.sample_len) == ("linear", 128000)
  assert get_config("stereo_blocking_n", "tiny,64").dataset.interleaving_strategy == "blocking-64"


def test_unknown_preset_argument_is_rejected():
  with pytest.raises(ValueError, match="Unknown config argument 'huge'"):
    get_config("stereo_temporal", "huge")


def _one_problem(config, **kwargs):
  found = problems_of(config, **kwargs)
  assert len(found) == 1, found
  return found[0]


@pytest.mark.parametrize("strategy", ["diagonal", "blocking-0", "blocking-x", "Temporal"])
def test_unknown_strategy(strategy):
  config = get_config("stereo_temporal", "tiny")
  config.dataset.interleaving_strategy = strategy
  message = _one_problem(config)
  assert "dataset.interleaving_strategy" in message and repr(strategy) in message


@pytest.mark.parametrize("bits", [7, 17])
def test_bits_out_of_range(bits):
  config = get_config("mono", "tiny")
  config.dataset.bits = bits
  message = _one_problem(config)
  assert f"dataset.bits={bits}" in message
  assert ("8" if bits < 8 else "16") in message


def test_stereo_stream_must_be_divisible_by_pooling():
  config = get_config("stereo_temporal", "tiny")
  config.model.pool = [4, 4]
  config.dataset.sample_len = 4100  # stream 8200 tokens, not a multiple of 16.
  message = _one_problem(config)
  assert "2 * dataset.sample_len = 8200" in message and "16" in message
  config.dataset.sample_len = 4104  # stream 8208 = 16 * 513: fine for stereo ...
  assert problems_of(config) == []
  config.dataset.is_stereo = False  # ... but 4104 mono tokens are not a multiple of 16.
  assert "dataset.sample_len=4104" in _one_problem(config)


def test_blocking_n_longer_than_the_clip():
  config = get_config("stereo_blocking_n", "tiny,64")
  config.dataset.sample_len = 48
  config.model.pool = [2]
  message = _one_problem(config)
  assert "blocks of 64 frames" in message and "sample_len=48" in message
  config.dataset.sample_len = 96  # a short last block (32 frames) is fine.
  assert problems_of(config) == []


def test_batch_not_divisible_by_devices():
  config = get_config("stereo_temporal", "tiny")
  config.train.batch_size = 6
  assert problems_of(config, num_devices=2) == []
  message = _one_problem(config, num_devices=4)
  assert "train.batch_size=6" in message and "4 devices" in message
  assert "2 processes" not in " ".join(problems_of(config, num_devices=2, process_count=4))
  assert "4 processes" in " ".join(problems_of(config, num_devices=8, process_count=4))


@pytest.mark.parametrize("field,value,expected", [
    ("model.layer", "s5", "model.layer='s5' is unknown"),
    ("model.output_head", "softmax", "model.output_head='softmax' is unknown"),
    ("dataset.quantization", "a-law", "dataset.quantization='a-law' is unknown"),
    ("dataset.verify_audio", "most", "dataset.verify_audio='most' is unknown"),
    ("train.schedule", "linear", "train.schedule='linear' is unknown"),
    ("model.disc", "euler", "model.disc='euler' is unknown"),
    ("model.init", "legs", "model.init='legs' does not fit layer='s4d'"),
    ("model.final_act", "relu", "model.final_act='relu' is unknown"),
    ("model.remat", "full", "model.remat='full' is unknown"),
    ("model.compute_dtype", "float16", "model.compute_dtype='float16' is unknown"),
    ("model.dt_min", 0.5, "model.dt_min=0.5 must be <= model.dt_max=0.1"),
    ("dataset.valid_fraction", -0.1, "dataset.valid_fraction=-0.1 must be >= 0.0"),
    ("train.learning_rate", float("nan"), "train.learning_rate=nan must be a finite number"),
    ("train.warmup_steps", 10_000, "train.warmup_steps=10000 exceeds train.num_steps=500"),
    ("model.n_ssm", 0, "model.n_ssm=0 must be a positive integer"),
    ("model.pool", [4, 0], "model.pool=[4, 0] must be a list of positive integers"),
    ("train.batch_size", 2.5, "train.batch_size=2.5 must be an integer"),
    ("dataset.is_stereo", "yes", "dataset.is_stereo='yes' must be True or False"),
])
def test_each_bad_field_has_a_clear_message(field, value, expected):
  as_dict = get_config("stereo_temporal", "tiny").to_dict()
  section, name = field.split(".")
  as_dict[section][name] = value  # via a dict: ConfigDict would refuse some wrong types itself.
  message = _one_problem(ml_collections.ConfigDict(as_dict))
  assert expected in message, message


def test_switching_layer_names_the_fields_that_no_longer_fit():
  config = get_config("stereo_temporal", "tiny")  # S4D: init diag-lin, disc zoh.
  config.model.layer = "s4"
  problems = config_lib.find_problems(config)
  assert any("model.init='diag-lin' does not fit layer='s4'" in p for p in problems), problems
  assert any("model.disc='zoh' is not available for layer='s4'" in p for p in problems), problems


def test_validate_lists_every_problem_at_once():
  config = get_config("stereo_temporal", "tiny")
  config.dataset.bits = 4
  config.model.layer = "lstm"
  config.dataset.interleaving_strategy = "zigzag"
  with pytest.raises(ValueError) as info:
    config_lib.validate(config, num_devices=1)
  text = str(info.value)
  assert text.startswith("Invalid config (3 problems)")
  for fragment in ("dataset.bits=4", "model.layer='lstm'", "'zigzag'"):
    assert fragment in text


def test_missing_field_is_named():
  config = get_config("mono", "tiny")
  del config.train["eval_batches"]
  assert "train.eval_batches is missing" in _one_problem(config)


def test_zero_valid_and_test_fractions_are_accepted_except_with_the_plateau_schedule():
  as_dict = get_config("stereo_temporal", "tiny").to_dict()
  as_dict["dataset"]["valid_fraction"] = 0.0
  as_dict["dataset"]["test_fraction"] = 0.0
  assert problems_of(ml_collections.ConfigDict(as_dict)) == []
  as_dict["train"]["schedule"] = "plateau"
  message = _one_problem(ml_collections.ConfigDict(as_dict))
  assert "train.schedule='plateau' needs a validation split" in message, message


def test_head_args_are_the_one_description_of_the_output_head():
  config = get_config("mono", "tiny")
  config.model.output_head = "categorical"
  config.model.n_mixtures = 10
  assert config_lib.head_args(config) == {"head": "categorical", "bits": 8, "n_mixtures": 0}
  config.model.output_head = "dml"
  config.dataset.bits = 16
  assert config_lib.head_args(config) == {"head": "dml", "bits": 16, "n_mixtures": 10}
