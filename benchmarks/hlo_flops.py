"""FLOPs of a compiled XLA program counting every trip of every while loop (scans included).

XLA's `compiled.cost_analysis()` counts the body of a while loop once, so a train step whose
layers run under `lax.scan` (one body per stage) or whose convolution scans over chunks is
undercounted by the loops' trip counts. `count_flops(compiled.as_text())` walks the optimized
HLO instead:

  dot          2 * |out| * prod(lhs contracting dims)
  convolution  2 * batch * out features * in features * (output position, window tap) pairs that
               read an input element (TPU lowers dots, batched dots and the FFT's DFT matmuls to
               convolutions, some with lhs dilation: holes are not counted, as in XLA's count)
  elementwise  |out| for arithmetic, comparison and select ops (transcendentals counted apart)
  reduce       |in| - |out| per reduced operand
  fusion/call  the called computation's count
  fft          8 * log2(n) per complex element (as XLA's HloCostAnalysis; XLA:TPU emits none)
  while        trip count * (body + condition): XLA's `known_trip_count` (CPU, GPU), else read
               off the condition `counter < constant` with the counter's constant start (TPU);
               1 if unreadable
  conditional  the largest branch

Checked against XLA's own cost analysis: on a scan of matmuls + a chunk scan + FFTs compiled for
a v5e chip, the count with each loop once is within 0.1% of `cost_analysis()["flops"]` and the
count with trip counts within 2.6% of `cost_analysis()` of the same program fully unrolled
(the looped program's extra index arithmetic); tests/test_hlo_flops.py checks the latter on CPU.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import numpy as np

_HEADER = re.compile(r"^(ENTRY )?%?([^\s(]+) \(.*\{\s*$")
_DIMS = re.compile(r"^[a-z0-9]+\[([0-9,]*)\]")
_CALLS = re.compile(r"(?:calls|to_apply)=%([^\s,]+)")
_BODY = re.compile(r"body=%([^\s,]+)")
_CONDITION = re.compile(r"condition=%([^\s,]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRUE_FALSE = re.compile(r"(?:true|false)_computation=%([^\s,]+)")
_WINDOW = re.compile(r"window=\{([^}]*)\}")
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([0-9,]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=([^\s,]+)")
_KNOWN_TRIPS = re.compile(r'"known_trip_count":\{"n":"([0-9]+)"\}')
_FFT_LENGTH = re.compile(r"fft_length=\{([0-9,]*)\}")

# Ops XLA's HloCostAnalysis counts as one flop per output element.
_ELEMENTWISE = frozenset("""
  add subtract multiply divide remainder maximum minimum negate abs sign compare select clamp
  and or xor not floor ceil round-nearest-afz round-nearest-even convert-element-type atan2 power
  """.split())
_TRANSCENDENTAL = frozenset("""
  exponential exponential-minus-one log log-plus-one tanh logistic sqrt rsqrt cbrt sine cosine
  tan erf
  """.split())


class Instruction(NamedTuple):
  name: str
  shape: str  # the result type text, e.g. "f32[8,128]{1,0}" or a "(...)" tuple
  opcode: str
  operands: tuple[str, ...]
  attributes: str


class Count(NamedTuple):
  flops: float
  transcendentals: float


def _split_type(text: str) -> tuple[str, str]:
  """'TYPE rest' -> (TYPE, rest); TYPE may be a parenthesised tuple with spaces."""
  if text.startswith("("):
    depth = 0
    for i, ch in enumerate(text):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        return text[:i + 1], text[i + 1:].lstrip()
  head, _, rest = text.partition(" ")
  return head, rest


def _parse_instruction(line: str) -> Instruction | None:
  line = line.strip()
  if line.startswith("ROOT "):
    line = line[5:]
  name, sep, rest = line.partition(" = ")
  if not sep:
    return None
  shape, rest = _split_type(rest)
  opcode, paren, rest = rest.partition("(")
  if not paren:
    return None
  depth, end = 1, len(rest)
  for i, ch in enumerate(rest):
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0:
      end = i
      break
  operands = tuple(o.strip().split(" ")[-1].lstrip("%")
                   for o in re.sub(r"/\*.*?\*/", "", rest[:end]).split(",") if o.strip())
  return Instruction(name.lstrip("%"), shape, opcode.strip(), operands, rest[end + 1:])


def parse_module(hlo_text: str) -> tuple[dict[str, list[Instruction]], str]:
  """Computations by name (instructions in order) and the entry computation's name."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = "", None
  for line in hlo_text.splitlines():
    if current is None:
      header = _HEADER.match(line)
      if header:
        current = header.group(2)
        computations[current] = []
        if header.group(1):
          entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    instruction = _parse_instruction(line)
    if instruction is not None:
      computations[current].append(instruction)
  return computations, entry


