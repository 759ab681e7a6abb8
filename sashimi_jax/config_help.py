"""`launch.py --help`: every `--config.` field of a preset with its value and source comment.

The comments are the trailing `# ...` of the lines that set each field in the preset file and in
the `default.py` next to it (where the presets' base config lives), so the help text is the
config's own documentation.
"""

from __future__ import annotations

import os
import re
import runpy
from typing import Sequence

DEFAULT_PRESET = os.path.join("configs", "stereo_temporal.py")
_ASSIGNMENT = re.compile(r"^\s*config\.([A-Za-z_][\w.]*)\s*=.*?#\s*(.+?)\s*$")


def field_comments(paths: Sequence[str]) -> dict[str, str]:
  """{"dataset.path": "comment", ...} from `config.a.b = ...  # comment` lines of `paths`.

  A later file's comment for the same field replaces an earlier one.
  """
  comments: dict[str, str] = {}
  for path in paths:
    if not os.path.isfile(path):
      continue
    with open(path, encoding="utf-8") as f:
      for line in f:
        match = _ASSIGNMENT.match(line)
        if match:
          comments[match.group(1)] = match.group(2)
  return comments


def preset_argument(argv: Sequence[str]) -> str:
  """The `--config=FILE[:ARG]` value in `argv` (default `DEFAULT_PRESET`)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return DEFAULT_PRESET


def describe(preset: str) -> str:
  """Lines `--config.a.b=VALUE  comment` for every field of `preset` (`FILE[:ARG]`).

  Raises:
    FileNotFoundError: if the preset file does not exist.
  """
  path, _, arg = preset.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Config file {path!r} does not exist.")
  config = runpy.run_path(path)["get_config"](arg or None)
  comments = field_comments([os.path.join(os.path.dirname(path), "default.py"), path])
  from sashimi_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  flat = config_lib.flatten(config.to_dict())
  width = max(len(f"--config.{k}={v!r}") for k, v in flat.items())
  lines = [f"Config fields of {preset} (override any with --config.FIELD=VALUE):"]
  for name, value in flat.items():
    entry = f"--config.{name}={value!r}"
    comment = comments.get(name, "")
    lines.append(f"  {entry:<{width}}  {comment}".rstrip())
  return "\n".join(lines)


def wants_help(argv: Sequence[str]) -> bool:
  return any(a in ("--help", "-h", "-?", "--helpshort") for a in argv[1:])
