"""Tests for sample.py and sashimi_jax.audio_summaries: files, channel order, prompts, errors."""

import functools
import json
import pathlib
import runpy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from sashimi_jax import audio_summaries
from sashimi_jax import prompts
from sashimi_jax import sample_job
from sashimi_jax import sampling
from sashimi_jax.data import audio as audio_lib
from sashimi_jax.data import layout
from sashimi_jax.data import pipeline
from sashimi_jax.data import quantize
from sashimi_jax.data import stereo

_ROOT = pathlib.Path(__file__).resolve().parents[1]

_LOUD = 240  # a token far from the zero token: decodes to a loud sample.


class ChannelStub(nnx.Module):
  """An exact stand-in for a model trained on clips whose right channel is silent.

  At every stream position of a right-channel sample it puts (almost) all probability on the
  zero token, at every left position on `_LOUD`, through the same `step`/`prefill` interface as
  `SaShiMiLM`. A wrong de-interleaving would leak loud samples into the right channel.
  """

  def __init__(self, num_frames: int, strategy: str):
    self.vocab_size = 256
    self.output_dim = 256
    self.channel = nnx.Param(jnp.asarray(stereo.channel_of_position(num_frames, strategy)))

  def _outputs(self, positions):
    channel = self.channel[...][jnp.minimum(positions, self.channel.shape[0] - 1)]
    favourite = jnp.where(channel == 1, quantize.zero_token(8), _LOUD)
    return 30.0 * jax.nn.one_hot(favourite, 256)

  def setup_recurrence(self):
    return {}

  def init_state(self, batch_size):
    del batch_size
    return jnp.zeros((), jnp.int32)

  def step(self, rec, position, tokens):
    del rec
    outputs = jnp.broadcast_to(self._outputs(position), (tokens.shape[0], 256))
    return outputs, position + 1

  def prefill(self, rec, tokens):
    del rec
    batch, length = tokens.shape
    outputs = jnp.broadcast_to(self._outputs(jnp.arange(length)), (batch, length, 256))
    return outputs, jnp.asarray(length, jnp.int32)


def stereo_config(strategy, sample_len=48):
  config = runpy.run_path(str(_ROOT / "configs" / "stereo_temporal.py"))["get_config"]("tiny")
  config.dataset.interleaving_strategy = strategy
  config.dataset.sample_len = sample_len
  return config


