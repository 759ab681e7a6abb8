"""What a training run says about itself at start: parameters, config, devices, data.

`start_block(...)` is the text printed once when `train_and_evaluate` starts (process 0);
`write_config_json` saves the resolved config as WORKDIR/config.json; `config_changes` lists
what differs from a checkpoint's saved config on resume.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from sashimi_jax import config as config_lib

CONFIG_FILE = "config.json"
_MAX_NAMES = 6  # file names listed per line before "... and N more".


def _size(tree) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree)))


def parameter_counts(params: Mapping[str, Any]) -> dict[str, int]:
  """Parameters per part of the model: embedding, each U-Net level, the center, norm, head.

  The U-Net is nested (`level` holds its pools and stages and the deeper level under `inner`):
  level k counts its own down/up pools and stages, "center" the innermost stage.

  Args:
    params: the model's parameters as a pure nested dict of arrays (or ShapeDtypeStructs).

  Returns:
    {"embedding": n, "level 0": n, "level 1": n, "center": n, "norm": n, "head": n} in that
    order (other top-level entries by their own names, before norm).
  """
  counts: dict[str, int] = {}
  for top, subtree in params.items():
    if str(top) != "level" or not isinstance(subtree, Mapping):
      counts[str(top)] = _size(subtree)
      continue
    level, node = 0, subtree
    while isinstance(node, Mapping) and "inner" in node:
      counts[f"level {level}"] = _size({k: v for k, v in node.items() if k != "inner"})
      node, level = node["inner"], level + 1
    counts["center"] = _size(node)
  # Data-flow order: the embedding, the U-Net from the outside in, then norm and head.
  rank = {"embedding": 0, "norm": 2, "head": 3}
  return dict(sorted(counts.items(), key=lambda kv: rank.get(kv[0], 1)))


def write_config_json(config, workdir: str) -> str:
  """Writes the resolved config to WORKDIR/config.json; returns the path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(config_lib.to_dict(config), f, indent=2, sort_keys=True, default=str)
    f.write("\n")
  return path


def config_changes(saved: Mapping[str, Any], current) -> list[str]:
  """Lines `name: old -> new` for every field that differs between a saved and the current
  config."""
  old, new = config_lib.flatten(saved), config_lib.flatten(config_lib.to_dict(current))
  lines = []
  for name in sorted(set(old) | set(new)):
    if old.get(name, "<missing>") != new.get(name, "<missing>"):
      lines.append(f"{name}: {old.get(name, '<missing>')!r} -> {new.get(name, '<missing>')!r}")
  return lines


def _names(infos, limit: int = _MAX_NAMES, *, whole_files: bool = False) -> str:
  names = [os.path.basename(str(i.key if whole_files and isinstance(i.key, str) else i.name))
           for i in infos]
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def data_lines(sources: Mapping[str, Any], dataset_cfg) -> list[str]:
  """Files and clips per split, which items were resampled / down-mixed / duplicated.

  Args:
    sources: `pipeline.split_sources(...)`: {split: AudioClipSource, "by_time": bool}.
    dataset_cfg: `config.dataset`.
  """
  rate, is_stereo = int(dataset_cfg.sample_rate), bool(dataset_cfg.is_stereo)
  path = dataset_cfg.path or "the bundled demo music"
  frames = int(dataset_cfg.sample_len)
  lines = [f"data: {path} at {rate} Hz, {'stereo' if is_stereo else 'mono'}, clips of {frames} "
           f"frames ({frames / rate:.3f} s)"
           + ("; too few files, so each file is split by time" if sources.get("by_time") else "")]
  every = []
  for split in ("train", "valid", "test"):
    clips = sources[split]
    every.extend(clips.infos)
    seconds = sum(i.frames / i.sample_rate for i in clips.infos)
    line = (f"  {split}: {len(clips.infos)} file(s), {seconds:.1f} s, {len(clips)} clip(s)")
    if split != "train" and clips.infos:
      line += f": {_names(clips.infos)}"
    lines.append(line)
  seen, unique = set(), []
  for info in every:  # a file split by time appears once per split.
    if info.key not in seen:
      seen.add(info.key)
      unique.append(info)
  resampled = [i for i in unique if i.sample_rate != rate]
  if resampled:
    rates = sorted({i.sample_rate for i in resampled})
    lines.append(f"  resampled to {rate} Hz (from {', '.join(map(str, rates))} Hz): "
                 f"{len(resampled)} file(s): {_names(resampled, whole_files=True)}")
  if is_stereo:
    duplicated = [i for i in unique if i.channels == 1]
    if duplicated:
      lines.append(f"  mono copied to both channels: {len(duplicated)} file(s): "
                   f"{_names(duplicated, whole_files=True)}")
  else:
    mixed = [i for i in unique if i.channels > 1]
    if mixed:
      lines.append(f"  down-mixed to mono (channels averaged): {len(mixed)} file(s): "
                   f"{_names(mixed, whole_files=True)}")
  return lines


def device_lines(mesh) -> list[str]:
  """Devices, processes and the mesh shape."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  kinds = sorted({f"{d.platform} ({d.device_kind})" for d in devices})
  shape = ", ".join(f"{name}={size}" for name, size in mesh.shape.items())
  return [f"devices: {len(devices)} x {', '.join(kinds)} on {jax.process_count()} process(es); "
          f"mesh {shape}"]


def start_block(config, *, params, mesh, sources, workdir: str, config_path: str | None,
                resumed: str | None = None) -> str:
  """The text a run prints when it starts (see the module docstring)."""
  counts = parameter_counts(params)
  total = sum(counts.values())
  lines = [f"=== sashimi-jax run in {os.path.abspath(workdir)} ===",
           f"parameters: {total:,} ({', '.join(f'{k} {v:,}' for k, v in counts.items())})"]
  lines += device_lines(mesh)
  lines += data_lines(sources, config.dataset)
  flat = config_lib.flatten(config_lib.to_dict(config))
  lines.append("config" + (f" (saved to {config_path})" if config_path else "") + ":")
  for section in ("dataset", "model", "train"):
    prefix = section + "."
    items = [f"{k[len(prefix):]}={v!r}" for k, v in flat.items() if k.startswith(prefix)]
    lines.append(f"  {section}: " + ", ".join(items))
  others = [f"{k}={v!r}" for k, v in flat.items() if "." not in k]
  if others:
    lines.append("  " + ", ".join(others))
  if resumed:
    lines.append(resumed)
  return "\n".join(lines)
