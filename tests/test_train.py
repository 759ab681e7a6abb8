"""Training: optimizer groups and schedules, metrics, and end-to-end runs of launch.py.

The end-to-end runs are subprocesses of `launch.py` on a very small stereo config; they share one
persistent XLA compilation cache, so only the first compiles the train step. They check that
SIGKILL mid-run followed by a resume reproduces the uninterrupted run's losses exactly, that
SIGTERM saves a checkpoint and exits cleanly, and that non-finite losses are skipped, logged and
stop the run after `train.max_consecutive_nonfinite` in a row. The uninterrupted run also writes
generated audio and spectrograms at its evaluation; they are read back from the TensorBoard event
file with a small TFRecord reader (no TensorFlow).
"""

import io
import math
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import soundfile as sf
from flax import nnx
from tensorboardX.crc32c import crc32c
from tensorboardX.proto import event_pb2

from sashimi_jax import checkpoint as checkpoint_lib
from sashimi_jax import metrics as metrics_lib
from sashimi_jax import optim
from sashimi_jax.models.stage import STACK, Stage
import launch_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 12
NUM_EVAL_SAMPLES = 2
SMALL_FLAGS = [
    *launch_fixtures.SMALL_RUN_FLAGS,
    "--config.train.checkpoint_every_steps=4",
]
# Runs launch.py after patching sashimi_jax.sharding.global_batch: each training batch waits
# DELAY seconds (so a signal can land mid-run) and the batches of POISON_CALLS get out-of-range
# targets (a non-finite loss). Neither changes the compiled program.
DRIVER = """
import os, runpy, sys, time
import numpy as np
import sashimi_jax.sharding as sharding
delay = float(os.environ.get("TEST_BATCH_DELAY_SECONDS", "0"))
poison = {int(s) for s in os.environ.get("TEST_POISON_CALLS", "").split(",") if s}
calls = [0]
fsize_at_step = int(os.environ.get("TEST_FSIZE_LIMIT_AT_SAVE", "0"))
if fsize_at_step:  # the save of that step hits a 64-byte file size limit (EFBIG, like ENOSPC).
  import resource, signal
  from sashimi_jax import checkpoint
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  original_save = checkpoint.Checkpointer.save
  def save(self, step, *args, **kwargs):
    if step != fsize_at_step:
      return original_save(self, step, *args, **kwargs)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))
    try:
      return original_save(self, step, *args, **kwargs)
    finally:
      resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
  checkpoint.Checkpointer.save = save
save_delay_from = int(os.environ.get("TEST_SAVE_DELAY_FROM_STEP", "0"))
if save_delay_from:  # saves of later steps first sleep (a Ctrl-C can land there), then save.
  from sashimi_jax import checkpoint as checkpoint_for_delay
  undelayed_save = checkpoint_for_delay.Checkpointer.save
  def delayed_save(self, step, *args, **kwargs):
    if step >= save_delay_from:
      time.sleep(float(os.environ["TEST_SAVE_DELAY_SECONDS"]))
    return undelayed_save(self, step, *args, **kwargs)
  checkpoint_for_delay.Checkpointer.save = delayed_save
original = sharding.global_batch
def global_batch(mesh, batch):
  calls[0] += 1
  if calls[0] in poison:
    batch = dict(batch, y=np.full_like(batch["y"], 100000))
  time.sleep(delay)
  return original(mesh, batch)
sharding.global_batch = global_batch
sys.argv = ["launch.py"] + sys.argv[1:]
runpy.run_path("launch.py", run_name="__main__")
"""


# ------------------------------------------------------------------------------------------------
# Optimizer, schedules, metrics (no model).


def _train_cfg(**overrides):
  base = dict(learning_rate=4e-3, ssm_learning_rate=1e-3, weight_decay=0.1, warmup_steps=3,
              num_steps=10, schedule="cosine", grad_clip_norm=1.0)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def _params():
  return {
      "embedding": {"embedding": jnp.ones((5, 3))},
      "block": {"kernel": {"log_dt": jnp.full((4,), -3.0), "A_imag": jnp.ones((4, 2)),
                           "C": jnp.ones((4, 2, 2))},
                "output_linear": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))},
                "norm": {"scale": jnp.ones((3,))}},
  }


