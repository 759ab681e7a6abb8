"""Checkpoints: retention (last K + best), iterator position, refusals and clear errors.

These use small pytrees and a grain iterator over integers (no model, nothing compiled); the
end-to-end resume of a real run is in test_train.py.
"""

import grain
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sashimi_jax import checkpoint as checkpoint_lib


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
