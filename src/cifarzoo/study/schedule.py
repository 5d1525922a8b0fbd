"""When a study's runs start on a few workers, and when they will all be done: pure arithmetic.

A study on a CPU trains one run per core side by side (:class:`cifarzoo.study.executors.LocalExecutor`
with ``jobs``); each waiting run starts on the first worker to free up. Two rules keep every
core busy to the end:

- :func:`start_order`: the runs start in the order whose schedule ends soonest (the workers
  finish together as nearly as the runs' costs allow), dearest first among equals;
- :func:`alone_threads`: once no run waits, the runs still training share all the cores
  (a run that trains alone on two cores gets both).

:func:`finish_times` is the schedule itself, used for the order and for the study's time
left (the ETA): each running run's rest at its own measured pace, each waiting run at the
pace measured so far, laid out on the workers in start order.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Sequence

# Up to this many runs the order is searched exhaustively (8! = 40,320 schedules of 8 runs,
# a fraction of a second); above it, dearest first (within 4/3 of the best, Graham 1969).
SEARCHED_RUNS = 8


def finish_times(busy: Sequence[float], waiting: Sequence[float], slots: int) -> list[float]:
    """When each run ends, in seconds from now: ``busy`` the seconds left of the runs training
    now (one per worker), then ``waiting`` (seconds each) in the order they start, each on the
    first of ``slots`` workers to free up. Returns the busy runs' ends, then the waiting runs'."""
    if slots < 1 or len(busy) > slots:
        raise ValueError(f"{len(busy)} runs training on {slots} workers")
    free = sorted([max(0.0, b) for b in busy] + [0.0] * (slots - len(busy)))
    ends = [max(0.0, b) for b in busy]
    for seconds in waiting:
        start = heapq.heappop(free)
        ends.append(start + max(0.0, seconds))
        heapq.heappush(free, ends[-1])
    return ends


def makespan(busy: Sequence[float], waiting: Sequence[float], slots: int) -> float:
    """Seconds until the last run ends (0 with nothing to do)."""
    return max(finish_times(busy, waiting, slots), default=0.0)


def start_order(costs: Sequence[float], slots: int) -> list[int]:
    """Positions of ``costs`` in the order their runs should start on ``slots`` idle workers: the
    order with the shortest schedule (so the workers finish together as nearly as the costs allow),
    the dearest-first one among those as short; dearest first for more than SEARCHED_RUNS runs.
    A NaN cost (a run that could not be sized) starts last."""
    known = [i for i, c in enumerate(costs) if c == c]
    dearest = sorted(known, key=lambda i: -costs[i]) + [i for i, c in enumerate(costs) if c != c]
    if len(known) > SEARCHED_RUNS or len(known) <= slots:
        return dearest
    best, best_span = dearest, makespan([], [costs[i] for i in dearest[:len(known)]], slots)
    for order in itertools.permutations(dearest[:len(known)]):
        span = makespan([], [costs[i] for i in order], slots)
        if span < best_span * (1 - 1e-9):
            best, best_span = list(order) + dearest[len(known):], span
    return best


def alone_threads(cores: int, running: int, waiting: int) -> int | None:
    """Torch threads for each of ``running`` runs once ``waiting`` is 0: an equal share of
    ``cores`` (so a run training alone gets them all); None while runs still wait for a worker."""
    if waiting or running < 1:
        return None
    return max(1, cores // running)


def run_rest(epochs_done: int, epochs: int, last_epoch_seconds: float, since_last_epoch: float) -> float:
    """Seconds left of a run with ``epochs_done`` of ``epochs`` behind it, at the pace of its latest
    epoch (``last_epoch_seconds``; the latest, since a run's threads may have been raised), less the
    ``since_last_epoch`` seconds already spent on the next one."""
    return max(0.0, last_epoch_seconds * (epochs - epochs_done) - since_last_epoch)


# A run training now, as seconds_left reads it: (epochs done, epochs, seconds of its latest epoch,
# seconds since that epoch ended, seconds since the run started, cost).
Running = tuple[int, int, float, float, float, float]


def seconds_left(finished: Sequence[tuple[float, float]], running: Sequence[Running],
                 waiting: Sequence[float], slots: int) -> float | None:
    """The study's time left on ``slots`` workers, from what has been measured so far.

    ``finished``: ``(wall seconds, cost)`` of the runs done; ``running``: see :data:`Running`;
    ``waiting``: the costs of the runs not started, in start order. A running run with an epoch
    behind it goes on at its latest epoch's pace (:func:`run_rest`); the others are priced at the
    seconds per unit of cost measured so far (the finished runs and the running runs' epochs
    done), less what they have run already, and all are laid out on the workers
    (:func:`makespan`): three equal runs left on two workers take two runs' time, not one and a
    half. None while nothing has been measured.
    """
    paces = list(finished) + [(elapsed - since, cost * done / epochs)
                              for done, epochs, _, since, elapsed, cost in running if done]
    measured = sum(c for _, c in paces)
    if not measured > 0:
        return None if running or waiting else 0.0
    rate = sum(w for w, _ in paces) / measured  # seconds per unit of cost
    busy = [run_rest(done, epochs, last, since) if done else max(0.0, rate * cost - elapsed)
            for done, epochs, last, since, elapsed, cost in running]
    return makespan(busy, [rate * c for c in waiting], slots)