def test_parameter_groups():
  labels = optim.param_labels(_params())
  assert labels["block"]["kernel"] == {"log_dt": "ssm", "A_imag": "ssm", "C": "decay"}
  # A Linear's weight is also called "kernel", but as a leaf it is an ordinary weight.
  assert labels["block"]["output_linear"] == {"kernel": "decay", "bias": "no_decay"}
  assert labels["block"]["norm"]["scale"] == "no_decay"
  assert labels["embedding"]["embedding"] == "no_decay"


def test_stacked_stage_parameters_keep_their_groups():
  # A scanned stage stacks each parameter on a layer axis: a stacked bias (n_layers, H) is still a
  # vector (no weight decay), and every leaf has the label of the same leaf of one unstacked pair.
  stage = Stage(8, n_layers=3, ff=2, dropout=0.0, l_max=32, layer="s4", d_state=8, n_ssm=1,
                final_act="glu", init="legs", disc="bilinear", rngs=nnx.Rngs(0))
  stacked = optim.param_labels(nnx.state(stage, nnx.Param))[STACK]
  single = optim.param_labels(nnx.state(stage.pair(0), nnx.Param))
  assert jax.tree.leaves(stacked) == jax.tree.leaves(single)
  s4 = nnx.to_pure_dict(stacked)["s4"]
  assert s4["layer"]["D"] == "no_decay" and s4["layer"]["output_linear"]["bias"] == "no_decay"
  assert s4["layer"]["kernel"]["log_dt"] == "ssm" and s4["layer"]["kernel"]["P"] == "ssm"
  assert s4["layer"]["kernel"]["C"] == "decay" and s4["layer"]["output_linear"]["kernel"] == "decay"


def test_optimizer_equals_one_adamw_per_group():
  cfg = _train_cfg()
  lr = optim.learning_rate_schedule(cfg, cfg.learning_rate)
  ssm_lr = optim.learning_rate_schedule(cfg, cfg.ssm_learning_rate)
  reference = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm),
      optax.multi_transform({"ssm": optax.adam(ssm_lr),
                             "decay": optax.adamw(lr, weight_decay=cfg.weight_decay),
                             "no_decay": optax.adam(lr)}, optim.param_labels))
  ours = optim.create_optimizer(cfg)

  @jax.jit  # one compiled loop body instead of hundreds of eager ops.
  def run(params):
    def body(i, carry):
      p_ours, s_ours, p_ref, s_ref = carry
      grads = jax.tree_util.tree_map(
          lambda x: jnp.sin((i + 1.0) * x + jnp.arange(x.size).reshape(x.shape)), p_ours)
      u, s_ours = ours.update(grads, s_ours, p_ours)
      u_ref, s_ref = reference.update(grads, s_ref, p_ref)
      return (optax.apply_updates(p_ours, u), s_ours, optax.apply_updates(p_ref, u_ref), s_ref)
    init = (params, ours.init(params), params, reference.init(params))
    p_ours, _, p_ref, _ = jax.lax.fori_loop(0, 6, body, init)
    return p_ours, p_ref

  p_ours, p_ref = run(_params())
  chex.assert_trees_all_close(p_ours, p_ref, atol=1e-7, rtol=1e-6)
  # The SSM group moved with its own (smaller) rate and without decay.
  assert not np.allclose(p_ours["block"]["kernel"]["log_dt"], -3.0)


def test_schedules():
  cos = optim.learning_rate_schedule(_train_cfg(warmup_steps=4, num_steps=14), 1.0)
  np.testing.assert_allclose([cos(0), cos(2), cos(4), cos(9), cos(14)], [0, 0.5, 1, 0.5, 0],
                             atol=1e-6)
  const = optim.learning_rate_schedule(_train_cfg(schedule="constant", warmup_steps=0), 0.3)
  np.testing.assert_allclose([const(0), const(1000)], [0.3, 0.3], rtol=1e-6)


