"""Progress reporters: what a training run shows while it runs, in a terminal or a notebook.

The library itself never prints: :func:`cifarzoo.train.fit` calls a
:class:`~cifarzoo.train.Reporter` and :func:`cifarzoo.study.run_study` a
:class:`~cifarzoo.study.StudyReporter`; these are the ones that show something.

- :class:`ConsoleReporter` (what ``cifarzoo train`` uses): a tqdm bar per epoch, only on a
  terminal, and one Keras-style line per epoch.
- :class:`NotebookReporter`: the same lines, with Jupyter's widget progress bars
  (``tqdm.notebook``) when it runs inside a kernel and ipywidgets is installed, else
  tqdm's text bars.

- :class:`ConsoleStudyReporter` (what ``cifarzoo benchmark`` uses): one line per study event;
  :class:`NotebookStudyReporter` adds a bar counting the runs.

:func:`make_reporter` / :func:`make_study_reporter` turn the Python API's
``progress="auto"|"bar"|"none"`` into one.
This module imports nothing heavy (tqdm only when a bar is drawn).
"""
from __future__ import annotations

import sys
import time

from cifarzoo.plots import was_evaluated


def printable(text: object) -> str:
    """``text`` with every character a terminal would act on (escape sequences, newlines, other
    control characters) written as its Python escape, so that a class name or path taken from
    a file prints as what it is and cannot move the cursor, recolour or retitle the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def in_notebook() -> bool:
    """Whether this code runs inside a Jupyter kernel (the test tqdm.autonotebook makes)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:  # an odd IPython: treat as a terminal
        return False


def notebook_bar_class():
    """tqdm's widget bar when in a kernel with ipywidgets, else its text bar."""
    if in_notebook():
        try:
            from tqdm.notebook import IProgress, tqdm as notebook_tqdm

            if IProgress is not None:
                return notebook_tqdm
        except ImportError:
            pass
    from tqdm.std import tqdm

    return tqdm


