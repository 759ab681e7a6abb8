"""Checkpoints: retention (last K + best), iterator position, refusals and clear errors.

These use small pytrees and a grain iterator over integers (no model, nothing compiled); the
end-to-end resume of a real run is in test_train.py.
"""

import os
import pathlib
import runpy
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sashimi_jax import checkpoint as checkpoint_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(**model):
  config = ml_collections.ConfigDict({
      "seed": 0,
      "dataset": {"path": "", "sample_len": 64, "bits": 8, "num_workers": 0},
      "model": {"d_model": 8, "pool": (2,), **model},
      "train": {"batch_size": 2, "num_steps": 10, "learning_rate": 1e-3},
  })
  return config


def _iterator():
  return iter(grain.MapDataset.range(1000).shuffle(seed=3).to_iter_dataset())


def _state(value):
  return {"step": jnp.asarray(value, jnp.int32),
          "params": {"w": jnp.full((3, 2), float(value)), "b": jnp.zeros((2,))},
          "opt_state": {"mu": jnp.ones((3, 2))}}


def test_keeps_last_k_and_the_best(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=2)
  iterator = _iterator()
  bits = {2: 5.0, 4: 3.0, 6: 4.0, 8: 4.5}  # step 4 is the best evaluation.
  for step in range(1, 11):
    next(iterator)
    ckpt.save(step, _state(step), iterator, _config(), eval_bits_per_token=bits.get(step))
  assert ckpt.all_steps() == [4, 9, 10]
  assert ckpt.latest_step() == 10
  ckpt.close()


def test_restore_returns_state_and_iterator_position(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=3)
  iterator = _iterator()
  for _ in range(7):
    next(iterator)
  ckpt.save(7, _state(7), iterator, _config())
  expected_next = [next(iterator) for _ in range(5)]
  fresh = _iterator()
  abstract = {"step": jnp.zeros((), jnp.int32),
              "params": {"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))},
              "opt_state": {"mu": jnp.zeros((3, 2))}}
  restored = ckpt.restore(7, abstract, fresh)
  np.testing.assert_array_equal(restored["params"]["w"], np.full((3, 2), 7.0))
  assert int(restored["step"]) == 7
  assert [next(fresh) for _ in range(5)] == expected_next  # same batches after resume.
  assert ckpt.saved_config(7)["model"]["d_model"] == 8
  ckpt.close()


def test_checkpoint_of_another_parameter_layout_is_a_one_line_error(tmp_path, monkeypatch):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=3)
  # As the code before scanned stages wrote it: no layout recorded (layout 1).
  monkeypatch.setattr(checkpoint_lib, "PARAM_LAYOUT_KEY", "unused_key")
  ckpt.save(3, _state(3), _iterator(), _config())
  monkeypatch.undo()
  with pytest.raises(ValueError, match="parameter layout 1 and this code reads layout 2") as e:
    ckpt.saved_config(3)
  assert "\n" not in str(e.value)
  ckpt.save(4, _state(4), _iterator(), _config())
  assert checkpoint_lib.PARAM_LAYOUT_KEY not in ckpt.saved_config(4)
  ckpt.close()


def test_refuses_to_checkpoint_nonfinite_params(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=2)
  state = _state(1)
  state["params"]["w"] = state["params"]["w"].at[0, 1].set(jnp.nan)
  with pytest.raises(ValueError, match=r"Refusing to checkpoint step 1: non-finite values in "
                                       r".*'params'.*'w'"):
    ckpt.save(1, state, _iterator(), _config())
  assert ckpt.all_steps() == []
  ckpt.close()


def test_incompatible_config_names_every_differing_field():
  saved = _config().to_dict()
  current = _config(d_model=16)
  current.dataset.sample_len = 128
  current.train.learning_rate = 5e-4  # allowed to change on resume.
  current.dataset.num_workers = 4  # allowed too.
  with pytest.raises(ValueError) as info:
    checkpoint_lib.check_compatible(saved, current, workdir="/tmp/run", step=40)
  text = str(info.value)
  assert "step 40" in text
  assert "model.d_model: checkpoint has 8, config has 16" in text
  assert "dataset.sample_len: checkpoint has 64, config has 128" in text
  assert "learning_rate" not in text and "num_workers" not in text
  # Tuples saved as JSON lists compare equal; identical configs pass.
  saved["model"]["pool"] = [2]
  checkpoint_lib.check_compatible(saved, _config(), workdir="/tmp/run", step=40)


