"""Studies: many models and seeds under one rule, resumable, and one report comparing them.

    result = run_study(["vgg16", "resnet50"], preset="quick", seeds=2, out_dir="study/quick")
    result.report["report.html"]

:mod:`cifarzoo.study.plan` says what a study is, :mod:`cifarzoo.study.runner` decides
which runs need training and hands them to an executor (:mod:`cifarzoo.study.executors`:
this process, or Ray tasks on a cluster), :mod:`cifarzoo.study.training` trains one, and
:mod:`cifarzoo.study.report` writes the report from the run folders (with the results.json
schema). Runner and report import the plan, never each other: this module runs, then reports.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from cifarzoo.study.plan import (ORIGINAL_STUDY, STUDY_MODELS, RunSpec, StudyPlan, load_plan, plan_study,
                                 with_recorded_models)
from cifarzoo.study.report import write_report
from cifarzoo.study.runner import StudyResult, execute, with_callbacks
from cifarzoo.study.training import RunOutcome, StudyReporter, estimate_seconds_left


def run_plan(plan: StudyPlan, *, force: bool = False, reporter: StudyReporter | None = None, dataset=None,
             report: bool = True, executor=None, callbacks=None,
             tracking=None) -> StudyResult:
    """Train every run of ``plan`` not done yet (:func:`cifarzoo.study.runner.execute`), then write the report.

    ``callbacks``: :class:`cifarzoo.Callback` objects for every run; each run gets its own copy,
    made by pickling them (see :func:`cifarzoo.study.runner.with_callbacks`).
    ``tracking`` (a :class:`cifarzoo.tracking.TrackingSpec`): the loggers every run trained now gets;
    with MLflow, the study is one parent run and each of these runs a child run of it.
    """
    reporter = reporter or StudyReporter()
    plan = with_callbacks(plan, callbacks)
    if tracking is not None:
        from dataclasses import replace

        from cifarzoo.tracking import end_study, start_study

        tracking = start_study(tracking, plan)
        plan = replace(plan, runs=tuple(replace(s, tracking=tracking) for s in plan.runs))
    try:
        result = execute(plan, force=force, reporter=reporter, dataset=dataset, executor=executor)
        if report:  # the whole study: also the models an earlier invocation trained (with_recorded_models)
            result.report = write_report(plan.out_dir, dataset=result.dataset, plan=with_recorded_models(plan))
            reporter.on_report(result.report)
    except BaseException:
        if tracking is not None:
            end_study(tracking, "KILLED")
        raise
    if tracking is not None:
        end_study(tracking, "FAILED" if result.failed else "FINISHED", result.report)
    return result


def run_study(
    models: Sequence[str] | str | None = None,
    *,
    preset: str = "standard",
    seeds: int = 1,
    data: str | None = None,
    out_dir: str | os.PathLike = "study",
    force: bool = False,
    reporter: StudyReporter | None = None,
    dataset=None,
    report: bool = True,
    executor=None,
    callbacks=None,
    tracking=None,
    **overrides: Any,
) -> StudyResult:
    """Train every (model, seed) of a study that is not done yet, then write its report.

    ``dataset`` (a :class:`cifarzoo.data.Dataset`) skips loading ``data``; every run
    gets the same one. See :mod:`cifarzoo.study.runner` for what happens to existing
    run folders; ``executor`` trains the runs (default: on this machine, one after the other,
    or one per physical core where the preset says so on a CPU: ``LocalExecutor(default_jobs(plan))``;
    :class:`cifarzoo.study.executors.RayExecutor` for a Ray cluster).
    """
    plan = plan_study(models, preset=preset, seeds=seeds, data=data, out_dir=out_dir, **overrides)
    return run_plan(plan, force=force, reporter=reporter, dataset=dataset, report=report, executor=executor,
                    callbacks=callbacks, tracking=tracking)


__all__ = ["ORIGINAL_STUDY", "STUDY_MODELS", "RunOutcome", "RunSpec", "StudyPlan", "StudyReporter", "StudyResult",
           "estimate_seconds_left", "execute", "load_plan", "plan_study", "run_plan", "run_study", "write_report"]
