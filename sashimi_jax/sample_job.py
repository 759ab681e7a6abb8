"""A batch sampling job: clips 0..N-1 over every device and host, resumable, written atomically.

Clip i is a function of (checkpoint, job arguments, i) only: its randomness is
`fold_in(key(seed), i)` (see `sampling`) and it continues prompt `i mod n_prompts`. So the clips
do not depend on the batch size, the device count or the host count, and a job can stop at any
point and be continued.

Output folder:
  job.json                  the job's arguments; a rerun with other arguments is an error.
  sample_NNN.wav (+ .png)   clip NNN (float32 WAV at the training rate, or as `output_options`
                            say: rate, wav/flac, subtype, loudness; see audio_output).
  records/sample_NNN.json   clip NNN's record, written LAST: a clip is complete iff it exists.
  samples.json              every record, most likely first (written when the job completes).
Every file is written under a temporary name (`.tmp-*`) and renamed, so a killed job never
leaves a partial file under a final name; a rerun deletes stale temporaries and generates only
the clips without a record.

Several processes: every process runs the same job; each batch's rows are split over all
devices of all hosts, and each host writes the clips its devices generated. The output folder
must be shared by the hosts (NFS, a mounted bucket); process 0 validates it and writes job.json
and samples.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import jax
import numpy as np
import tqdm

from sashimi_jax import audio_output
from sashimi_jax import config as config_lib
from sashimi_jax import cpu_devices
from sashimi_jax import audio_summaries
from sashimi_jax import distributed
from sashimi_jax import prompts
from sashimi_jax import sampling
from sashimi_jax import sharding
from sashimi_jax import stereo_metrics
from sashimi_jax.data import layout
from sashimi_jax.data import pipeline
from sashimi_jax.data import stereo

JOB_FILE = "job.json"
SAMPLES_FILE = "samples.json"
RECORDS_DIR = "records"
TEMP_PREFIX = ".tmp-"


def clip_name(index: int) -> str:
  return f"sample_{index:03d}"


# ------------------------------------------------------------------------------------------------
# The output folder.


def atomic_write(path: str, write: Callable[[str], None]) -> None:
  """Calls `write(temporary path)` in `path`'s folder, then renames it to `path`."""
  folder, name = os.path.split(path)
  temporary = os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-{name}")
  try:
    write(temporary)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def atomic_write_json(path: str, value: Any) -> None:
  def write(temporary):
    with open(temporary, "w", encoding="utf-8") as f:
      json.dump(value, f, indent=2)
  atomic_write(path, write)


def _describe_difference(saved: dict, job: dict) -> str:
  names = sorted(k for k in set(saved) | set(job) if saved.get(k) != job.get(k))
  return ", ".join(f"{k}: {saved.get(k, '<missing>')!r} there, {job.get(k, '<missing>')!r} now"
                   for k in names)


def check_output_dir(output_dir: str, job: dict) -> Optional[str]:
  """Why `output_dir` cannot take this job (None if it can): it holds another job's files."""
  path = os.path.join(output_dir, JOB_FILE)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    if saved != job:
      return (f"--output_dir {output_dir} holds a job with other arguments "
              f"({_describe_difference(saved, job)}); use a new --output_dir or delete it.")
    return None
  if os.path.isdir(output_dir):
    ours = [n for n in os.listdir(output_dir)
            if n.startswith("sample_") or n in (SAMPLES_FILE, RECORDS_DIR)]
    if ours:
      return (f"--output_dir {output_dir} holds samples of an unknown job (no {JOB_FILE}), e.g. "
              f"{sorted(ours)[0]}; use a new --output_dir or delete them.")
  return None


def prepare_output_dir(output_dir: str, job: dict) -> None:
  """Creates the folder and job.json, deletes stale temporaries (process 0 only)."""
  os.makedirs(os.path.join(output_dir, RECORDS_DIR), exist_ok=True)
  if not os.path.isfile(os.path.join(output_dir, JOB_FILE)):
    atomic_write_json(os.path.join(output_dir, JOB_FILE), job)
  for folder in (output_dir, os.path.join(output_dir, RECORDS_DIR)):
    for name in os.listdir(folder):
      if name.startswith(TEMP_PREFIX):
        os.remove(os.path.join(folder, name))


def record_path(output_dir: str, index: int) -> str:
  return os.path.join(output_dir, RECORDS_DIR, clip_name(index) + ".json")


def completed_mask(output_dir: str, num_samples: int) -> np.ndarray:
  """bool (num_samples,): which clips already have their record."""
  return np.array([os.path.isfile(record_path(output_dir, i)) for i in range(num_samples)],
                  dtype=bool)