def test_field_newer_than_the_checkpoint_compares_as_its_base_default():
  # A checkpoint saved before model.input_conv_width existed was trained without the convolution
  # (the base default 0): resuming with 0 is compatible, with 4 it is not, and the error says why.
  from sashimi_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  assert config_lib.base_defaults()["model.input_conv_width"] == 0
  saved = _config().to_dict()
  checkpoint_lib.check_compatible(saved, _config(input_conv_width=0), workdir="/tmp/r", step=3)
  with pytest.raises(ValueError, match=r"model.input_conv_width: checkpoint has "
                     r"'<not saved; default 0>', config has 4"):
    checkpoint_lib.check_compatible(saved, _config(input_conv_width=4), workdir="/tmp/r", step=3)
  # A field the base config does not know stays a difference.
  with pytest.raises(ValueError, match="model.made_up: checkpoint has '<missing>'"):
    checkpoint_lib.check_compatible(saved, _config(made_up=1), workdir="/tmp/r", step=3)


def test_load_for_inference_without_checkpoints_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoints in"):
    checkpoint_lib.load_for_inference(str(tmp_path / "never_trained"))
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="No checkpoints in"):
    checkpoint_lib.load_for_inference(str(tmp_path / "empty"))


def test_load_for_inference_unknown_step(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=2)
  ckpt.save(3, _state(3), _iterator(), _config())
  ckpt.close()
  with pytest.raises(FileNotFoundError, match=r"No checkpoint for step 5 .*saved steps: \[3\]"):
    checkpoint_lib.load_for_inference(str(tmp_path), step=5)


# ------------------------------------------------------------------------------------------------
# Damaged checkpoints and failing saves.

_ABSTRACT = {"step": jnp.zeros((), jnp.int32),
             "params": {"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))},
             "opt_state": {"mu": jnp.zeros((3, 2))}}


def _three_steps(workdir):
  """Saves steps 1, 2, 3 of the small state under `workdir`."""
  ckpt = checkpoint_lib.Checkpointer(str(workdir), keep=3)
  iterator = _iterator()
  for step in (1, 2, 3):
    next(iterator)
    ckpt.save(step, _state(step), iterator, _config())
  ckpt.close()


def _model_config():
  """The tiny stereo config shrunk further (a real model, for load_for_inference)."""
  config = runpy.run_path(str(ROOT / "configs" / "stereo_temporal.py"))["get_config"]("tiny")
  config.dataset.sample_len = 32
  config.model.update(n_layers=1, d_model=8, pool=(2,), d_state=4, ff=1)
  return config


def _data_files(step_dir):
  return sorted(p for p in (step_dir / "state").rglob("*") if p.is_file()
                and p.parent.name == "d" and p.parent.parent.name == "state")


def _damage(step_dir, how):
  if how == "truncated":
    (path,) = _data_files(step_dir)[:1]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  elif how == "missing":
    _data_files(step_dir)[0].unlink()
  elif how == "garbage_metadata":
    (step_dir / "state" / "_METADATA").write_text("garbage{")
  elif how == "flipped_byte":  # same size: only the manifest's CRC32 sees it.
    path = _data_files(step_dir)[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "missing", "garbage_metadata", "flipped_byte"])
def test_damaged_latest_step_falls_back_to_the_previous(tmp_path, how, caplog):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=3)
  iterator = _iterator()
  for step in (1, 2, 3):
    next(iterator)
    ckpt.save(step, _state(step), iterator, _config())
    if step == 2:
      reference = _iterator()
      reference.set_state(iterator.get_state())
      expected_next = [next(reference) for _ in range(4)]
  ckpt.close()
  _damage(tmp_path / "checkpoints" / "3", how)

  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=3)
  fresh = _iterator()
  with caplog.at_level("WARNING"):
    step, state = ckpt.restore_latest(_ABSTRACT, fresh, config=_config(), workdir=str(tmp_path))
  assert step == 2
  np.testing.assert_array_equal(state["params"]["w"], np.full((3, 2), 2.0))
  assert [next(fresh) for _ in range(4)] == expected_next  # the iterator of step 2 too.
  lines = [r.getMessage() for r in caplog.records if "step 3 is damaged" in r.getMessage()]
  assert len(lines) == 1 and "\n" not in lines[0], caplog.text
  # Set aside, not deleted; Orbax no longer lists it, so step 3 can be saved again.
  assert (tmp_path / "checkpoints" / "3.damaged" / "DAMAGE.txt").read_text().startswith("step 3:")
  assert ckpt.all_steps() == [1, 2]
  ckpt.save(3, _state(3), fresh, _config())
  assert ckpt.all_steps() == [1, 2, 3]
  ckpt.close()


