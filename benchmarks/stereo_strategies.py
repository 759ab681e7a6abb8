"""Stereo strategies side by side at equal compute: eval bits per channel, gain over two mono
channels, sample stereo metrics vs data, tokens/s, memory, learning curves.

Every variant is the tiny model (`configs/stereo_temporal.py:tiny`: 2-layer S4D, d_model 64,
pool [4, 4]) trained by `launch.py` for the same steps, seed and tokens per step (4 x 2048):
  * `temporal`, `blocking`, `blocking-N`: stereo clips of 1024 frames (2048 tokens);
  * `two-mono`: the same model trained on mono clips of 2048 frames, each clip one channel
    of the same training files (`configs/mono.py:tiny`), i.e. two mono channels;
  * `<variant>+<field>=<value>[+...]`: a variant with model overrides, e.g.
    `temporal+input_conv_width=4`, `temporal+input_conv_width=4+input_conv_kind=depthwise` or
    `two-mono+input_conv_width=4` (the baseline of a model with that field). Without overrides
    every variant has `model.input_conv_width=0` and `model.fine_conv_width=0` (the model of
    the seeds' presets).
Each trained model is then scored on the same validation audio (`--eval_clips` stereo clips of
1024 frames spread over the validation split; the two-mono model on both channels of the same
frames as mono streams, `channel_bits`), generates `--num_samples` clips of one training clip
(1024 frames) whose `stereo_metrics` are averaged, beside the same figures for the data.

Datasets: `demo` (the bundled music), `uncorrelated` (the demo files with the right channel of
each file taken from the next file: real music whose channels are independent, so no
cross-channel gain exists), `correlated` (a second set, 11 other public-domain pieces with
closer pans, 3.7 min, rendered on first use into `--workdir` by `scripts/render_stereo_set.py`;
needs `apt-get install fluidsynth fluid-soundfont-gm` and `pip install -e '.[demo-render]'`),
or a folder of stereo audio. For each dataset the table states its validation audio's
linear-predictor headroom (`stereo_metrics.linear_headroom_bits`: what a linear model of R[t]
gets out of L[t]).

Every variant also reports `channel_bits.teacher_forced_coupling` on the same validation
clips (`tf`): the inter-channel correlation of one-step draws given the true past, and of the
two channels' prediction errors (`tf residual corr`: the same-time coupling the model leaves;
for two-mono, all the data's), to tell a model that did not learn the coupling from sampling
that loses it.

  python benchmarks/stereo_strategies.py                                  # all, 500 steps
  python benchmarks/stereo_strategies.py --datasets=demo --steps=200 \
      --variants=temporal,two-mono,temporal+input_conv_width=4
  python benchmarks/stereo_strategies.py --datasets=correlated \
      --variants=temporal+input_conv_width=4,two-mono+input_conv_width=4

Prints a table (Markdown) and one JSON line; writes `--png` (learning curves: eval bits vs step).
Runs one training at a time (`nice` is up to the caller).
"""

from __future__ import annotations

import json
import os
import pathlib
import runpy
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np
import soundfile as sf

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from sashimi_jax import audio_summaries  # pylint: disable=g-import-not-at-top,wrong-import-position
from sashimi_jax import channel_bits
from sashimi_jax import checkpoint
from sashimi_jax import sampling
from sashimi_jax import stereo_metrics
from sashimi_jax.data import audio
from sashimi_jax.data import layout
from sashimi_jax.data import pipeline

_VARIANTS = flags.DEFINE_list(
    "variants", ["temporal", "blocking", "blocking-16", "blocking-256", "two-mono"],
    "Variants to train (see the module doc).")
_DATASETS = flags.DEFINE_list("datasets", ["demo", "uncorrelated"],
                              "demo, uncorrelated, correlated, or folders of stereo audio.")