def write_clip(output_dir: str, index: int, clip: np.ndarray, record: dict, *, sample_rate: int,
               spectrogram: bool, options: Optional[audio_output.OutputOptions] = None) -> None:
  """Writes clip `index`'s audio file (+ PNG), then its record; each atomically."""
  name = clip_name(index)
  options = options or audio_output.OutputOptions()
  file_name = f"{name}.{options.file_format}"
  written = {}
  atomic_write(os.path.join(output_dir, file_name),
               lambda p: written.update(audio_output.write_audio(p, clip, sample_rate, options)))
  record = {"file": file_name, **written, **record}
  if spectrogram:
    atomic_write(os.path.join(output_dir, name + ".png"),
                 lambda p: audio_summaries.spectrogram_png(clip, sample_rate, p, title=name))
    record["spectrogram"] = name + ".png"
  atomic_write_json(record_path(output_dir, index), record)


def merge_records(output_dir: str, num_samples: int, metadata: dict) -> list[dict]:
  """Writes samples.json: metadata + every clip's record, most likely first."""
  records = []
  for i in range(num_samples):
    with open(record_path(output_dir, i), encoding="utf-8") as f:
      records.append(json.load(f))
  if records and all("stereo" in r for r in records):
    metadata = {**metadata, "samples_stereo_metrics": stereo_metrics.mean_metrics(
        [r["stereo"] for r in records])}
  records.sort(key=lambda r: (-r["log_likelihood_nats"], r["index"]))
  atomic_write_json(os.path.join(output_dir, SAMPLES_FILE), {**metadata, "samples": records})
  return records


# ------------------------------------------------------------------------------------------------
# Generation.


@dataclasses.dataclass
class JobResult:
  generated: int        # clips generated by this run on every host
  written: int          # clips this process wrote
  skipped: int          # clips already complete
  seconds: float        # wall time of the generation, compilation included
  tokens_per_second: float
  records: list         # samples.json's records (process 0; [] elsewhere)
  speed: dict = dataclasses.field(default_factory=dict)  # audio_output.speed_report


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _broadcast(value: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.broadcast_one_to_all(value))


def _local_rows(array: jax.Array) -> dict[int, np.ndarray]:
  """{global row: value} for the rows this process holds."""
  rows = {}
  for shard in array.addressable_shards:
    start = shard.index[0].start or 0
    data = np.asarray(shard.data)
    for offset in range(data.shape[0]):
      rows.setdefault(start + offset, data[offset])
  return rows


