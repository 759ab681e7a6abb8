"""The README's two commands are what a new user runs; CI must run the same test command."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
  text = (ROOT / "README.md").read_text(encoding="utf-8")
  blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)
  return [line.strip() for block in blocks[:2] for line in block.strip().splitlines()]


def test_readme_opens_with_a_demo_and_a_test_command():
  commands = _readme_commands()
  assert len(commands) == 2, commands
  demo, test = commands
  assert "launch.py" in demo and "sample.py" in demo, demo
  assert "pytest" in test, test
  for command in commands:
    assert command.startswith("python3 -m venv .venv"), command


def test_ci_runs_the_readme_test_command_verbatim():
  ci_script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
  test_command = _readme_commands()[1]
  assert test_command in ci_script, (test_command, ci_script)
