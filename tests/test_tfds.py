"""dataset.tfds_name: a TFDS dataset prepared locally (ArrayRecord, no network, no TensorFlow) feeds
the same pipeline as folders, and launch.py trains from it and resumes exactly."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")  # the `test` extra installs it.

from sashimi_jax import metrics as metrics_lib  # pylint: disable=wrong-import-position
from sashimi_jax.data import pipeline  # pylint: disable=wrong-import-position
import launch_fixtures  # pylint: disable=wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_ITEMS = 12
ITEM_FRAMES = 100


def _items(split: str) -> list[np.ndarray]:
  """Stereo int16 sinusoids, a different period per item and per channel."""
  offset = 0 if split == "train" else 100
  t = np.arange(ITEM_FRAMES)
  return [np.stack([np.sin(2 * np.pi * t / (5 + i + offset)),
                    0.5 * np.sin(2 * np.pi * t / (11 + i + offset))], -1).__mul__(20000)
          .astype(np.int16) for i in range(NUM_ITEMS)]


class TinyStereo(tfds.core.GeneratorBasedBuilder):
  """Stereo PCM as a tfds.features.Tensor (tfds.features.Audio would need TensorFlow)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "pcm": tfds.features.Tensor(shape=(None, 2), dtype=np.int16),
        "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples("train"),
            "test": self._generate_examples("test")}

  def _generate_examples(self, split):
    for i, pcm in enumerate(_items(split)):
      yield i, {"pcm": pcm, "label": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tfds")
  TinyStereo(data_dir=str(directory), file_format="array_record").download_and_prepare()
  return directory


def _dataset_cfg(data_dir, **overrides):
  import runpy  # pylint: disable=g-import-not-at-top
  config = runpy.run_path(str(ROOT / "configs" / "stereo_temporal.py"))["get_config"]("tiny")
  config.dataset.update(sample_len=32, tfds_name="tiny_stereo", tfds_data_dir=str(data_dir),
                        tfds_audio_key="pcm", valid_fraction=0.2, test_fraction=0.0)
  config.dataset.update(**overrides)
  return config.dataset


def test_tfds_items_become_the_clips_of_the_pipeline(data_dir):
  dataset = _dataset_cfg(data_dir)
  train = pipeline.build_clip_source(dataset, "train")
  valid = pipeline.build_clip_source(dataset, "valid")
  # 12 items: 10 train, 2 valid (in the prepared dataset's order, which TFDS shuffled); 3
  # clips of 32 frames from each 100-frame item.
  assert (len(train), len(valid)) == (30, 6)
  source = tfds.data_source("tiny_stereo", split="train", data_dir=str(data_dir))
  items = [source[i]["pcm"] for i in range(NUM_ITEMS)]
  assert sorted(a.tobytes() for a in items) == sorted(a.tobytes() for a in _items("train"))
  np.testing.assert_array_equal(train[4], items[1][32:64].astype(np.float32) / 32768)
  np.testing.assert_array_equal(valid[0], items[10][:32].astype(np.float32) / 32768)
  test_split = pipeline.build_clip_source(_dataset_cfg(data_dir, tfds_split="test"), "train")
  test_source = tfds.data_source("tiny_stereo", split="test", data_dir=str(data_dir))
  np.testing.assert_array_equal(test_split[0],
                                test_source[0]["pcm"][:32].astype(np.float32) / 32768)
  mono = pipeline.build_clip_source(_dataset_cfg(data_dir, is_stereo=False), "train")
  np.testing.assert_allclose(mono[0][:, 0], items[0][:32].mean(-1) / 32768, rtol=1e-6)


def test_tfds_errors_name_the_dataset_and_the_fix(data_dir):
  with pytest.raises(ValueError, match=r"tfds_audio_key='audio' is not a feature of TFDS dataset "
                     r"'tiny_stereo'; its features: label, pcm"):
    pipeline.build_clip_source(_dataset_cfg(data_dir, tfds_audio_key="audio"), "train")
  with pytest.raises(FileNotFoundError, match=r"Cannot open TFDS dataset 'no_such_set'.*"
                     r"array_record") as error:
    pipeline.build_clip_source(_dataset_cfg(data_dir, tfds_name="no_such_set"), "train")
  assert "\n" not in str(error.value)


def _bits_by_step(workdir):
  return {e["step"]: e["train/bits_per_token"] for e in metrics_lib.read_metrics(str(workdir))
          if "train/bits_per_token" in e}


def test_launch_trains_from_a_tfds_dataset_and_resumes_exactly(data_dir, tmp_path):
  env = dict(os.environ)
  env.update({"PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
              "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"),
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
  env.pop("XLA_FLAGS", None)
  flags = [*launch_fixtures.SMALL_RUN_FLAGS, "--config.dataset.tfds_name=tiny_stereo",
           f"--config.dataset.tfds_data_dir={data_dir}", "--config.dataset.tfds_audio_key=pcm",
           "--config.dataset.valid_fraction=0.2", "--config.dataset.test_fraction=0.0",
           "--config.train.checkpoint_every_steps=3"]

  def launch(workdir, steps):
    done = subprocess.run([sys.executable, "launch.py", *flags, f"--workdir={workdir}",
                           f"--config.train.num_steps={steps}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr

  log = launch(tmp_path / "whole", 6)
  assert "TFDS tiny_stereo[train] of 12 items" in log
  launch(tmp_path / "resumed", 3)
  launch(tmp_path / "resumed", 6)
  whole, resumed = _bits_by_step(tmp_path / "whole"), _bits_by_step(tmp_path / "resumed")
  assert sorted(whole) == sorted(resumed) == list(range(1, 7))
  np.testing.assert_array_equal([resumed[s] for s in range(1, 7)],
                                [whole[s] for s in range(1, 7)])
