"""Timing: implementations take turns in blocks; paired speed-ups."""

import dataclasses
import statistics
import time
from typing import Any, Callable, Sequence

import ml_collections

MIN_TIMED_STEPS = 3


@dataclasses.dataclass
class Timer:
  """One implementation's meta-step, compiled and run once.

  Attributes:
    step: runs one synchronised meta-step (device work finished on return).
    info: row fields known before timing (compile and first-step time, peak
      memory, ...).
    finish: returns row fields known after timing (e.g. the final loss).
  """

  step: Callable[[], None]
  info: dict[str, Any]
  finish: Callable[[], dict[str, Any]] = lambda: {}


def summarise(times_s: Sequence[float], meta_batch: int) -> dict[str, Any]:
  """A row's timing fields from its timed steps' seconds."""
  median = statistics.median(times_s)
  return {
    'median_ms': 1e3 * median,
    'min_ms': 1e3 * min(times_s),
    'max_ms': 1e3 * max(times_s),
    'num_timed_steps': len(times_s),
    'tasks_per_s': meta_batch / median,
  }


def timed_count(
  settings: ml_collections.ConfigDict, last_warmup_s: float
) -> int:
  """Timed steps: `num_steps`, fewer if `max_seconds_per_row` says so."""
  if settings.max_seconds_per_row <= 0 or last_warmup_s <= 0:
    return settings.num_steps
  affordable = int(settings.max_seconds_per_row / last_warmup_s)
  return min(settings.num_steps, max(MIN_TIMED_STEPS, affordable))


def time_interleaved(
  timers: Sequence[Timer], settings: ml_collections.ConfigDict, meta_batch: int
) -> list[dict[str, Any]]:
  """Times the implementations of one configuration in interleaved blocks.

  After `warmup_steps` steps of each, the implementations take turns of one
  untimed step (the others' steps leave caches and thread pools cold) and up
  to `interleave_block` timed ones, so that a change in the machine's load
  shifts every implementation rather than their ratios (why blocks and not
  single steps: benchmarks/README.md). An implementation whose warm-up says
  it would overrun `max_seconds_per_row` leaves after fewer steps.

  Returns:
    One dict per timer: the row fields, or `{'status': 'error', 'error'}`.
  """
  results = [dict(timer.info) for timer in timers]
  last = [timer.info['first_run_s'] for timer in timers]
  active = list(range(len(timers)))

  def run(k: int) -> float | None:
    try:
      start = time.perf_counter()
      timers[k].step()
      return time.perf_counter() - start
    except Exception as e:
      results[k] = {'status': 'error', 'error': f'{type(e).__name__}: {e}'}
      active.remove(k)
      return None

  for k in list(active):
    for _ in range(settings.warmup_steps):
      seconds = run(k)
      if seconds is None:
        break
      last[k] = seconds
  turns = {k: [] for k in active}  # per turn: its timed steps' seconds
  todo = {k: timed_count(settings, last[k]) for k in active}  # timed steps
  block = max(1, settings.interleave_block)
  while any(todo[k] > 0 for k in active):
    for k in list(active):
      if todo[k] <= 0 or run(k) is None:  # the untimed step
        continue
      turn = []
      for _ in range(min(block, todo[k])):
        seconds = run(k)
        if seconds is None:
          break
        turn.append(seconds)
      todo[k] -= len(turn)
      if turn:
        turns[k].append(turn)
  for k in active:
    times = [t for turn in turns[k] for t in turn]
    results[k].update(
      summarise(times, meta_batch),
      status='ok',
      timing=f'interleaved blocks of {block}',
      step_ms=[1e3 * t for t in times],
      turn_median_ms=[1e3 * statistics.median(t) for t in turns[k]],
      **timers[k].finish(),
    )
  return results


def add_paired_speedups(
  rows: Sequence[dict[str, Any]], baseline: str = 'torch_loop'
) -> None:
  """Adds each timed row's speed-up over `baseline`, paired turn by turn.

  Turn `i` of every implementation falls in the same round (see
  `time_interleaved`). `paired_x_vs_<baseline>` is the median over rounds of
  (the baseline's median step time in that round / this row's), with the
  first and third quartiles in `..._quartiles`: a burst of load that hits a
  few turns moves it less than the ratio of the overall medians.

  Args:
    rows: the result rows (modified in place); rows without
      `turn_median_ms` (not timed) are left alone.
    baseline: the implementation to compare against.
  """
  key = f'paired_x_vs_{baseline}'
  base = {
    (r['config'], r['algorithm']): r['turn_median_ms']
    for r in rows
    if r['implementation'] == baseline and r.get('turn_median_ms')
  }
  for r in rows:
    base_turns = base.get((r['config'], r['algorithm']))
    if not base_turns or not r.get('turn_median_ms'):
      continue
    ratios = [b / t for b, t in zip(base_turns, r['turn_median_ms'])]
    r[key] = statistics.median(ratios)
    if len(ratios) > 1:
      q1, _, q3 = statistics.quantiles(ratios, n=4, method='inclusive')
    else:
      q1 = q3 = r[key]
    r[key + '_quartiles'] = [q1, q3]