class ConsoleReporter:
    """A progress bar per epoch (only on a TTY) and one Keras-style line per epoch."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.bar = None
        self.epochs = 0
        self.steps = 1
        self.eval_name = "test"

    def _print(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def _new_bar(self, epoch: int, steps: int):
        """The bar for one epoch, or None for no bar."""
        if self.quiet or not self.stream.isatty():
            return None
        from tqdm import tqdm

        return tqdm(total=steps, desc=f"epoch {epoch}/{self.epochs}", leave=False, file=self.stream,
                    dynamic_ncols=True)

    def on_start(self, info: dict) -> None:
        c = info["config"]
        self.epochs = c["epochs"]
        self.eval_name = info["data"]["eval_split"]
        d = info["data"]
        self._print(
            f"{c['model']} (width {c['width_mult']}, {info['parameters']:,} parameters) on {info['device_name']}, "
            f"{info['precision']}{_why(info, 'precision_reason')}{', compiled' if info['compiled'] else ''}"
            f"{_threads(info)}; data: {d['source']} "
            f"({d['train_images']:,} train / {d['eval_images']:,} {d['eval_split']}); run folder: {info['run_dir']}")

    def on_epoch_start(self, epoch: int, steps: int) -> None:
        self.steps = steps
        self.bar = self._new_bar(epoch, steps)

    def on_step(self, epoch: int, step: int, steps: int, global_step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def epoch_line(self, row: dict) -> str:
        return (
            f"epoch {row['epoch']:>3}/{self.epochs} - {row['epoch_seconds']:.1f}s "
            f"- {1000 * row['epoch_seconds'] / max(1, self.steps):.0f}ms/step "
            f"- {row['images_per_second']:,.0f} img/s - lr {row['lr']:.2e} "
            f"- loss {row['train_loss']:.4f} - acc {100 * row['train_acc']:.2f}%"
            + (f" - {self.eval_name}_loss {row['eval_loss']:.4f} - {self.eval_name}_acc {100 * row['eval_acc']:.2f}%"
               if was_evaluated(row) else "")
        )

    def on_epoch_end(self, row: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._print(self.epoch_line(row))

    def on_end(self, summary: dict) -> None:
        multi = summary.get("test_acc_tta_level")
        warm, comp = summary.get("warmup_seconds"), summary.get("compile_seconds")
        self._print(
            f"test accuracy {100 * summary['test_acc']:.2f}% (flip TTA {100 * summary['test_acc_tta']:.2f}%"
            + (f", multi-crop TTA {100 * multi:.2f}%" if multi is not None else "") + "), "
            f"test loss {summary['test_loss']:.4f}; trained {summary['train_seconds']:.1f}s at "
            f"{summary['images_per_second']:,.0f} img/s"
            + (f" (after an untimed {warm:.1f}s warm-up" + (f", {comp:.1f}s of it compiling" if comp is not None
                                                            else "") + ")" if warm is not None else ""))
        if summary.get("status") == "stopped":
            self._print(f"stopped after epoch {summary['epochs_completed']} of {summary['epochs']}: "
                        f"{summary['stop_reason']}")
        if summary.get("weights_epoch") not in (None, summary.get("epochs_completed")):
            self._print(f"the weights are epoch {summary['weights_epoch']}'s, the best on validation "
                        f"({100 * summary['weights_eval_acc']:.2f}%)")
        for warning in summary.get("warnings", []):
            self._print(f"warning: {warning}")


class NotebookReporter(ConsoleReporter):
    """The console's lines, with a bar per epoch always shown: a widget bar in Jupyter.

    While an epoch runs, its bar says ``epoch E/N`` and carries the previous epoch's
    losses and accuracies as its postfix; each finished epoch leaves its full line
    printed under the cell (the bar goes away, so the lines stay readable).
    """

    def __init__(self, stream=None):
        super().__init__(stream=stream)
        self.bar_class = notebook_bar_class()
        self.last: dict | None = None

    def _new_bar(self, epoch: int, steps: int):
        bar = self.bar_class(total=steps, desc=f"epoch {epoch}/{self.epochs}", leave=False)
        if self.last is not None:
            r = self.last
            bar.set_postfix_str(f"loss {r['train_loss']:.4f}, acc {100 * r['train_acc']:.1f}%"
                                + (f", {self.eval_name}_acc {100 * r['eval_acc']:.1f}%" if was_evaluated(r) else ""),
                                refresh=False)
        return bar

    def on_epoch_end(self, row: dict) -> None:
        self.last = row
        super().on_epoch_end(row)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "time left unknown yet"
    s = int(round(seconds))
    if s < 60:
        return f"~{s}s left"
    if s < 3600:
        return f"~{s // 60}m{s % 60:02d}s left"
    return f"~{s // 3600}h{(s % 3600) // 60:02d}m left"


class ConsoleStudyReporter:
    """One line per event: which run of how many, what it does, and the time left for the study."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def _print(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def on_study_start(self, plan, dataset) -> None:
        n = len(plan.runs)
        self._print(
            f"study: {len(plan.models)} model{'s' if len(plan.models) != 1 else ''} "
            f"({', '.join(plan.models)}) x {len(plan.seeds)} seed{'s' if len(plan.seeds) != 1 else ''} = {n} "
            f"run{'s' if n != 1 else ''}, preset {plan.preset}; data: {dataset.source} "
            f"({len(dataset.train_labels):,} train / {len(dataset.test_labels):,} test); folder: {plan.out_dir}")
        self._print(f"rule: {plan.rule}")

    def on_run_start(self, index, total, spec, action, eta_seconds) -> None:
        c = spec.config
        what = {"resumed": "resuming", "trained": "training", "queued": "queued"}.get(action, action)
        self._print(f"[{index}/{total}] {spec.name}: {what} (width {c.width_mult}, {c.epochs} epochs, "
                    f"{c.optimizer} lr {c.lr:g}, batch {c.batch_size or 'auto'}); {_duration(eta_seconds)}")

    def on_epoch_end(self, index, total, spec, row, eta_seconds) -> None:
        self._print(f"[{index}/{total}] {spec.name} epoch {row['epoch']}/{spec.config.epochs} - "
                    f"{row['epoch_seconds']:.1f}s - loss {row['train_loss']:.4f} - "
                    f"acc {100 * row['train_acc']:.1f}%"
                    + (f" - eval_acc {100 * row['eval_acc']:.1f}%" if was_evaluated(row) else "")
                    + f"; {_duration(eta_seconds)}")

    def on_run_end(self, index, total, outcome, eta_seconds) -> None:
        s, name = outcome.summary, outcome.spec.name
        if outcome.where:
            name += f" on {outcome.where}"
        if outcome.action == "skipped":
            extra = (f"test accuracy {100 * s['test_acc']:.2f}%" if outcome.status == "finished"
                     else f"failed ({s.get('kind')}); --force to train it again")
            self._print(f"[{index}/{total}] {name}: done earlier, kept: {extra}")
        elif outcome.status == "finished":
            self._print(f"[{index}/{total}] {name}: test accuracy {100 * s['test_acc']:.2f}% "
                        f"(flip TTA {100 * s['test_acc_tta']:.2f}%) in {outcome.wall_seconds:.0f}s; "
                        f"{_duration(eta_seconds)}")
        else:
            self._print(f"[{index}/{total}] {name}: FAILED ({s.get('kind')}): {s.get('reason')}; "
                        f"{_duration(eta_seconds)}")

    def on_report(self, paths) -> None:
        self._print(f"report: {paths['report.html']} (also report.md, results.json, results.csv) "
                    f"after {time.perf_counter() - self.t0:.0f}s")