def _dims(shape: str) -> list[int]:
  match = _DIMS.match(shape)
  if not match or not match.group(1):
    return []
  return [int(d) for d in match.group(1).split(",")]


def _size(shape: str) -> int:
  if shape.startswith("("):
    return 0
  return math.prod(_dims(shape))


def _constant_value(by_name: dict[str, Instruction], name: str) -> int | None:
  """The integer a scalar operand holds, following copies; None if not a constant."""
  for _ in range(8):
    instruction = by_name.get(name)
    if instruction is None:
      return None
    if instruction.opcode == "constant":
      try:
        return int(instruction.operands[0]) if instruction.operands else None
      except ValueError:
        return None
    if instruction.opcode in ("copy", "bitcast") and instruction.operands:
      name = instruction.operands[0]
      continue
    return None
  return None


def _init_counter(by_name: dict[str, Instruction], while_instruction: Instruction) -> int:
  init = by_name.get(while_instruction.operands[0]) if while_instruction.operands else None
  if init is None or init.opcode != "tuple" or not init.operands:
    return 0
  value = _constant_value(by_name, init.operands[0])
  return value if value is not None else 0


def _limit_constant(computations, condition: str,
                    outer: dict[str, Instruction] | None = None,
                    call: Instruction | None = None) -> int | None:
  """The constant `limit` of the loop condition `counter < limit` (searched into fusions)."""
  instructions = computations.get(condition, [])
  by_name = {i.name: i for i in instructions}

  def value_of(name):
    instruction = by_name.get(name)
    if instruction is not None and instruction.opcode == "parameter" and call is not None:
      index = int(instruction.operands[0])
      return _constant_value(outer, call.operands[index]) if index < len(call.operands) else None
    return _constant_value(by_name, name)

  for instruction in instructions:
    if instruction.opcode == "compare" and "direction=LT" in instruction.attributes:
      for operand in instruction.operands[1:]:
        value = value_of(operand)
        if value is not None:
          return value
    if instruction.opcode == "fusion":
      for called in _CALLS.findall(instruction.attributes):
        value = _limit_constant(computations, called, by_name, instruction)
        if value is not None:
          return value
  return None


def _trips(computations, by_name, instruction: Instruction) -> int:
  """Trip count of a while instruction: XLA's known_trip_count, else read off the condition."""
  known = _KNOWN_TRIPS.search(instruction.attributes)
  if known:
    return int(known.group(1))
  condition = _CONDITION.search(instruction.attributes)
  limit = _limit_constant(computations, condition.group(1)) if condition else None
  if limit is None:
    return 1
  return max(limit - _init_counter(by_name, instruction), 0)


def _window(attributes: str, rank: int) -> dict[str, list]:
  """The convolution's window attributes per spatial dim (XLA defaults filled in)."""
  window = {"size": [1] * rank, "stride": [1] * rank, "pad": [(0, 0)] * rank,
            "lhs_dilate": [1] * rank, "rhs_dilate": [1] * rank}
  match = _WINDOW.search(attributes)
  for item in (match.group(1).split() if match else []):
    key, _, value = item.partition("=")
    if key == "pad":
      window["pad"] = [tuple(int(v) for v in p.split("_")) for p in value.split("x")]
    elif key in window:
      window[key] = [int(v) for v in value.split("x")]
  return window


def _valid_taps(out_size, window_size, stride, pad_low, in_size, lhs_dilate, rhs_dilate) -> int:
  """(output position, window tap) pairs of one spatial dim that read a real input element
  (not padding, not a hole of the lhs dilation), as XLA's HloCostAnalysis counts them."""
  out = np.arange(out_size, dtype=np.int64)
  dilated_in = (in_size - 1) * lhs_dilate + 1
  total = 0
  for tap in range(window_size):
    position = out * stride + tap * rhs_dilate - pad_low
    valid = (position >= 0) & (position < dilated_in) & (position % lhs_dilate == 0)
    total += int(np.count_nonzero(valid))
  return total


