"""Studies: many models and seeds under one rule, resumable, and one report comparing them.

    result = run_study(["vgg16", "resnet50"], preset="quick", seeds=2, out_dir="study/quick")
    result.report["report.html"]

See :mod:`cifarzoo.study.runner` (the runs), :mod:`cifarzoo.study.executors` (who trains
them: this process, or Ray tasks on a cluster) and :mod:`cifarzoo.study.report` (results
and report files, with the results.json schema).
"""
from cifarzoo.study.runner import (
    RunOutcome,
    RunSpec,
    StudyPlan,
    StudyReporter,
    StudyResult,
    estimate_seconds_left,
    load_plan,
    plan_study,
    run_study,
)


def write_report(out_dir, *, dataset=None, plan=None):
    """(Re)build the report of the study in ``out_dir`` (see :func:`cifarzoo.study.report.write_report`)."""
    from cifarzoo.study.report import write_report as _write

    return _write(out_dir, dataset=dataset, plan=plan)


__all__ = ["RunOutcome", "RunSpec", "StudyPlan", "StudyReporter", "StudyResult", "estimate_seconds_left",
           "load_plan", "plan_study", "run_study", "write_report"]