def run_job(model, config, *, output_dir: str, job: dict, num_samples: int,
            per_device_batch_size: int,
            clip_frames: int, prompts: Optional[np.ndarray] = None,
            prompt_names: Sequence[str] = (), temperature: float = 1.0, top_p: float = 1.0,
            seed: int = 0, chunk_tokens: int = 4096, spectrograms: bool = False,
            metadata: Optional[dict] = None, mesh=None,
            progress: Optional[Callable[[int], Any]] = None,
            output_options: Optional[audio_output.OutputOptions] = None) -> JobResult:
  """Generates the clips of `output_dir`'s job that are not complete yet.

  Args:
    model: the trained `SaShiMiLM`.
    config: its ConfigDict.
    output_dir: the job's folder (shared by all hosts).
    job: the arguments that determine the clips (recorded in job.json, compared on reruns).
    num_samples: clips 0..num_samples-1.
    per_device_batch_size: clips each device generates together. Every batch (the last one
      padded) gives each device this many rows, so a clip's arithmetic is the same whatever the
      device or host count (XLA's CPU matmuls may round a row differently in another batch
      shape).
    clip_frames: frames per clip, prompt included.
    prompts: optional int32 (n, P) stream tokens; clip i continues prompt i mod n.
    prompt_names: the n prompts' names, for the records.
    temperature, top_p, seed: sampling settings.
    chunk_tokens: tokens per compiled segment.
    spectrograms: also write a PNG per clip.
    metadata: extra samples.json fields.
    mesh: the data mesh (default: every device of every process).
    progress: called with the number of tokens generated so far (process 0).
    output_options: how clips are written (rate, format, subtype, loudness; default float WAV
      at the training rate).

  Raises:
    ValueError: if `output_dir` holds another job's files.
  """
  if num_samples < 1:
    raise ValueError(f"--num_samples must be >= 1, got {num_samples}.")
  mesh = mesh if mesh is not None else sharding.create_mesh()
  problem = check_output_dir(output_dir, job)
  _sync("sample_job_checked")
  if problem:
    raise ValueError(problem)
  if jax.process_index() == 0:
    prepare_output_dir(output_dir, job)
  _sync("sample_job_prepared")
  done = _broadcast(completed_mask(output_dir, num_samples))
  pending = np.nonzero(~done)[0].astype(np.int32)
  if done.any():
    logging.info("%d of %d clips already complete in %s; generating the other %d.",
                 int(done.sum()), num_samples, output_dir, pending.size)
  dataset = config.dataset
  channels = stereo.num_channels(bool(dataset.is_stereo))
  # The training layout decides the stream generated (e.g. one whole clip for `blocking`); the
  # clip is cut to clip_frames after de-interleaving.
  stream_frames = layout.generated_frames(
      clip_frames, is_stereo=bool(dataset.is_stereo), strategy=dataset.interleaving_strategy,
      sample_len=int(dataset.sample_len))
  total_tokens = stream_frames * channels
  prompt_len, forced, rest = 0, None, None
  if prompts is not None:
    # Prefill takes the given tokens every prompt opens with; later given tokens (-1 holes
    # before them, e.g. a `blocking` prompt's right channel) are forced in while generating.
    prompt_len = min(layout.split_prompt(p)[0].shape[0] for p in prompts)
    rest = prompts[:, prompt_len:]
    prompts = prompts[:, :prompt_len]
  new_tokens = total_tokens - prompt_len
  if new_tokens < 1 or (rest is not None and rest.shape[1] > new_tokens):
    raise ValueError(f"Nothing to generate: the prompt has {prompt_len} tokens and a clip "
                     f"{total_tokens}; raise --seconds or lower --prompt_seconds.")
  if rest is not None and rest.shape[1]:
    forced = np.full((rest.shape[0], new_tokens), layout.NOT_GIVEN, np.int32)
    forced[:, :rest.shape[1]] = rest
  if per_device_batch_size < 1:
    raise ValueError(f"--per_device_batch_size must be >= 1, got {per_device_batch_size}.")
  batch = per_device_batch_size * mesh.devices.size
  sample_rate = int(config.dataset.sample_rate)
  head_kwargs = config_lib.head_args(config)
  key = jax.random.key(seed)
  # Once per job, not per batch: a DPLR model's constants cost a matrix power and a solve.
  recurrence = sampling.recurrence_constants(model, mesh) if pending.size else None
  written = 0
  options = (output_options or audio_output.OutputOptions()).validate()
  with audio_output.CompileTimer() as compile_timer:  # to report speed without compilation.
    start = time.perf_counter()
    for first in range(0, pending.size, batch):
      indices = pending[first:first + batch]
      real = indices.size
      indices = np.concatenate([indices, np.full(batch - real, indices[-1], np.int32)])
      row_prompts = None if prompts is None else prompts[indices % prompts.shape[0]]
      row_forced = None if forced is None else forced[indices % forced.shape[0]]

      def chunk_done(tokens_done, real=real, first=first):
        if progress is not None:
          progress(first * new_tokens + tokens_done * real)

      out = sampling.generate(
          model, key, batch_size=batch, new_tokens=new_tokens, prompt=row_prompts,
          temperature=temperature, top_p=top_p, sample_indices=indices, mesh=mesh,
          chunk_tokens=chunk_tokens, progress=chunk_done, forced=row_forced,
          recurrence=recurrence, **head_kwargs)
      tokens = _local_rows(out["tokens"])
      loglik = _local_rows(out["log_likelihood"])
      entropy = _local_rows(out["mean_entropy"])
      for row in sorted(tokens):
        if row >= real:
          continue  # padding of the last batch.
        written += 1
        index = int(indices[row])
        clip = layout.trim_frames(
            np.asarray(pipeline.decode_tokens(tokens[row], dataset), np.float32), clip_frames)
        sampled = new_tokens - (0 if row_forced is None else
                                int(np.sum(row_forced[row] != layout.NOT_GIVEN)))
        record = {"index": index,
                  **audio_output.record_units(loglik[row], entropy[row], max(sampled, 1))}
        if clip.shape[1] == 2:
          record["stereo"] = stereo_metrics.clip_metrics(clip, sample_rate)
        if prompts is not None:
          record["prompt"] = prompt_names[index % prompts.shape[0]] if prompt_names else None
        write_clip(output_dir, index, clip, record, sample_rate=sample_rate,
                   spectrogram=spectrograms, options=options)
    seconds = time.perf_counter() - start
  speed = audio_output.speed_report(
      generated_tokens=int(pending.size) * new_tokens,
      generated_frames=int(pending.size) * new_tokens // channels, model_rate_hz=sample_rate,
      wall_seconds=seconds, compile_seconds=compile_timer.seconds) if pending.size else {}
  logging.info("Process %d wrote %d clips.", jax.process_index(), written)
  _sync("sample_job_written")
  records = []
  if jax.process_index() == 0:
    missing = np.nonzero(~completed_mask(output_dir, num_samples))[0]
    if missing.size:
      raise ValueError(f"{missing.size} clips have no record after generation (e.g. "
                       f"{clip_name(int(missing[0]))}); is --output_dir shared by every host?")
    stereo_data = ({"data_stereo_metrics": audio_summaries.data_stereo_metrics(config, clip_frames)}
                   if dataset.is_stereo else {})
    records = merge_records(output_dir, num_samples, {
        **job, **(metadata or {}), **stereo_data,
        **audio_output.options_record(options, sample_rate),
        "prompt_tokens": prompt_len, **speed})
  _sync("sample_job_merged")
  return JobResult(generated=int(pending.size), written=written, skipped=int(done.sum()),
                   seconds=seconds,
                   tokens_per_second=pending.size * new_tokens / max(seconds, 1e-9),
                   records=records, speed=speed)