def _convolution_flops(instruction: Instruction, by_name: dict[str, Instruction]) -> float:
  """2 * multiply-adds of an HLO convolution (dots on TPU, the FFT's DFT matmuls among them)."""
  lhs = by_name.get(instruction.operands[0])
  rhs = by_name.get(instruction.operands[1]) if len(instruction.operands) > 1 else None
  labels = _DIM_LABELS.search(instruction.attributes)
  if lhs is None or rhs is None or labels is None:
    return 2.0 * _size(instruction.shape)
  lhs_labels, rest = labels.group(1).split("_", 1)
  rhs_labels, out_labels = rest.split("->")
  lhs_dims, rhs_dims, out_dims = _dims(lhs.shape), _dims(rhs.shape), _dims(instruction.shape)
  spatial = [c for c in rhs_labels if c.isdigit()]
  window = _window(instruction.attributes, len(spatial))
  taps = 1
  for i, c in enumerate(spatial):
    taps *= _valid_taps(out_dims[out_labels.index(c)], rhs_dims[rhs_labels.index(c)],
                        window["stride"][i], window["pad"][i][0], lhs_dims[lhs_labels.index(c)],
                        window["lhs_dilate"][i], window["rhs_dilate"][i])
  batch_and_features = out_dims[out_labels.index("b")] * out_dims[out_labels.index("f")]
  return 2.0 * batch_and_features * rhs_dims[rhs_labels.index("i")] * taps


def count_flops(hlo_text: str, *, loop_trips: bool = True) -> Count:
  """FLOPs and transcendentals of an optimized HLO module (text of `compiled.as_text()`).

  loop_trips=False counts each while body once (as XLA's cost analysis does), for checking.
  """
  computations, entry = parse_module(hlo_text)
  memo: dict[str, Count] = {}

  def computation_count(name: str) -> Count:
    if name in memo:
      return memo[name]
    memo[name] = Count(0.0, 0.0)  # guards against cycles
    instructions = computations.get(name, [])
    by_name = {i.name: i for i in instructions}
    flops = transcendentals = 0.0
    for instruction in instructions:
      op, out = instruction.opcode, _size(instruction.shape)
      if op == "dot":
        lhs = by_name.get(instruction.operands[0])
        contracting = _CONTRACTING.search(instruction.attributes)
        if lhs is not None and contracting and contracting.group(1):
          lhs_dims = _dims(lhs.shape)
          k = math.prod(lhs_dims[int(d)] for d in contracting.group(1).split(","))
        else:
          k = 1
        flops += 2.0 * out * k
      elif op == "convolution":
        flops += _convolution_flops(instruction, by_name)
      elif op in _ELEMENTWISE:
        flops += out
      elif op in _TRANSCENDENTAL:
        transcendentals += out
      elif op == "fft":  # as XLA's HloCostAnalysis: 8 log2(n) flops per complex element
        source = by_name.get(instruction.operands[0])
        complex_shape = instruction.shape if instruction.shape.startswith("c") else (
            source.shape if source is not None else instruction.shape)
        lengths = _FFT_LENGTH.search(instruction.attributes)
        n = math.prod(int(d) for d in lengths.group(1).split(",")) if lengths else 1
        flops += 8.0 * int(math.log2(n)) * _size(complex_shape)
      elif op == "reduce":
        operands = instruction.operands
        half = len(operands) // 2  # (inputs..., init values...)
        for operand in operands[:half]:
          source = by_name.get(operand)
          if source is not None:
            flops += max(_size(source.shape) - max(out, 1), 0) / max(half, 1)
      elif op == "while":
        body = _BODY.search(instruction.attributes)
        condition = _CONDITION.search(instruction.attributes)
        trips = _trips(computations, by_name, instruction) if loop_trips else 1
        for called in (body, condition):
          if called:
            c = computation_count(called.group(1))
            flops += trips * c.flops
            transcendentals += trips * c.transcendentals
      elif op == "conditional":
        branches = _BRANCHES.search(instruction.attributes)
        names = ([b.strip().lstrip("%") for b in branches.group(1).split(",")] if branches
                 else _TRUE_FALSE.findall(instruction.attributes))
        counts = [computation_count(b) for b in names if b]
        if counts:
          best = max(counts, key=lambda c: c.flops)
          flops += best.flops
          transcendentals += best.transcendentals
      if op in ("fusion", "call", "map", "async-start", "custom-call") or op.endswith("-start"):
        for called in _CALLS.findall(instruction.attributes):
          c = computation_count(called)
          flops += c.flops
          transcendentals += c.transcendentals
    memo[name] = Count(flops, transcendentals)
    return memo[name]

  return computation_count(entry)