def test_plateau_rule_reduces_after_patience():
  state = optim.PlateauState(math.inf, 0, 1.0)
  scales = []
  for bits in [5.0, 4.0, 4.0, 4.0, 4.0, 3.0]:
    state = optim.plateau_update(state, bits, factor=0.2, patience=2)
    scales.append(state.lr_scale)
  # 4.0 stalls for 3 evaluations: the third exceeds patience 2 and reduces the rate.
  np.testing.assert_allclose(scales, [1, 1, 1, 1, 0.2, 0.2])
  assert state.best_bits == 3.0 and state.bad_evals == 0


def test_metric_writer_checks_finiteness_and_writes_jsonl(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path))
  writer.write_scalars(3, {"train/bits_per_token": 5.5, "train/grad_norm": np.float32(0.25)})
  with pytest.raises(ValueError, match=r"step 4: train/grad_norm=nan"):
    writer.write_scalars(4, {"train/bits_per_token": 5.0, "train/grad_norm": float("nan")})
  writer.close()
  assert metrics_lib.read_metrics(str(tmp_path)) == [
      {"step": 3, "train/bits_per_token": 5.5, "train/grad_norm": 0.25}]
  assert list((tmp_path / "tensorboard").iterdir())  # a TensorBoard event file exists.


# ------------------------------------------------------------------------------------------------
# End-to-end runs of launch.py (subprocesses sharing a compilation cache).


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("xla_cache")