@pytest.mark.parametrize("strategy", ["temporal", "blocking", "blocking-5"])
def test_stereo_files_have_two_channels_in_order(tmp_path, strategy):
  frames = 48
  config = stereo_config(strategy, frames)
  model = ChannelStub(frames, strategy)
  result = sample_job.run_job(model, config, output_dir=str(tmp_path), job={"s": strategy},
                              num_samples=3, per_device_batch_size=2, clip_frames=frames,
                              chunk_tokens=40, spectrograms=True)
  assert (result.generated, result.written, result.skipped) == (3, 3, 0)
  for record in result.records:
    audio, rate = sf.read(tmp_path / record["file"], dtype="float32")
    assert rate == config.dataset.sample_rate
    assert audio.shape == (frames, 2)
    assert np.all(np.abs(audio[:, 0]) > 0.3), "left channel should be loud"
    assert np.all(np.abs(audio[:, 1]) < 0.01), "right channel should be silent"
    assert (tmp_path / record["spectrogram"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  saved = json.loads((tmp_path / "samples.json").read_text())
  likelihoods = [r["log_likelihood_nats"] for r in saved["samples"]]
  assert likelihoods == sorted(likelihoods, reverse=True)
  assert sorted(r["file"] for r in saved["samples"]) == [f"sample_{i:03d}.wav" for i in range(3)]
  assert saved["s"] == strategy
  assert saved["samples_stereo_metrics"]["clips"] == 3
  assert 0.0 < saved["data_stereo_metrics"]["correlation"] <= 1.0  # held-out demo music
  for record in saved["samples"]:
    assert record["stereo"]["level_difference_db_mean"] == pytest.approx(60.0)
    assert record["stereo"]["mono_collapse"] is False
  assert not list(tmp_path.rglob(".tmp-*"))


def _write_stereo_prompt(path, frames, rate):
  t = np.arange(frames) / rate
  audio = np.stack([0.8 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 97 * t)], -1)
  sf.write(path, audio.astype(np.float32), rate, subtype="FLOAT")
  return audio


@pytest.mark.parametrize("strategy,prefix_tokens,stream_tokens", [
    ("temporal", 20, 20), ("blocking-4", 18, 22), ("blocking", 10, 58)])
def test_prompt_tokens_follow_the_full_stream(tmp_path, strategy, prefix_tokens, stream_tokens):
  # 10 prompt frames of a 48-frame clip: temporal covers the first 20 stream positions;
  # blocking-4 the blocks [0, 8), the left samples of frames 8, 9, then (after left frames 10,
  # 11) their right samples; blocking the left channel, then (after 38 generated left samples)
  # the right channel's first 10 samples. -1 marks the positions to generate.
  config = stereo_config(strategy)
  rate = config.dataset.sample_rate
  prompt_audio = _write_stereo_prompt(tmp_path / "prompt.wav", 10, rate)
  [(_, loaded)] = prompts.load_prompts([str(tmp_path / "prompt.wav")], config, frames=10)
  assert loaded.shape == (10, 2)
  tokens = prompts.prompt_tokens(loaded, config, total_frames=48)
  assert tokens.shape == (stream_tokens,)
  assert np.all(tokens[:prefix_tokens] >= 0) and (prefix_tokens == stream_tokens
                                                  or tokens[prefix_tokens] == -1)
  # The given positions hold exactly the tokens of a 48-frame clip that starts with the prompt.
  # The rest of the clip spans the prompt's range, so the clip's joint min-max scaling (hence its
  # quantisation) is the prompt's own.
  clip = np.concatenate([prompt_audio, np.zeros((38, 2))]).astype(np.float32)
  clip[10:, 0] = prompt_audio.min()
  clip[10:, 1] = prompt_audio.max()
  full = pipeline.encode_clip(clip, config.dataset)
  given = tokens >= 0
  assert given.sum() == 20  # both channels of all 10 prompt frames: none dropped
  np.testing.assert_array_equal(tokens[given], full[:stream_tokens][given])


def _clips(output_dir, result):
  return [sf.read(output_dir / r["file"], dtype="float32")[0] for r in result.records]


def _run_with_stereo_prompt(tmp_path, strategy, frames, **job_options):
  """Two clips of `frames` frames from the ChannelStub, continuing a 10-frame stereo prompt.

  Returns:
    (config, the loaded prompt clip (10, 2), its tokens, the job's result, output folder).
  """
  config = stereo_config(strategy, frames)
  _write_stereo_prompt(tmp_path / "prompt.wav", 10, config.dataset.sample_rate)
  [(_, clip)] = prompts.load_prompts([str(tmp_path / "prompt.wav")], config, frames=10)
  prompt = prompts.prompt_tokens(clip, config, frames)
  out = tmp_path / "out"
  result = sample_job.run_job(ChannelStub(frames, strategy), config, output_dir=str(out), job={},
                              num_samples=2, per_device_batch_size=2, clip_frames=frames,
                              prompts=prompt[None], prompt_names=["prompt.wav"], **job_options)
  return config, clip, prompt, result, out


@pytest.mark.parametrize("strategy", ["blocking", "blocking-4"])
def test_prompt_right_channel_reaches_the_clip(tmp_path, strategy):
  # The stub would put silence in the right channel; the prompt's right channel must win.
  frames = 48
  config, clip, _, result, out = _run_with_stereo_prompt(tmp_path, strategy, frames,
                                                         chunk_tokens=7)
  flat = pipeline.encode_clip(clip, config.dataset)[
      stereo.inverse_permutation(10, strategy)].reshape(10, 2)
  expected_prompt = pipeline.decode_tokens(flat.reshape(-1), stereo_config("temporal").dataset)
  for audio in _clips(out, result):
    assert audio.shape == (frames, 2)
    np.testing.assert_array_equal(audio[:10], expected_prompt)
    assert np.abs(audio[:10, 1]).max() > 0.1  # the prompt's right channel is not silent
    assert np.all(np.abs(audio[10:, 0]) > 0.3) and np.all(np.abs(audio[10:, 1]) < 0.01)


@pytest.mark.parametrize("strategy,requested,generated", [
    ("temporal", 30, 30), ("blocking", 30, 48), ("blocking", 48, 48), ("blocking-5", 30, 30),
    ("blocking-5", 31, 35), ("blocking-5", 48, 48), ("blocking-5", 49, 50)])
def test_generated_frames_follow_the_training_layout(strategy, requested, generated):
  # Generated streams are laid out like a sample_len = 48 clip (or whole blocks), then cut.
  assert layout.generated_frames(requested, is_stereo=True, strategy=strategy,
                                 sample_len=48) == generated
  assert layout.generated_frames(requested, is_stereo=False, strategy=strategy,
                                 sample_len=48) == requested


@pytest.mark.parametrize("strategy,frames", [("blocking", 30), ("blocking-5", 31),
                                             ("blocking-5", 33)])
def test_odd_lengths_keep_the_channels_apart(tmp_path, strategy, frames):
  # The stub knows the 48-frame training layout; a length other than sample_len must still put
  # its silent samples in the right channel (sample.py's job and the TensorBoard summaries).
  config = stereo_config(strategy, 48)
  model = ChannelStub(48, strategy)
  result = sample_job.run_job(model, config, output_dir=str(tmp_path), job={}, num_samples=2,
                              per_device_batch_size=2, clip_frames=frames)
  summary = audio_summaries.summary_samples(model, config, jax.random.key(0), num_samples=1,
                                            num_frames=frames)
  for audio in [*_clips(tmp_path, result), summary["sample_0/audio"][0]]:
    assert audio.shape == (frames, 2)
    assert np.all(np.abs(audio[:, 0]) > 0.3) and np.all(np.abs(audio[:, 1]) < 0.01)


def test_blocking_longer_than_a_clip_is_a_clear_error(tmp_path):
  config = stereo_config("blocking", 48)
  with pytest.raises(ValueError, match=r"'blocking' model generates one training clip .*48"):
    sample_job.run_job(ChannelStub(48, "blocking"), config, output_dir=str(tmp_path), job={},
                       num_samples=1, per_device_batch_size=1, clip_frames=49)


def test_dplr_prompt_limit_is_refused_before_compiling(tmp_path, monkeypatch):
  # A prompt of exactly sample_len frames fills the whole 2 * sample_len stream: DPLR prefill
  # cannot take it. prompt_tokens refuses it; nothing may be compiled on the way.
  config = stereo_config("temporal", 48)
  config.model.layer = "s4"
  rate = config.dataset.sample_rate
  _write_stereo_prompt(tmp_path / "prompt.wav", 48, rate)
  [(_, loaded)] = prompts.load_prompts([str(tmp_path / "prompt.wav")], config, frames=48)
  monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before refusing"))
  with pytest.raises(ValueError, match=r"DPLR \('s4'\) model's prefill takes fewer than .* 96"):
    prompts.prompt_tokens(loaded, config, total_frames=64)
  config.model.layer = "s4d"  # S4D kernels have any length: the same prompt is accepted.
  assert prompts.prompt_tokens(loaded, config, total_frames=64).shape == (96,)


def test_prompted_generation_continues_the_prompt(tmp_path):
  config, _, prompt, result, out = _run_with_stereo_prompt(tmp_path, "temporal", 48)
  expected_prompt = pipeline.decode_tokens(prompt, config.dataset)  # (10, 2)
  for record in result.records:
    assert record["prompt"] == "prompt.wav"
    audio, _ = sf.read(out / record["file"], dtype="float32")
    np.testing.assert_array_equal(audio[:10], expected_prompt)
    assert np.all(np.abs(audio[10:, 0]) > 0.3) and np.all(np.abs(audio[10:, 1]) < 0.01)


def test_mono_prompt_for_a_stereo_model_is_duplicated_or_refused(tmp_path):
  config = stereo_config("temporal")
  rate = config.dataset.sample_rate
  mono = 0.5 * np.sin(np.arange(100) / 5.0).astype(np.float32)
  sf.write(tmp_path / "mono.wav", mono, rate, subtype="FLOAT")
  [(_, clip)] = prompts.load_prompts([str(tmp_path / "mono.wav")], config, frames=20)
  assert clip.shape == (20, 2)
  np.testing.assert_array_equal(clip[:, 0], mono[:20])
  np.testing.assert_array_equal(clip[:, 1], mono[:20])
  with pytest.raises(ValueError, match=r"--prompt .*mono\.wav is mono but the model is stereo; "
                     r"pass --prompt_mono=duplicate"):
    prompts.load_prompts([str(tmp_path / "mono.wav")], config, frames=20, mono="error")


def test_prompt_folder_and_list_skip_bad_files_and_name_the_prompt_of_each_clip(tmp_path, caplog):
  frames, strategy = 48, "temporal"
  config = stereo_config(strategy, frames)
  rate = config.dataset.sample_rate
  folder = tmp_path / "prompts"
  folder.mkdir()
  _write_stereo_prompt(folder / "a2.wav", 12, rate)
  _write_stereo_prompt(folder / "a10.wav", 8, rate)   # the shortest: every prompt cut to it.
  (folder / "broken.wav").write_bytes(b"RIFF\x00\x00not audio at all")
  (folder / "notes.md").write_text("not a prompt")
  paths = prompts.prompt_paths(str(folder))
  assert [pathlib.Path(p).name for p in paths] == ["a2.wav", "a10.wav", "broken.wav"]
  listed = tmp_path / "prompts.txt"
  listed.write_text("# prompts\nprompts/a10.wav\n\nprompts/a2.wav\n")
  assert [pathlib.Path(p).name for p in prompts.prompt_paths(str(listed))] == [
      "a10.wav", "a2.wav"]
  with caplog.at_level("WARNING"):
    loaded = prompts.load_prompts(paths, config, frames=10)
  assert "broken.wav" in caplog.text and "Skipping" in caplog.text
  assert [pathlib.Path(p).name for p, _ in loaded] == ["a2.wav", "a10.wav"]
  assert [c.shape for _, c in loaded] == [(10, 2), (8, 2)]
  tokens = prompts.common_prompt_tokens(
      [prompts.prompt_tokens(c, config, frames) for _, c in loaded])
  assert tokens.shape == (2, 16)
  out = tmp_path / "out"
  result = sample_job.run_job(ChannelStub(frames, strategy), config, output_dir=str(out), job={},
                              num_samples=5, per_device_batch_size=4, clip_frames=frames,
                              prompts=tokens, prompt_names=[p for p, _ in loaded])
  by_index = {r["index"]: r for r in result.records}
  assert [pathlib.Path(by_index[i]["prompt"]).name for i in range(5)] == [
      "a2.wav", "a10.wav", "a2.wav", "a10.wav", "a2.wav"]
  for i in range(5):
    audio, _ = sf.read(out / by_index[i]["file"], dtype="float32")
    np.testing.assert_array_equal(audio[:8], pipeline.decode_tokens(tokens[i % 2],
                                                                    config.dataset))
  with pytest.raises(audio_lib.BadAudioError, match=r"--prompt .*broken\.wav"):
    prompts.load_prompts([str(folder / "broken.wav")], config, frames=10)
  with pytest.raises(FileNotFoundError, match=r"--prompt .*missing\.wav does not exist"):
    prompts.prompt_paths(str(tmp_path / "missing.wav"))


def test_default_prompt_length_fits_the_model():
  config = stereo_config("temporal", sample_len=48)
  config.model.pool = [4, 4]
  assert prompts.max_prompt_frames(config) == 32
  assert prompts.default_prompt_frames(config, clip_frames=40) == 20
  assert prompts.default_prompt_frames(config, clip_frames=400) == 32


def test_rerun_skips_complete_clips_and_other_arguments_are_refused(tmp_path):
  frames, strategy = 24, "temporal"
  config = stereo_config(strategy, frames)
  model = ChannelStub(frames, strategy)
  run = functools.partial(sample_job.run_job, model, config, output_dir=str(tmp_path),
                          per_device_batch_size=2, clip_frames=frames)
  first = run(job={"seed": 0}, num_samples=3)
  assert (first.generated, first.skipped) == (3, 0)
  (tmp_path / "records" / "sample_001.json").unlink()  # as if killed before clip 1's record.
  (tmp_path / ".tmp-123-sample_004.wav").write_bytes(b"partial")
  again = run(job={"seed": 0}, num_samples=3)
  assert (again.generated, again.skipped) == (1, 2)
  assert not list(tmp_path.rglob(".tmp-*"))
  assert sorted(r["index"] for r in again.records) == [0, 1, 2]
  with pytest.raises(ValueError, match=r"holds a job with other arguments \(seed: 0 there, 1 "
                     r"now\); use a new --output_dir"):
    run(job={"seed": 1}, num_samples=3)
  stale = tmp_path / "stale"
  stale.mkdir()
  (stale / "sample_000.wav").write_bytes(b"old")
  with pytest.raises(ValueError, match=r"holds samples of an unknown job \(no job.json\)"):
    sample_job.run_job(model, config, output_dir=str(stale), job={}, num_samples=1,
                       per_device_batch_size=1, clip_frames=frames)


def test_a_job_computes_the_recurrence_constants_once(tmp_path, monkeypatch):
  # Per batch they would be computed again (a DPLR model's: a matrix power and a solve).
  frames, strategy = 24, "temporal"
  calls = []
  setup = sampling._setup_recurrence  # pylint: disable=protected-access

  def counted(*args, **kwargs):
    calls.append(1)
    return setup(*args, **kwargs)

  monkeypatch.setattr(sampling, "_setup_recurrence", counted)
  result = sample_job.run_job(ChannelStub(frames, strategy), stereo_config(strategy, frames),
                              output_dir=str(tmp_path), job={}, num_samples=5,
                              per_device_batch_size=2, clip_frames=frames)
  assert result.generated == 5  # three batches of 2
  assert len(calls) == 1


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  # The real command line: one line naming the problem, non-zero exit, no traceback.
  done = subprocess.run([sys.executable, str(_ROOT / "sample.py"), f"--workdir={tmp_path}"],
                        capture_output=True, text=True, cwd=_ROOT, timeout=120, check=False)
  assert done.returncode != 0
  assert "sample.py: error: No checkpoints" in done.stderr
  assert "Traceback" not in done.stderr
  # --verbosity=1 keeps the traceback (as launch.py does), since a caught error may be a bug.
  verbose = subprocess.run([sys.executable, str(_ROOT / "sample.py"), f"--workdir={tmp_path}",
                            "--verbosity=1"], capture_output=True, text=True, cwd=_ROOT,
                           timeout=120, check=False)
  assert verbose.returncode != 0
  assert "Traceback" in verbose.stderr and "load_for_inference" in verbose.stderr
  assert verbose.stderr.rstrip().endswith(done.stderr.rstrip().splitlines()[-1])


def test_bad_flag_value_is_one_line(tmp_path):
  done = subprocess.run([sys.executable, str(_ROOT / "sample.py"), f"--workdir={tmp_path}",
                         "--num_samples=abc"], capture_output=True, text=True, cwd=_ROOT,
                        timeout=120, check=False)
  assert done.returncode == 1
  assert done.stderr.strip() == ("sample.py: error: flag --num_samples=abc: invalid literal for "
                                 "int() with base 10: 'abc'"), done.stderr


def test_summary_samples_for_tensorboard():
  frames = 24
  config = stereo_config("blocking", frames)
  summary = audio_summaries.summary_samples(ChannelStub(frames, "blocking"), config,
                                            jax.random.key(0), num_samples=2, num_frames=frames)
  assert sorted(k for k in summary if k.startswith("sample_")) == [
      "sample_0/audio", "sample_0/spectrogram", "sample_1/audio", "sample_1/spectrogram"]
  # Stereo metrics of the samples (a silent right channel: correlation 0, left 60 dB louder)
  # beside those of held-out demo music.
  assert summary["stereo/correlation"] == 0.0
  assert summary["stereo/level_difference_db_mean"] == pytest.approx(60.0)
  assert summary["stereo_data/level_difference_db_mean"] < 20.0
  assert 0.0 < summary["stereo_data/correlation"] <= 1.0
  audio, rate = summary["sample_1/audio"]
  assert rate == config.dataset.sample_rate and audio.shape == (frames, 2)
  assert np.all(np.abs(audio[:, 1]) < 0.01) and np.all(np.abs(audio[:, 0]) > 0.3)
  image = summary["sample_0/spectrogram"]
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
  assert image.std() > 0  # not a blank picture