_STEPS = flags.DEFINE_integer("steps", 500, "Train steps per variant.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 100, "Steps between learning-curve points.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of every run (unless --seeds).")
_SEEDS = flags.DEFINE_list("seeds", [], "Seeds: every variant is run with each, and a row gives "
                           "their mean (the gain over two-mono pairs runs of the same seed).")
_EVAL_CLIPS = flags.DEFINE_integer("eval_clips", 32, "Validation clips scored per variant.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 4, "Clips generated per variant.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/stereo_strategies", "Runs and rendered data.")
_PNG = flags.DEFINE_string("png", "stereo_strategies.png", "Learning-curve plot ('' = none).")
_REUSE = flags.DEFINE_bool("reuse", True, "Reuse a finished run found in --workdir.")
_TRAIN = flags.DEFINE_bool("train", True, "Train missing runs (False: table of finished runs "
                           "only, skipping the others).")


def uncorrelated_dataset(directory: pathlib.Path) -> str:
  """Writes the demo files with each right channel taken from the next file (sorted order)."""
  directory.mkdir(parents=True, exist_ok=True)
  paths, _ = audio.find_audio_files(str(pipeline.DEMO_DATA_DIR))
  music = [sf.read(p, dtype="float32")[0] for p in paths]
  for i, path in enumerate(paths):
    other = music[(i + 1) % len(music)]
    frames = min(len(music[i]), len(other))
    pair = np.stack([music[i][:frames, 0], other[:frames, 1]], axis=-1)
    sf.write(directory / pathlib.Path(path).name, pair, 16000, subtype="PCM_16")
  return str(directory)


def correlated_dataset(directory: pathlib.Path) -> str:
  """The second stereo set, rendered into `directory` unless already there."""
  sys.path.insert(0, str(_ROOT / "scripts"))
  import render_stereo_set  # pylint: disable=g-import-not-at-top

  render_stereo_set.render_set(directory)
  return str(directory)


def validation_headroom(data_path: str) -> dict:
  """`linear_headroom_bits` and correlation of the validation split's files, frame-weighted."""
  config = runpy.run_path(str(_ROOT / "configs/stereo_temporal.py"))["get_config"]("tiny")
  config.dataset.path = data_path
  figures, weights = [], []
  for info in pipeline.build_clip_source(config.dataset, "valid").infos:
    music, _ = sf.read(info.name, dtype="float64")
    figures.append({"correlation": stereo_metrics.correlation(music),
                    **stereo_metrics.linear_headroom_bits(music)})
    weights.append(len(music))
  return {k: float(np.average([f[k] for f in figures], weights=weights)) for k in figures[0]}


def mono_channel_dataset(stereo_config, directory: pathlib.Path):
  """Each stereo file as two mono files, ordered so the file split matches the stereo one.

  Returns:
    (path, valid_fraction, test_fraction) for the mono config.
  """
  directory.mkdir(parents=True, exist_ok=True)
  splits = {name: pipeline.build_clip_source(stereo_config.dataset, name).infos
            for name in ("train", "valid", "test")}
  total = 0
  for order, name in enumerate(("train", "valid", "test")):
    for info in splits[name]:
      data, rate = sf.read(info.name, dtype="float32")
      stem = pathlib.Path(info.name).stem
      for k, channel in enumerate("LR"):
        target = directory / f"{order}_{name}_{stem}_{channel}.flac"
        if not target.exists():
          sf.write(target, data[:, k], rate, subtype="PCM_16")
        total += 1
  return (str(directory), 2 * len(splits["valid"]) / total, 2 * len(splits["test"]) / total)


def variant_config(variant: str, data_path: str, mono_dir: pathlib.Path, seed: int):
  """(config, launch.py overrides) of one variant."""
  stereo_cfg = runpy.run_path(str(_ROOT / "configs/stereo_temporal.py"))["get_config"]("tiny")
  stereo_cfg.dataset.path = data_path
  if data_path:
    overrides_path = {"dataset.path": data_path}
  else:
    overrides_path = {}
  overrides = {"train.num_steps": _STEPS.value, "seed": seed,
               "train.eval_every_steps": _EVAL_EVERY.value,
               "train.checkpoint_every_steps": _STEPS.value, "train.log_every_steps": 20,
               "train.warmup_steps": min(20, _STEPS.value),
               **overrides_path}
  strategy, *fields = variant.split("+")
  # Every variant states its model fields: the presets' defaults (e.g. stereo_temporal's input
  # convolution) must not differ between variants unless asked for.
  overrides["model.input_conv_width"] = 0
  overrides["model.fine_conv_width"] = 0
  if strategy == "two-mono":
    path, valid, test = mono_channel_dataset(stereo_cfg, mono_dir)
    config = runpy.run_path(str(_ROOT / "configs/mono.py"))["get_config"]("tiny")
    overrides.update({"dataset.path": path, "dataset.valid_fraction": valid,
                      "dataset.test_fraction": test})
    file = "configs/mono.py:tiny"
  else:
    config = stereo_cfg
    overrides["dataset.interleaving_strategy"] = strategy
    file = "configs/stereo_temporal.py:tiny"
  for field in fields:
    name, value = field.split("=")
    overrides[f"model.{name}"] = int(value) if value.isdigit() else value
  for key, value in overrides.items():
    node = config
    *parents, last = key.split(".")
    for p in parents:
      node = node[p]
    node[last] = value
  return config, file, overrides


def train_variant(file: str, overrides: dict, workdir: str) -> dict:
  """Runs launch.py; returns {"max_rss_mib", "seconds"} (peak RSS of the training process)."""
  command = [sys.executable, str(_ROOT / "launch.py"), f"--config={_ROOT / file}",
             f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
  start = time.time()
  with open(os.path.join(workdir + ".log"), "w", encoding="utf-8") as log:
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=_ROOT)
    _, status, usage = os.wait4(process.pid, 0)
  if status != 0:
    raise RuntimeError(f"launch.py failed for {workdir} (see {workdir}.log)")
  result = {"max_rss_mib": usage.ru_maxrss / 1024, "seconds": time.time() - start}
  with open(workdir + ".run.json", "w", encoding="utf-8") as f:
    json.dump(result, f)
  return result


def read_metrics(workdir: str) -> tuple[list, float]:
  """(learning curve [(step, eval bits, left, right)], median train tokens/s)."""
  curve, speeds = [], []
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      if "eval/bits_per_token" in row:
        curve.append((row["step"], row["eval/bits_per_token"],
                      row.get("eval/bits_per_token_left"), row.get("eval/bits_per_token_right")))
      if "train/tokens_per_second" in row and row["step"] > 20:
        speeds.append(row["train/tokens_per_second"])
  return curve, float(np.median(speeds)) if speeds else float("nan")


def eval_clips(data_path: str, count: int) -> np.ndarray:
  """(count, 1024, 2) float32 stereo clips spread evenly over the validation split."""
  config = runpy.run_path(str(_ROOT / "configs/stereo_temporal.py"))["get_config"]("tiny")
  config.dataset.path = data_path
  clips = pipeline.build_clip_source(config.dataset, "valid")
  indices = np.linspace(0, len(clips) - 1, min(count, len(clips))).round().astype(int)
  return np.stack([clips[int(i)] for i in indices]).astype(np.float32)


def score(workdir: str, clips: np.ndarray) -> dict:
  """Per-channel bits on `clips` and stereo metrics of generated clips (stereo models)."""
  import jax  # pylint: disable=g-import-not-at-top

  config, model, _ = checkpoint.load_for_inference(workdir)
  # Stereo models: each clip interleaved; the two-mono model: each channel of the same clips as
  # a mono stream (the same frames and the same context in frames).
  out = {"bits": channel_bits.channel_bits(model, config, clips),
         "coupling": channel_bits.teacher_forced_coupling(model, config, clips)}
  if config.dataset.is_stereo:
    frames = int(config.dataset.sample_len)
    stream_frames = layout.generated_frames(frames, is_stereo=True,
                                            strategy=config.dataset.interleaving_strategy,
                                            sample_len=frames)
    generated = sampling.generate(model, jax.random.key(0), batch_size=_NUM_SAMPLES.value,
                                  new_tokens=2 * stream_frames)
    samples = layout.trim_frames(
        np.asarray(pipeline.decode_tokens(np.asarray(generated["tokens"]), config.dataset)),
        frames)
    rate = int(config.dataset.sample_rate)
    out["samples"] = stereo_metrics.mean_metrics(
        [stereo_metrics.clip_metrics(s, rate) for s in samples])
    out["data"] = audio_summaries.data_stereo_metrics(config, frames, max_clips=16)
  return out


def mean_rows(rows: list[dict]) -> list[dict]:
  """One row per variant with the mean over its seeds of every numeric field (seed "mean of k")."""
  out = []
  for variant in dict.fromkeys(r["variant"] for r in rows):
    group = [r for r in rows if r["variant"] == variant]
    if len(group) < 2:
      continue
    mean = {"dataset": group[0]["dataset"], "variant": variant,
            "seed": f"mean of {len(group)}", "steps": group[0]["steps"]}
    for key, value in group[0].items():
      if key in mean:
        continue
      if isinstance(value, dict):
        mean[key] = {k: float(np.mean([g[key][k] for g in group])) for k in value
                     if all(isinstance(g[key].get(k), (int, float)) for g in group)}
      elif all(key in g and g[key] is not None for g in group):
        mean[key] = float(np.mean([g[key] for g in group]))
    out.append(mean)
  return out


def plot(curves: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  datasets = sorted({d for d, _ in curves})
  fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
  for ax, dataset in zip(axes[0], datasets):
    for (d, variant), curve in curves.items():
      if d != dataset or not curve:
        continue
      steps = [c[0] for c in curve]
      line, = ax.plot(steps, [c[1] for c in curve], label=f"{variant} (total)")
      if curve[0][3] is not None:
        ax.plot(steps, [c[3] for c in curve], "--", color=line.get_color(), alpha=0.6,
                label=f"{variant} (right)")
    ax.set_title(f"{dataset}: validation bits per token (launch.py eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("bits")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv):
  del argv
  root = pathlib.Path(_WORKDIR.value)
  root.mkdir(parents=True, exist_ok=True)
  rows, curves, headroom = [], {}, {}
  for dataset in _DATASETS.value:
    if dataset == "demo":
      data_path = ""
    elif dataset == "uncorrelated":
      data_path = uncorrelated_dataset(root / "data_uncorrelated")
    elif dataset == "correlated":
      data_path = correlated_dataset(root / "data_correlated")
    else:
      data_path = dataset
    clips = eval_clips(data_path, _EVAL_CLIPS.value)
    headroom[dataset] = validation_headroom(data_path)
    results = {}
    seeds = [int(x) for x in _SEEDS.value] or [_SEED.value]
    for variant, seed in [(v, s) for v in _VARIANTS.value for s in seeds]:
      name = f"{pathlib.Path(dataset).name or dataset}__{variant}".replace("=", "").replace("+", "_")
      workdir = str(root / f"{name}__{_STEPS.value}steps_seed{seed}")
      _, file, overrides = variant_config(variant, data_path, root / f"mono_{name}", seed)
      run_file = workdir + ".run.json"
      if _REUSE.value and os.path.exists(run_file):
        with open(run_file, encoding="utf-8") as f:
          run = json.load(f)
      elif not _TRAIN.value:
        print(f"[{dataset}] {variant}: no finished run in {workdir}, skipped (--notrain)")
        continue
      else:
        os.makedirs(workdir, exist_ok=True)
        run = train_variant(file, overrides, workdir)
      curve, tokens_per_second = read_metrics(workdir)
      curves[(dataset, variant if len(seeds) == 1 else f"{variant} s{seed}")] = curve
      # Scores are kept beside the run, keyed by what they depend on.
      score_file = f"{workdir}.score_{_EVAL_CLIPS.value}clips_{_NUM_SAMPLES.value}samples.json"
      if _REUSE.value and os.path.exists(score_file):
        with open(score_file, encoding="utf-8") as f:
          scores = json.load(f)
        if "residual_correlation" not in scores.get("coupling", {}):  # scored by older code
          config, model, _ = checkpoint.load_for_inference(workdir)
          scores["coupling"] = channel_bits.teacher_forced_coupling(model, config, clips)
          with open(score_file, "w", encoding="utf-8") as f:
            json.dump(scores, f)
      else:
        scores = score(workdir, clips)
        with open(score_file, "w", encoding="utf-8") as f:
          json.dump(scores, f)
      results[(variant, seed)] = {"run": run, "curve": curve,
                                  "tokens_per_second": tokens_per_second, **scores}
      print(f"[{dataset}] {variant} seed {seed}: {scores['bits']}", flush=True)
    dataset_rows = []
    for (variant, seed), r in results.items():
      b = r["bits"]
      # The baseline is the two-mono model with the same model overrides and seed (without a
      # run of that seed: the mean over its seeds).
      same_model = "+".join(["two-mono"] + variant.split("+")[1:])
      baseline = results.get((same_model, seed), {}).get("bits")
      others = [v["bits"] for (name, _), v in results.items() if name == same_model]
      if baseline is None and others:
        baseline = {k: float(np.mean([o[k] for o in others])) for k in ("left", "right")}
      row = {"dataset": dataset, "variant": variant, "seed": seed, "steps": _STEPS.value,
             "bits_total": b["total"], "bits_left": b["left"], "bits_right": b["right"],
             "right_minus_left": b["right"] - b["left"],
             "launch_eval_bits": r["curve"][-1][1] if r["curve"] else None,
             "tokens_per_second": r["tokens_per_second"], "max_rss_mib": r["run"]["max_rss_mib"]}
      if baseline is not None:
        row["right_gain_over_two_mono"] = baseline["right"] - b["right"]
        row["left_gain_over_two_mono"] = baseline["left"] - b["left"]
      row["teacher_forced"] = r["coupling"]
      if "samples" in r:
        row["sample_correlation"] = r["samples"]["correlation"]
        row["data_correlation"] = r["data"]["correlation"]
        row["sample_side_to_mid_db"] = r["samples"]["side_to_mid_db"]
        row["data_side_to_mid_db"] = r["data"]["side_to_mid_db"]
        row["sample_level_difference_db_spread"] = r["samples"]["level_difference_db_spread"]
        row["data_level_difference_db_spread"] = r["data"]["level_difference_db_spread"]
      dataset_rows.append(row)
    rows.extend(dataset_rows)
    if len(seeds) > 1:
      rows.extend(mean_rows(dataset_rows))

  def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)

  print("\n| data | variant | seed | bits total | left | right | right - left | right gain vs two-mono "
        "| left gain vs two-mono | sample corr (data) | tf corr: one-step draws / L + drawn R "
        "/ means (data) | tf residual corr | tf R noise fraction | sample side/mid dB (data) "
        "| tokens/s | peak RSS MiB |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    corr = (f"{r['sample_correlation']:.2f} ({r['data_correlation']:.2f})"
            if "sample_correlation" in r else "-")
    side = (f"{r['sample_side_to_mid_db']:.1f} ({r['data_side_to_mid_db']:.1f})"
            if "sample_side_to_mid_db" in r else "-")
    t = r.get("teacher_forced")
    tf = (f"{t['one_step_samples']:.2f} / {t['true_left_sampled_right']:.2f} / "
          f"{t['mean_prediction']:.2f} ({t['data']:.2f})" if t else "-")
    noise = f"{t['right_noise_fraction']:.2f}" if t else "-"
    residual = f"{t['residual_correlation']:.2f}" if t else "-"
    print(f"| {r['dataset']} | {r['variant']} | {r['seed']} | {r['bits_total']:.2f} | "
          f"{r['bits_left']:.2f} | "
          f"{r['bits_right']:.2f} | {r['right_minus_left']:+.2f} | "
          f"{fmt(r.get('right_gain_over_two_mono'), '+.2f')} | "
          f"{fmt(r.get('left_gain_over_two_mono'), '+.2f')} | {corr} | {tf} | {residual} | "
          f"{noise} | {side} | "
          f"{r['tokens_per_second']:.0f} | {r['max_rss_mib']:.0f} |")
  print("\nValidation audio, linear predictor from 16 past frames of both channels:")
  for dataset, h in headroom.items():
    print(f"  {dataset}: correlation {h['correlation']:.2f}, right_vs_left_bits "
          f"{h['right_vs_left_bits']:+.2f}, same_time_bits (L[t] -> R[t]) "
          f"{h['same_time_bits']:+.2f}")
  if _PNG.value:
    plot(curves, _PNG.value)
  print(json.dumps({"benchmark": "stereo_strategies", "load": os.getloadavg()[0],
                    "validation_headroom": headroom, "rows": rows}))


if __name__ == "__main__":
  app.run(main)