def _env(cache_dir, **extra):
  env = dict(os.environ)
  env.update({
      "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
      "JAX_PLATFORMS": "cpu",
      "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  })
  env.pop("XLA_FLAGS", None)
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _launch(workdir, cache_dir, *flags, driver=False, env=None):
  """Starts a training subprocess; returns the Popen (stdout+stderr to workdir/log.txt)."""
  os.makedirs(workdir, exist_ok=True)
  log = open(os.path.join(workdir, "log.txt"), "a", encoding="utf-8")
  program = ["-c", DRIVER] if driver else ["launch.py"]
  args = [sys.executable, *program, *SMALL_FLAGS, f"--workdir={workdir}", *flags]
  return subprocess.Popen(args, cwd=ROOT, env=env or _env(cache_dir), stdout=log,
                          stderr=subprocess.STDOUT)


def _finish(proc, workdir, timeout=240):
  code = proc.wait(timeout=timeout)
  return code, pathlib.Path(workdir, "log.txt").read_text(encoding="utf-8")


def _wait_for_step(proc, workdir, step, timeout=240):
  """Polls metrics.jsonl until a train event with `step` >= step is logged."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    events = metrics_lib.read_metrics(str(workdir))
    if any(e["step"] >= step and "train/nonfinite_skips" in e for e in events):
      return
    assert proc.poll() is None, _finish(proc, workdir)[1][-3000:]
    time.sleep(0.05)
  proc.kill()
  raise AssertionError(f"step {step} not reached in {timeout} s")


def _train_steps(workdir):
  """The step of every train event of metrics.jsonl, in file order."""
  return [e["step"] for e in metrics_lib.read_metrics(str(workdir)) if "train/nonfinite_skips" in e]


def _train_bits_by_step(workdir):
  """The last logged train/bits_per_token of every step (a resumed run re-logs some steps)."""
  return {e["step"]: e["train/bits_per_token"] for e in metrics_lib.read_metrics(str(workdir))
          if "train/bits_per_token" in e}


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, cache_dir):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  code, log = _finish(_launch(workdir, cache_dir, f"--config.train.num_steps={NUM_STEPS}",
                              f"--config.train.num_eval_samples={NUM_EVAL_SAMPLES}"),
                      workdir, timeout=600)
  assert code == 0, log[-3000:]
  return workdir


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(directory) -> list:
  """Every `Event` proto of the TensorBoard event files in `directory`, checksums verified.

  An event file is a sequence of TFRecords: uint64 length, masked CRC32C of the length bytes,
  the serialized Event, masked CRC32C of the data (all little-endian).
  """
  events = []
  for path in sorted(pathlib.Path(directory).glob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      header = data[offset:offset + 8]
      (length,) = struct.unpack("<Q", header)
      (header_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
      assert header_crc == _masked_crc(header), f"corrupt record header in {path}"
      record = data[offset + 12:offset + 12 + length]
      (record_crc,) = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])
      assert record_crc == _masked_crc(record), f"corrupt record in {path}"
      events.append(event_pb2.Event.FromString(record))
      offset += 16 + length
  return events


def test_metrics_jsonl_contents(uninterrupted_run):
  events = metrics_lib.read_metrics(str(uninterrupted_run))
  train_events = [e for e in events if "train/bits_per_token" in e]
  assert [e["step"] for e in train_events] == list(range(1, NUM_STEPS + 1))
  for name in ("train/bits_per_token", "train/tokens_per_second", "train/grad_norm",
               "train/learning_rate", "train/nonfinite_skips"):
    assert all(math.isfinite(e[name]) for e in train_events), name
  assert all(e["train/nonfinite_skips"] == 0 for e in train_events)
  assert all(e["train/tokens_per_second"] > 0 for e in train_events)
  # Warmup over 2 steps to the tiny config's 1e-3, then constant.
  np.testing.assert_allclose([e["train/learning_rate"] for e in train_events[:3]],
                             [0.0, 5e-4, 1e-3], rtol=1e-6)
  (final_eval,) = [e for e in events if "eval/bits_per_token" in e]
  assert final_eval["step"] == NUM_STEPS
  left, right = final_eval["eval/bits_per_token_left"], final_eval["eval/bits_per_token_right"]
  np.testing.assert_allclose(final_eval["eval/bits_per_token"], (left + right) / 2, rtol=1e-5)
  np.testing.assert_allclose(final_eval["eval/bits_per_frame"], left + right, rtol=1e-5)
  # 12 steps of a 64-token model leave it near a uniform guess over 2**8 levels (8 bits; measured
  # 8.12-8.29): a value in nats (~5.6), summed over channels (~16) or per frame would fail.
  assert 7.5 < final_eval["eval/bits_per_token"] < 8.5, final_eval
  # Checkpoints: every 4 steps and the end; the last K=2 (tiny config) plus the best are kept.
  steps = checkpoint_lib.Checkpointer(str(uninterrupted_run), create=False).all_steps()
  assert sorted(steps)[-2:] == [8, 12] and NUM_STEPS in steps


def test_eval_writes_audio_and_spectrogram_summaries(uninterrupted_run):
  values = {}  # tag -> (step, Summary.Value)
  for event in read_events(uninterrupted_run / "tensorboard"):
    for value in event.summary.value:
      values[value.tag] = (event.step, value)
  # Scalars are in the same file.
  step, bits = values["train/bits_per_token"]
  assert step == NUM_STEPS and math.isfinite(bits.simple_value)
  assert "eval/bits_per_token_right" in values

  from sashimi_jax import audio_summaries  # pylint: disable=g-import-not-at-top  (slow import)
  sample_rate, frames = 16000, 32  # the tiny config's rate; clips are min(sample_len, 1 s).
  expected_image = audio_summaries.spectrogram_image(np.zeros((frames, 2), np.float32),
                                                     sample_rate).shape  # (H, W, 3)
  clips = []
  for i in range(NUM_EVAL_SAMPLES):
    step, audio = values[f"samples/sample_{i}/audio"]
    assert step == NUM_STEPS  # written at the (final) evaluation.
    assert audio.audio.sample_rate == sample_rate
    assert audio.audio.num_channels == 2 and audio.audio.length_frames == frames
    assert audio.audio.content_type == "audio/wav"
    clip, rate = sf.read(io.BytesIO(audio.audio.encoded_audio_string), dtype="float32")
    assert rate == sample_rate
    chex.assert_shape(clip, (frames, 2))
    assert np.all(np.abs(clip) <= 1.0) and np.std(clip) > 0  # decoded tokens, not silence.
    clips.append(clip)

    step, image = values[f"samples/sample_{i}/spectrogram"]
    assert step == NUM_STEPS
    assert (image.image.height, image.image.width, image.image.colorspace) == expected_image
    assert image.image.encoded_image_string.startswith(b"\x89PNG")
  assert f"samples/sample_{NUM_EVAL_SAMPLES}/audio" not in values  # exactly num_eval_samples.
  assert not np.array_equal(clips[0], clips[1])  # each sample has its own key.


def test_sigkill_then_resume_equals_uninterrupted(uninterrupted_run, tmp_path, cache_dir):
  workdir = tmp_path / "killed"
  env = _env(cache_dir, TEST_BATCH_DELAY_SECONDS=0.4)
  proc = _launch(workdir, cache_dir, f"--config.train.num_steps={NUM_STEPS}", driver=True,
                 env=env)
  _wait_for_step(proc, workdir, 6)  # past the step-4 checkpoint, before the step-8 one.
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  saved = checkpoint_lib.Checkpointer(str(workdir), create=False).all_steps()
  assert saved == [4], saved
  code, log = _finish(_launch(workdir, cache_dir, f"--config.train.num_steps={NUM_STEPS}"),
                      workdir)
  assert code == 0, log[-3000:]
  expected = _train_bits_by_step(uninterrupted_run)
  resumed = _train_bits_by_step(workdir)
  assert sorted(resumed) == list(range(1, NUM_STEPS + 1))
  # Same batches, same dropout keys, same compiled program on CPU: identical losses.
  np.testing.assert_array_equal([resumed[s] for s in sorted(resumed)],
                                [expected[s] for s in sorted(expected)])
  # Steps 5-6 of the killed run were dropped when the rerun restored step 4: each step once.
  assert _train_steps(workdir) == list(range(1, NUM_STEPS + 1))
  purges = [e.step for e in read_events(workdir / "tensorboard") if e.HasField("session_log")]
  assert 5 in purges  # TensorBoard hides the killed run's curve after step 4.


def test_resume_with_incompatible_config_names_the_fields(uninterrupted_run, tmp_path,
                                                          cache_dir):
  code, log = _finish(_launch(uninterrupted_run, cache_dir, "--config.model.d_model=16",
                              "--config.dataset.bits=9", f"--config.train.num_steps={NUM_STEPS}"),
                      uninterrupted_run)
  assert code != 0
  assert "Cannot resume" in log and "model.d_model: checkpoint has 8, config has 16" in log
  assert "dataset.bits: checkpoint has 8, config has 9" in log


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, cache_dir):
  workdir = tmp_path / "preempted"
  env = _env(cache_dir, TEST_BATCH_DELAY_SECONDS=0.4)
  proc = _launch(workdir, cache_dir, "--config.train.num_steps=1000",
                 "--config.train.checkpoint_every_steps=1000", driver=True, env=env)
  _wait_for_step(proc, workdir, 3)
  proc.send_signal(signal.SIGTERM)
  code, log = _finish(proc, workdir)
  assert code == 0, log[-3000:]
  assert "Preempted (SIGTERM): saved checkpoint at step" in log
  last_logged = max(e["step"] for e in metrics_lib.read_metrics(str(workdir)))
  saved = checkpoint_lib.Checkpointer(str(workdir), create=False).all_steps()
  assert saved == [last_logged] and 3 <= last_logged < 1000


def test_nonfinite_steps_are_skipped_logged_and_stop_the_run(tmp_path, cache_dir):
  workdir = tmp_path / "nonfinite"
  # Train batches 3, 5, 6, 7 get impossible targets: step 3 is skipped alone, then 5-7 are three
  # in a row, which reaches max_consecutive_nonfinite=3.
  env = _env(cache_dir, TEST_POISON_CALLS="3,5,6,7")
  code, log = _finish(_launch(workdir, cache_dir, f"--config.train.num_steps={NUM_STEPS}",
                              "--config.train.max_consecutive_nonfinite=3", driver=True, env=env),
                      workdir)
  assert code != 0
  assert "3 consecutive train steps (up to step 7)" in log
  assert "train.max_consecutive_nonfinite=3" in log
  events = {e["step"]: e for e in metrics_lib.read_metrics(str(workdir))}
  assert [events[s]["train/nonfinite_skips"] for s in range(1, 7)] == [0, 0, 1, 1, 2, 3]
  assert "train/bits_per_token" not in events[3]  # a skipped step has no loss to report ...
  assert math.isfinite(events[4]["train/bits_per_token"])  # ... and training went on.
  # Only the finite step-4 checkpoint exists; it restores to finite parameters.
  config, model, step = checkpoint_lib.load_for_inference(str(workdir))
  assert step == 4 and config.train.max_consecutive_nonfinite == 3
  from flax import nnx  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
  assert leaves and all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


def test_damaged_latest_checkpoint_resumes_from_the_previous(uninterrupted_run, tmp_path,
                                                             cache_dir):
  workdir = tmp_path / "damaged"
  shutil.copytree(uninterrupted_run, workdir)
  (workdir / "log.txt").unlink()
  assert checkpoint_lib.Checkpointer(str(workdir), create=False).all_steps()[-2:] == [8, 12]
  data_file = sorted((workdir / "checkpoints" / "12" / "state" / "d").iterdir())[0]
  data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
  # sample.py on the damaged step: one line naming the intact steps.
  sample = subprocess.run(
      [sys.executable, "sample.py", f"--workdir={workdir}", "--step=12", "--num_samples=0"],
      cwd=ROOT, env=_env(cache_dir), capture_output=True, text=True, timeout=300)
  assert sample.returncode != 0
  lines = [l for l in (sample.stdout + sample.stderr).splitlines() if l.strip()]
  assert len(lines) == 1 and "step 12" in lines[0] and "intact steps: [8]" in lines[0], lines
  # Training resumes from step 8 and reproduces steps 9-12 exactly.
  code, log = _finish(_launch(workdir, cache_dir, f"--config.train.num_steps={NUM_STEPS}"),
                      workdir)
  assert code == 0, log[-3000:]
  damaged_lines = [l for l in log.splitlines() if "step 12 is damaged" in l]
  assert len(damaged_lines) == 1 and "Traceback" not in log, log[-3000:]
  assert "Resumed from" in log and "step 8" in log
  expected = _train_bits_by_step(uninterrupted_run)
  assert _train_steps(workdir) == list(range(1, NUM_STEPS + 1))
  np.testing.assert_array_equal([_train_bits_by_step(workdir)[s] for s in range(1, 13)],
                                [expected[s] for s in range(1, 13)])
  assert (workdir / "checkpoints" / "12.damaged" / "DAMAGE.txt").exists()  # kept, not deleted.
  assert 12 in checkpoint_lib.Checkpointer(str(workdir), create=False).all_steps()


def test_a_save_on_a_full_disk_stops_in_one_line_and_a_rerun_resumes(uninterrupted_run,
                                                                     tmp_path, cache_dir):
  workdir = tmp_path / "full_disk"
  env = _env(cache_dir, TEST_FSIZE_LIMIT_AT_SAVE=8)
  code, log = _finish(_launch(workdir, cache_dir, f"--config.train.num_steps={NUM_STEPS}",
                              driver=True, env=env), workdir)
  assert code != 0
  errors = [l for l in log.splitlines() if "Could not save checkpoint step 8" in l]
  assert len(errors) == 1 and "file size limit exceeded" in errors[0], log[-3000:]
  assert "Traceback" not in log, log[-3000:]
  assert checkpoint_lib.Checkpointer(str(workdir), create=False).all_steps() == [4]
  code, log = _finish(_launch(workdir, cache_dir, f"--config.train.num_steps={NUM_STEPS}"),
                      workdir)
  assert code == 0, log[-3000:]
  expected = _train_bits_by_step(uninterrupted_run)
  assert _train_steps(workdir) == list(range(1, NUM_STEPS + 1))
  np.testing.assert_array_equal([_train_bits_by_step(workdir)[s] for s in range(1, 13)],
                                [expected[s] for s in range(1, 13)])


def test_ctrl_c_saves_and_stops_like_sigterm(tmp_path, cache_dir):
  workdir = tmp_path / "ctrl_c"
  env = _env(cache_dir, TEST_BATCH_DELAY_SECONDS=0.4)
  proc = _launch(workdir, cache_dir, "--config.train.num_steps=1000",
                 "--config.train.checkpoint_every_steps=1000", driver=True, env=env)
  _wait_for_step(proc, workdir, 3)
  proc.send_signal(signal.SIGINT)
  code, log = _finish(proc, workdir)
  assert code == 0, log[-3000:]
  assert "Interrupted (SIGINT): saved checkpoint at step" in log and "Traceback" not in log
  last_logged = max(_train_steps(workdir))
  saved = checkpoint_lib.Checkpointer(str(workdir), create=False).all_steps()
  assert saved == [last_logged] and 3 <= last_logged < 1000


def test_a_second_ctrl_c_stops_at_once_leaving_only_complete_checkpoints(tmp_path, cache_dir):
  workdir = tmp_path / "ctrl_c_twice"
  # Saves from step 4 on wait 30 s first, so the second Ctrl-C surely lands inside a run that is
  # saving (with a bare batch delay, a loaded machine could finish the save and exit before the
  # test sent it: exit 0, a flaky failure).
  env = _env(cache_dir, TEST_BATCH_DELAY_SECONDS=0.4, TEST_SAVE_DELAY_FROM_STEP=4,
             TEST_SAVE_DELAY_SECONDS=30)
  proc = _launch(workdir, cache_dir, "--config.train.num_steps=1000",
                 "--config.train.checkpoint_every_steps=2", driver=True, env=env)
  _wait_for_step(proc, workdir, 3)
  proc.send_signal(signal.SIGINT)
  deadline = time.monotonic() + 60
  while "SIGINT: saving a checkpoint" not in (workdir / "log.txt").read_text(encoding="utf-8"):
    assert time.monotonic() < deadline and proc.poll() is None
    time.sleep(0.01)
  proc.send_signal(signal.SIGINT)  # while the step's batch or its save is waited for.
  code, log = _finish(proc, workdir, timeout=25)  # well before the 30 s delayed save ends.
  assert code != 0 and "Traceback" not in log, log[-3000:]
  assert len([l for l in log.splitlines() if "Stopped at once by a second Ctrl-C" in l]) == 1
  ckpt = checkpoint_lib.Checkpointer(str(workdir), create=False)
  assert ckpt.all_steps() and all(ckpt.damage(s) is None for s in ckpt.all_steps())


def test_a_second_ctrl_c_swallowed_by_a_library_still_stops_the_run():
  """The second SIGINT's KeyboardInterrupt may be dropped (a finalizer, a callback that catches
  everything); the flag it sets makes the next check between steps raise it again."""
  from sashimi_jax import train  # pylint: disable=g-import-not-at-top
  before = signal.getsignal(signal.SIGINT)
  with train.PreemptionSync() as sync:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)  # the handler runs in the main thread at the next bytecode.
    assert sync.requested and sync.signal_name == "SIGINT"
    sync.raise_if_interrupted_twice()  # one Ctrl-C: save and stop after the step, no raise.
    try:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(5)
      raise AssertionError("the second SIGINT did not interrupt")
    except KeyboardInterrupt:
      pass  # what a library that swallows it does.
    with pytest.raises(KeyboardInterrupt):
      sync.raise_if_interrupted_twice()
  assert signal.getsignal(signal.SIGINT) is before