def test_no_step_restores_lists_what_was_tried_and_changes_nothing(tmp_path):
  _three_steps(tmp_path)
  for step in (1, 2, 3):
    _damage(tmp_path / "checkpoints" / str(step), "garbage_metadata")
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=3)
  with pytest.raises(checkpoint_lib.CheckpointError) as info:
    ckpt.restore_latest(_ABSTRACT, _iterator())
  text = str(info.value)
  assert "\n" not in text and all(f"step {s}:" in text for s in (1, 2, 3))
  assert ckpt.all_steps() == [1, 2, 3]  # nothing renamed when there is nothing to resume from.
  ckpt.close()


def test_incompatible_config_is_not_taken_for_damage(tmp_path):
  _three_steps(tmp_path)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=3)
  with pytest.raises(ValueError, match="Cannot resume .* step 3"):
    ckpt.restore_latest(_ABSTRACT, _iterator(), config=_config(d_model=16))
  assert ckpt.all_steps() == [1, 2, 3]
  ckpt.close()


# A subprocess (the file-size limit must not touch pytest's own files): saves steps 1 and 2, then
# step 3 under RLIMIT_FSIZE so its array data cannot be written (EFBIG, as a full disk would fail
# with ENOSPC), then step 3 again with the limit lifted ("after freeing space").
_FULL_DISK = r"""
import resource, signal, sys
sys.path.insert(0, sys.argv[2])
import jax.numpy as jnp
import test_checkpoint as t
from sashimi_jax import checkpoint as checkpoint_lib
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG.
ckpt = checkpoint_lib.Checkpointer(sys.argv[1], keep=5)
it = t._iterator()
import numpy as np
noise = np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32)  # incompressible
big = lambda v: dict(t._state(v), opt_state={"mu": jnp.asarray(noise + v)})
for step in (1, 2):
  ckpt.save(step, big(step), it, t._config())
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
try:
  ckpt.save(3, big(3), it, t._config())
  print("SAVED")
except checkpoint_lib.CheckpointError as e:
  print("ERROR", str(e))
finally:
  resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
print("STEPS", ckpt.all_steps())
ckpt.save(3, big(3), it, t._config())
print("STEPS", ckpt.all_steps())
ckpt.close()
"""


def test_a_save_that_cannot_be_written_is_one_line_and_keeps_earlier_steps(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path), str(ROOT / "tests")],
                       env=env, capture_output=True, text=True, timeout=300, check=True).stdout
  lines = out.splitlines()
  (error,) = [l for l in lines if l.startswith("ERROR")]
  assert "Could not save checkpoint step 3" in error and "file size limit exceeded" in error
  assert "steps [1, 2]" in error
  assert lines[-2:] == ["STEPS [1, 2]", "STEPS [1, 2, 3]"]
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=5)
  for step in (1, 2, 3):
    assert ckpt.damage(step) is None
    assert int(ckpt.restore(step, dict(_ABSTRACT, opt_state={"mu": jnp.zeros((256, 256))}))
               ["step"]) == step
  ckpt.close()


def test_load_for_inference_names_intact_steps_for_a_damaged_one(tmp_path):
  from sashimi_jax import sharding  # pylint: disable=g-import-not-at-top
  from sashimi_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  config = _model_config()
  _, state, _ = state_lib.init_train_state(config, sharding.create_mesh(jax.local_devices()[:1]))
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=3)
  iterator = _iterator()
  for step in (1, 2, 3):
    ckpt.save(step, dict(state, step=jnp.asarray(step, jnp.int32)), iterator, config)
  ckpt.close()
  _damage(tmp_path / "checkpoints" / "3", "truncated")
  with pytest.raises(checkpoint_lib.CheckpointError) as info:
    checkpoint_lib.load_for_inference(str(tmp_path), step=3)
  assert "\n" not in str(info.value)
  assert "step 3" in str(info.value) and "intact steps: [1, 2]" in str(info.value)
  _, _, step = checkpoint_lib.load_for_inference(str(tmp_path))  # the default falls back.
  assert step == 2
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2", "3"]
