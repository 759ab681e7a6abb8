"""The package's modules import each other in one direction only: no import cycles.

Reads every module's source with `ast` (top-level and function-level imports alike, since a
deferred import inside a function is how a cycle usually hides) and fails on any cycle.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "sashimi_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
  """{module: package modules it imports}, e.g. {"sashimi_jax.train": {"sashimi_jax.state", ...}}."""
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from a.b import c` imports module a.b.c if it exists, else a.b.
        targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                   else node.module for alias in node.names]
      else:
        continue
      edges.update(t for t in targets if t in modules and t != name)
    graph[name] = edges
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle as a list of modules [a, b, ..., a], or None."""
  visiting, done = [], set()

  def visit(node):
    if node in visiting:
      return visiting[visiting.index(node):] + [node]
    if node in done:
      return None
    visiting.append(node)
    for child in sorted(graph[node]):
      cycle = visit(child)
      if cycle:
        return cycle
    visiting.pop()
    done.add(node)
    return None

  for node in sorted(graph):
    cycle = visit(node)
    if cycle:
      return cycle
  return None


def test_cycle_finder_finds_a_planted_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_package_has_no_import_cycle():
  graph = import_graph()
  assert "sashimi_jax.state" in graph["sashimi_jax.train"]  # the graph sees real edges.
  cycle = find_cycle(graph)
  assert cycle is None, " -> ".join(cycle)


def test_lower_layers_never_import_upper_ones():
  # data/ and models/ sit at the bottom: they get numbers (l_max, vocabulary), never training,
  # sampling or config objects.
  upper = {"sashimi_jax.train", "sashimi_jax.sampling", "sashimi_jax.checkpoint",
           "sashimi_jax.state", "sashimi_jax.config", "sashimi_jax.audio_summaries"}
  graph = import_graph()
  for name, edges in graph.items():
    if name.startswith(("sashimi_jax.data", "sashimi_jax.models")):
      assert not edges & upper, f"{name} imports {sorted(edges & upper)}"
