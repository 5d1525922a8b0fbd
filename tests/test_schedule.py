"""The study's schedule on a few workers: start order, threads once no run waits, and the time left."""
from __future__ import annotations

import math

import pytest

from cifarzoo.study.schedule import (alone_threads, finish_times, makespan, run_rest, seconds_left,
                                     start_order)


def test_finish_times_start_each_waiting_run_on_the_first_worker_to_free_up():
    # two workers busy for 3 and 5 s; runs of 4, 4 and 1 s start at 3, 5 and 7
    assert finish_times([3.0, 5.0], [4.0, 4.0, 1.0], 2) == [3.0, 5.0, 7.0, 9.0, 8.0]
    assert makespan([3.0, 5.0], [4.0, 4.0, 1.0], 2) == 9.0
    assert finish_times([], [2.0, 2.0, 2.0], 2) == [2.0, 2.0, 4.0]
    assert makespan([], [], 2) == 0.0
    with pytest.raises(ValueError):
        finish_times([1.0, 1.0, 1.0], [], 2)


def test_start_order_lets_the_workers_finish_together():
    # dearest first (5, 4, 3, 3, 3) ends at 10 on one worker and 8 on the other (end 10);
    # 5 + 4 on one and 3 + 3 + 3 on the other end together at 9
    costs = [3.0, 3.0, 5.0, 4.0, 3.0]
    order = start_order(costs, 2)
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert makespan([], [costs[i] for i in order], 2) == 9.0
    assert makespan([], sorted(costs, reverse=True), 2) == 10.0
    # equal costs (the cpu preset's equal budgets) or as many runs as workers: dearest first, stable
    assert start_order([1.0, 1.0, 1.0], 2) == [0, 1, 2]
    assert start_order([1.0, 2.0], 2) == [1, 0]
    # a run that could not be sized (NaN) starts last
    assert start_order([float("nan"), 1.0, 2.0, 3.0], 2)[-1] == 0


def test_start_order_falls_back_to_dearest_first_for_many_runs():
    costs = [float(c) for c in range(1, 12)]
    assert start_order(costs, 2) == list(range(10, -1, -1))


def test_a_run_left_alone_gets_every_core():
    assert alone_threads(2, 1, 0) == 2  # the last run of a two-core study trains on both
    assert alone_threads(2, 2, 0) == 1
    assert alone_threads(8, 3, 0) == 2
    assert alone_threads(2, 1, 1) is None  # a run still waits: it takes the free core instead
    assert alone_threads(2, 0, 0) is None


def test_run_rest_goes_on_at_the_latest_epochs_pace():
    assert run_rest(2, 5, 100.0, 30.0) == 270.0
    assert run_rest(5, 5, 100.0, 0.0) == 0.0
    assert run_rest(4, 5, 100.0, 150.0) == 0.0  # late: never negative


def test_seconds_left_lays_the_rest_out_on_the_workers():
    assert seconds_left([], [], [1.0], 2) is None
    assert seconds_left([], [(0, 5, 0.0, 0.0, 10.0, 1.0)], [1.0], 2) is None
    assert seconds_left([], [], [], 2) == 0.0
    # what the issue saw: two runs 1 epoch of 2 in (300 s each), one 600 s run waiting. Each
    # running run has 300 s left, then the waiting one trains alone: 900 s, not (300+300+600)/2
    running = [(1, 2, 300.0, 0.0, 300.0, 1.0)] * 2
    assert seconds_left([], running, [1.0], 2) == pytest.approx(900.0)
    # three equal runs still to start on two workers take two runs' time
    assert seconds_left([(600.0, 1.0)], [], [1.0, 1.0, 1.0], 2) == pytest.approx(1200.0)
    # a run without an epoch behind it is priced at the pace so far, less what it has run
    left = seconds_left([(600.0, 1.0)], [(0, 4, 0.0, 0.0, 100.0, 2.0)], [], 2)
    assert left == pytest.approx(1100.0)
    # the latest epoch's pace wins over the average (its threads were raised): 1 epoch of 50 s left
    assert seconds_left([], [(3, 4, 50.0, 0.0, 250.0, 1.0)], [], 2) == pytest.approx(50.0)
    assert math.isfinite(seconds_left([(10.0, 1.0)], [], [2.0, float(3)], 1))
    assert seconds_left([(10.0, 1.0)], [], [2.0, 3.0], 1) == pytest.approx(50.0)