class NotebookStudyReporter(ConsoleStudyReporter):
    """The CLI's study lines, under a bar counting the study's runs (a widget bar in Jupyter)."""

    def __init__(self, stream=None):
        super().__init__(stream=stream)
        self.bar_class = notebook_bar_class()
        self.bar = None

    def on_study_start(self, plan, dataset) -> None:
        super().on_study_start(plan, dataset)
        self.bar = self.bar_class(total=len(plan.runs), desc="study runs", unit="run")

    def on_run_end(self, index, total, outcome, eta_seconds) -> None:
        super().on_run_end(index, total, outcome, eta_seconds)
        if self.bar is not None:
            self.bar.update(1)  # runs trained side by side end in any order
            self.bar.set_postfix_str(_duration(eta_seconds))

    def on_report(self, paths) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        super().on_report(paths)


_HOOKS = ("on_start", "on_epoch_start", "on_step", "on_epoch_end", "on_end")
_STUDY_HOOKS = ("on_study_start", "on_run_start", "on_epoch_end", "on_run_end", "on_report")


def _check_progress(progress, hooks: tuple[str, ...], kind: str):
    from cifarzoo.errors import CifarzooError

    if isinstance(progress, str):
        if progress in ("auto", "bar", "none"):
            return progress
    elif all(callable(getattr(progress, m, None)) for m in hooks):
        return progress
    raise CifarzooError(f"progress={progress!r}: expected 'auto', 'bar', 'none' or a {kind} "
                        f"(an object with {', '.join(hooks)})")


def make_reporter(progress="auto"):
    """The training reporter for ``progress``: "auto", "bar", "none", or a Reporter (used as is).

    auto: in a Jupyter kernel, :class:`NotebookReporter`; elsewhere what ``cifarzoo train``
    shows (bars only on a terminal). bar: :class:`NotebookReporter` anywhere. none: nothing.
    """
    progress = _check_progress(progress, _HOOKS, "Reporter")
    if not isinstance(progress, str):
        return progress
    if progress == "none":
        from cifarzoo.train.loop import Reporter

        return Reporter()
    if progress == "bar" or in_notebook():
        return NotebookReporter()
    return ConsoleReporter()


def make_study_reporter(progress="auto"):
    """The study reporter for ``progress``: "auto" as :func:`make_reporter` (CLI lines outside
    Jupyter), "bar" :class:`NotebookStudyReporter` anywhere, "none" nothing."""
    progress = _check_progress(progress, _STUDY_HOOKS, "StudyReporter")
    if not isinstance(progress, str):
        return progress
    if progress == "none":
        from cifarzoo.study.runner import StudyReporter

        return StudyReporter()
    if progress == "bar" or in_notebook():
        return NotebookStudyReporter()
    return ConsoleStudyReporter()


def _why(info: dict, key: str) -> str:
    """`` (reason)`` for a setting config.json explains, unless it was simply asked for."""
    why = info.get(key)
    return f" ({why})" if why and why != "asked for" else ""


def _threads(info: dict) -> str:
    """``, N CPU threads (why)`` on CPU; nothing on GPU or in a config.json written before threads were saved."""
    if info.get("device") != "cpu" or info.get("threads") is None:
        return ""
    n = info["threads"]
    why = (info.get("threads_reason") or "").partition(": ")[2] or "asked for"
    return f", {n} CPU thread{'s' if n != 1 else ''} ({why})"