def run_from_flags(fv) -> int:
  """sample.py's program for its parsed flags (`fv`, an absl FlagValues); returns the exit code.

  Loads the checkpoint (falling back past damaged steps), optionally compares convolution and
  recurrent outputs (--verify_step), then generates --num_samples clips as one resumable job.
  """
  from sashimi_jax import checkpoint  # pylint: disable=g-import-not-at-top

  if not fv.workdir:
    raise ValueError("--workdir is required (the training run's directory).")
  cpu_devices.configure(fv.cpu_devices, os.environ)  # before anything creates a JAX backend
  reason = distributed.initialize_from_flags(fv, os.environ)
  if reason:
    logging.info("jax.distributed initialized (%s).", reason)
  config, model, step = checkpoint.load_for_inference(fv.workdir, fv.step)
  logging.info("Loaded step %d from %s; process %d/%d, %d devices.", step, fv.workdir,
               jax.process_index(), jax.process_count(), jax.device_count())
  if fv.verify_step:
    difference = sampling.verify_recurrence(model, config)
    ok = difference <= fv.verify_tolerance
    print(f"conv vs recurrent relative difference: {difference:.3e} "
          f"(tolerance {fv.verify_tolerance:.1e}): {'OK' if ok else 'FAILED'}")
    if not ok:
      return 1
  if fv.num_samples < 1:
    return 0
  sample_rate = int(config.dataset.sample_rate)
  clip_frames = int(round(fv.seconds * sample_rate))
  prompt_tokens, prompt_names, prompt_job = prompts.prepare_prompts(
      fv.prompt, config, clip_frames, prompt_seconds=fv.prompt_seconds, prompt_mono=fv.prompt_mono)
  output_dir = fv.output_dir or os.path.join(fv.workdir, "samples")
  options = audio_output.OutputOptions(
      output_rate_hz=fv.output_rate, file_format=fv.format, subtype=fv.subtype,
      loudness_dbfs=fv.loudness_dbfs).validate()
  job = {"workdir": os.path.abspath(fv.workdir), "step": step, "num_samples": fv.num_samples,
         "clip_seconds": fv.seconds, "seed": fv.seed, "temperature": fv.temperature,
         "top_p": fv.top_p, "spectrograms": fv.spectrograms,
         "per_device_batch_size": fv.per_device_batch_size, **prompt_job,
         **audio_output.options_record(options, sample_rate)}
  is_main = jax.process_index() == 0
  new_tokens = stereo.stream_length(clip_frames, bool(config.dataset.is_stereo)) - (
      0 if prompt_tokens is None else prompt_tokens.shape[1])
  with tqdm.tqdm(total=fv.num_samples * max(new_tokens, 0), unit="tok", unit_scale=True,
                 disable=not is_main, desc="sampling") as bar:

    def progress(tokens_done):
      bar.update(tokens_done - bar.n)

    result = run_job(
        model, config, output_dir=output_dir, job=job, num_samples=fv.num_samples,
        per_device_batch_size=fv.per_device_batch_size, clip_frames=clip_frames,
        prompts=prompt_tokens, prompt_names=prompt_names, temperature=fv.temperature, top_p=fv.top_p,
        seed=fv.seed, chunk_tokens=fv.chunk_tokens, spectrograms=fv.spectrograms,
        progress=progress, output_options=options)
  if is_main:
    best = result.records[0]
    print(f"Wrote {result.generated} clips to {output_dir} ({result.skipped} already complete); "
          f"{audio_output.format_speed(result.speed)}; most likely: "
          f"{best['file']} ({best['bits_per_token']:.3f} bits/token).")
  return 0
