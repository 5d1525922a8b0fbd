"""The Python API: what the CLI does, in a few lines of a notebook or a script.

    import cifarzoo as cz
    run = cz.fit("resnet18", data="sample", epochs=3, width_mult=0.25)
    run.evaluate().accuracy          # EvalResult, as `cifarzoo evaluate`
    run.predict(images)              # top-3 classes and probabilities per image
    run.predict_proba(x)             # np.ndarray (N, C); run.model, run.history, cz.lr_find(...)
    run.plot()                       # a matplotlib Figure of the learning curves
    run                              # in Jupyter: the summary table and the curves
    study = cz.benchmark(["resnet18", "vgg16"], preset="quick")
    study.report                     # the path of report.html

These are thin layers over :func:`cifarzoo.train.fit`, :func:`cifarzoo.study.run_study`,
:func:`cifarzoo.evaluate.evaluate` and :func:`cifarzoo.predict.load_classifier`: the same run
folders, guards and reports as the CLI. Nothing here prints; progress goes through a
reporter chosen by ``progress`` ("auto", "bar", "none" or your own Reporter, see
:mod:`cifarzoo.progress`). ``data`` is a ``--data`` spec ("sample", a path, None for the
default CIFAR-10 cache), a :class:`~cifarzoo.data.Dataset`, or arrays in memory
(see :mod:`cifarzoo.data.arrays`). CIFAR-100: ``data="cifar100"`` or its archive's path, and
``labels="coarse"`` (a TrainConfig field like any other) for its 20 superclasses.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from cifarzoo.data.arrays import ARRAYS_SPEC, arrays_needed, is_arrays, other_arrays, resolve_data, resume_dataset
from cifarzoo.errors import CifarzooError


# --------------------------------------------------------------------------- helpers
def _run_folder(path: str | os.PathLike) -> Path:
    from cifarzoo.train.rundir import RunDir

    return RunDir.of(path).path


def _files(run_dir: Path):
    """The run folder's file names (:class:`~cifarzoo.train.rundir.RunDir` owns them)."""
    from cifarzoo.train.rundir import RunDir

    return RunDir(run_dir)


def _read_info(run_dir: Path) -> dict:
    p = _files(run_dir).config_path
    return _read_object(p, dicts=("config", "data")) if p.exists() else {}


def _read_object(path: Path, *, dicts: tuple[str, ...] = (), numbers: tuple[str, ...] = ()) -> dict:
    """A run folder's JSON file as a dict whose ``dicts`` keys hold dicts and ``numbers`` keys numbers (or
    null) where present: a damaged or hand-edited file is one line naming it, not an error from ``repr``."""
    from cifarzoo.io import read_json

    obj = read_json(path)
    if not isinstance(obj, dict):
        raise CifarzooError(f"{path}: damaged: not a JSON object")
    for key in dicts:
        if key in obj and not isinstance(obj[key], dict):
            raise CifarzooError(f"{path}: damaged: {key!r} is not a JSON object")
    for key in numbers:
        if obj.get(key) is not None and (isinstance(obj[key], bool) or not isinstance(obj[key], (int, float))):
            raise CifarzooError(f"{path}: damaged: {key!r} is not a number")
    return obj


def _finished_run(run_dir: Path, config, dataset) -> "Run | None":
    """The finished run that ``run_dir`` holds with ``config`` and the same data (a re-run notebook cell).

    None for a folder that holds no run; raises, in Python terms, for one that holds
    another run (other settings, other arrays, unfinished or failed).
    """
    from cifarzoo.train.rundir import FINISHED, RESUMABLE, RunDir, settings_changed

    folder = RunDir(run_dir)
    if not folder.holds_run():
        return None
    saved = folder.saved_config()
    diff = ["config.json is missing or unreadable"] if saved is None else settings_changed(saved, config)
    if not diff and dataset is not None:
        problem = other_arrays((folder.read_info() or {}).get("data", {}), dataset)
        diff = [problem] if problem else []
    state = folder.state()
    if not diff and state == FINISHED:
        return Run(run_dir, dataset=dataset)
    if diff:
        what = "a run made with other settings: " + ", ".join(diff[:4])
    elif state == RESUMABLE:
        what = f"an interrupted run with these settings; continue it with cifarzoo.fit(resume={str(run_dir)!r})"
    else:
        what = f"a run with these settings that did not finish ({state})"
    raise CifarzooError(f"{run_dir} already holds {what}; pass force=True to train it again from the start, "
                        "or choose another out=")


# --------------------------------------------------------------------------- fit
def fit(
    model: Any = None,
    *,
    data: Any = None,
    classes: Iterable[str] | None = None,
    preset: str | None = None,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    progress: Any = "auto",
    callbacks: Sequence[Any] | None = None,
    runs_root: str | os.PathLike = "runs",
    force: bool = False,
    config: Any = None,
    **settings: Any,
) -> "Run":
    """Train ``model`` and return its :class:`Run` (the run folder, as ``cifarzoo train`` leaves it).

    ``model``: a registered name, ``"package.module:name"``, a factory (class or function taking
    ``num_classes``; recorded by import path) or an ``nn.Module`` (a copy is trained; this process only).
    ``settings``: any :class:`~cifarzoo.train.TrainConfig` fields over the model's recipe, ``preset`` and
    ``config`` (a JSON/TOML settings file, a dict or a TrainConfig); unknown or invalid ones raise
    CifarzooError. ``out`` (default ``runs_root/<model>-<time>``) holding another run is refused unless
    ``force=True``; one holding a finished run with the same settings and data is returned as it is (a
    re-run notebook cell does not train again). ``resume=FOLDER`` continues an interrupted run (one
    trained from arrays needs ``data=`` again); on Ctrl-C, KeyboardInterrupt propagates after a resumable
    checkpoint is written. ``callbacks``: :class:`cifarzoo.Callback` objects, called beside the progress
    display, never instead of it.
    """
    from cifarzoo.progress import make_reporter
    from cifarzoo.train.callbacks import check_callbacks
    from cifarzoo.train import fit

    reporter = make_reporter(progress)
    callbacks = [*check_callbacks(callbacks, "val"), reporter]  # the split is checked by fit; the display last
    if resume is not None:
        if model is not None or preset is not None or settings or out is not None:
            given = [n for n, v in (("model", model), ("preset", preset), ("out", out)) if v is not None]
            raise CifarzooError("resume=: a resumed run keeps its settings and folder; drop "
                                + ", ".join(given + sorted(settings)))
        run_dir = _run_folder(resume)
        dataset = resume_dataset(run_dir, _read_info(run_dir), data, classes)
        kwargs = dict(resume=resume, dataset=dataset)
    else:
        config, dataset = _new_config(model, data, classes, preset, config, settings)
        from cifarzoo.train.rundir import run_folder

        run_dir = run_folder(config.model, out, runs_root)
        done = None if force else _finished_run(run_dir, config, dataset)
        if done is not None:
            return done
        kwargs = dict(config=config, dataset=dataset, out_dir=run_dir, force=force)
    try:
        result = fit(callbacks=callbacks, **kwargs)
    except KeyboardInterrupt as exc:
        if _files(run_dir).checkpoint_path.exists() and hasattr(exc, "add_note"):  # Python >= 3.11
            exc.add_note(f"a resumable checkpoint is in {run_dir}: cifarzoo.fit(resume={str(run_dir)!r}"
                         + (", data=...)" if dataset is not None else ")"))
        raise
    return Run(result.run_dir, dataset=dataset)


def _new_config(model: Any, data: Any, classes, preset: str | None, config: Any, settings: dict):
    """(the TrainConfig, the in-memory Dataset or None) of a new run of :func:`fit`."""
    from cifarzoo.train import make_config

    if model is None and config is None:
        raise CifarzooError("fit() needs a model name (see `cifarzoo models`), or resume=RUN_FOLDER")
    model = _model_key(model) if model is not None else None
    spec, dataset = resolve_data(data, classes)
    if dataset is not None and dataset.labelling and "labels" not in settings:
        settings["labels"] = dataset.labelling  # a CIFAR-100 Dataset: saved, so its path reloads the same
    if config is None:
        return make_config(model, preset=preset, data=spec, **settings), dataset
    from cifarzoo.config_file import given_config

    return given_config(config, model, preset, {"data": spec, **settings}), dataset


def _model_key(model: Any) -> str:
    """A model name as given, or the key that a factory or an ``nn.Module`` instance is recorded under."""
    if isinstance(model, str):
        return model
    from cifarzoo.models import model_key

    return model_key(model)


def lr_find(model: Any, *, data: Any = "sample", classes: Iterable[str] | None = None, steps: int = 60,
            lo: float = 1e-5, hi: float = 10.0, batch_size: int = 64, **settings: Any):
    """A learning-rate range test (Smith 2017), as ``cifarzoo doctor`` runs it, for a notebook.

    ``model``: what :func:`fit` takes (a name, a factory, an ``nn.Module``, whose copy is
    used); ``settings``: TrainConfig fields over the model's recipe (the optimizer and its
    parameter groups come from them). The lr rises exponentially from ``lo`` to ``hi`` over
    ``steps`` training batches of ``data``, on the CPU, until the loss diverges. Returns
    :class:`cifarzoo.doctor.LRCurve`: ``.lrs``, ``.losses``, ``.suggested_lr`` and ``.plot()``.
    """
    import torch

    from cifarzoo import models
    from cifarzoo.doctor import lr_range_curve
    from cifarzoo.train import make_config

    if not (isinstance(steps, int) and not isinstance(steps, bool) and 2 <= steps <= 10_000):
        raise CifarzooError(f"steps must be an integer in [2, 10000], got {steps!r}")
    if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 < lo < hi):
        raise CifarzooError(f"lo and hi must be learning rates with 0 < lo < hi, got lo={lo!r}, hi={hi!r}")
    spec, dataset = resolve_data(data, classes)
    if dataset is None:
        from cifarzoo.data import load

        dataset = load(spec, labels=settings.get("labels") or "fine", progress=False)
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool)
            and 1 <= batch_size <= len(dataset.train_labels)):
        raise CifarzooError(f"batch_size must be an integer in [1, {len(dataset.train_labels)}] (the training "
                            f"images), got {batch_size!r}")
    config = make_config(_model_key(model), data=spec, **settings)
    torch.manual_seed(config.seed)
    net = models.from_config(config, dataset.num_classes)
    return lr_range_curve(net, dataset, config, steps=steps, lo=float(lo), hi=float(hi), batch_size=batch_size,
                          seed=config.seed)


def load_run(path: str | os.PathLike) -> "Run":
    """Reopen a run folder (made by ``cifarzoo train``, :func:`fit` or a study) as a :class:`Run`."""
    return Run(path)


def load_data(spec: str | os.PathLike | None = "sample", labels: str = "fine"):
    """``((x_train, y_train), (x_test, y_test))`` of a ``--data`` source, shaped like Keras' ``load_data()``.

    ``labels``: CIFAR-100's "fine" (100 classes) or "coarse" (20) labels.
    Images uint8 ``(N, 32, 32, 3)``, labels ``(N, 1)``. Default: the bundled sample
    (5,000 train / 1,000 test CIFAR-10 images, offline). Class names:
    ``cifarzoo.data.load(spec).classes`` (the sample's are CIFAR-10's, the default of ``classes=``).
    """
    from cifarzoo.data import load
    from cifarzoo.data.arrays import as_keras_arrays

    return as_keras_arrays(load(spec, labels=labels, progress=False))


# --------------------------------------------------------------------------- Run
class Run:
    """A run folder: its settings, metrics and summary, and the model in it.

    Everything is read from the folder, so a Run made by :func:`fit`, by
    :func:`load_run` or for a study's run shows the same thing.
    """

    def __init__(self, run_dir: str | os.PathLike, *, dataset=None):
        self.run_dir = _run_folder(run_dir)
        if not _files(self.run_dir).config_path.is_file():
            raise CifarzooError(f"{run_dir}: not a run folder (no config.json); give a folder made by "
                                "`cifarzoo train` or cifarzoo.fit()")
        self._dataset = dataset  # the arrays it was trained on, when trained from memory in this session

    # ---- what the folder says
    @property
    def info(self) -> dict:
        """config.json: settings, data (source, classes, statistics), device, versions."""
        return _read_info(self.run_dir)

    @property
    def config(self):
        """The run's :class:`~cifarzoo.train.TrainConfig`."""
        from cifarzoo.train.config import TrainConfig

        info = self.info
        if "config" not in info:
            raise CifarzooError(f"{_files(self.run_dir).config_path}: damaged: it holds no 'config'")
        try:
            return TrainConfig.from_dict(info["config"])
        except CifarzooError as exc:
            raise CifarzooError(f"{_files(self.run_dir).config_path}: damaged: {exc}") from None

    @property
    def summary(self) -> dict:
        """summary.json (test accuracy, loss, time, memory, ...); {} while the run is unfinished."""
        p = _files(self.run_dir).summary_path
        return _read_object(p, numbers=("test_acc", "test_loss", "test_acc_tta", "train_seconds")) if p.exists() else {}

    @property
    def metrics(self) -> list[dict]:
        """One dict per finished epoch (metrics.csv): epoch, lr, train/eval loss and accuracy, seconds, img/s."""
        from cifarzoo.train.rundir import read_metrics

        p = _files(self.run_dir).metrics_path
        return read_metrics(p) if p.exists() else []

    @property
    def classes(self) -> list[str]:
        return list(self.info.get("data", {}).get("classes", []))

    @property
    def trained_on_arrays(self) -> bool:
        return self.info.get("config", {}).get("data") == ARRAYS_SPEC

    def __repr__(self) -> str:
        s = self.summary
        acc = f", test accuracy {100 * s['test_acc']:.2f}%" if s.get("test_acc") is not None else ""
        model = self.info.get("config", {}).get("model")
        return f"Run({str(self.run_dir)!r}: {model}, {s.get('status', 'unfinished')}{acc})"

    # ---- using the model
    def evaluate(self, data: Any = None, *, classes: Iterable[str] | None = None, labels: str | None = None,
                 tta: bool = False, device: str = "auto", save: bool = True):
        """Test accuracy, loss, per-class accuracy and confusion matrix, as ``cifarzoo evaluate``.

        ``data``: default the run's own source (for a run trained from arrays in this
        session, those arrays); or any ``data=`` form :func:`fit` takes (a spec is loaded
        with ``labels``, default the run's own). Returns
        :class:`cifarzoo.evaluate.EvalResult`; ``save`` writes confusion.json/.png into the folder.
        """
        from cifarzoo.evaluate import evaluate

        spec, dataset = (None, None) if data is None else resolve_data(
            data, classes if classes is not None or not is_arrays(data) else self.classes)
        if data is None and self.trained_on_arrays:
            if self._dataset is None:
                raise arrays_needed(self.run_dir, "evaluate it")
            dataset = self._dataset
        return evaluate(self.run_dir, data=spec, labels=labels, dataset=dataset, tta=tta, device=device, save=save)

    def predict(self, images: Any, *, top_k: int = 3, as_labels: bool = False, device: str = "auto"):
        """Top-``top_k`` classes and probabilities of each image, as ``cifarzoo predict``.

        ``images``: uint8 ``(N, 32, 32, 3)`` or one ``(32, 32, 3)`` array, an image file path,
        a PIL image, or a list of these (files and PIL images of any size are converted
        to 32x32 RGB as ``cifarzoo predict`` does). Returns one
        :class:`cifarzoo.predict.Prediction` per image, in order (``.top``: [(class,
        probability)], best first; ``.error`` set for a file that cannot be read).
        ``as_labels=True``: an int64 array ``(N,)`` of class indices into :attr:`classes`
        instead (Keras' ``argmax`` of ``predict``); an unreadable file then raises.
        """
        from cifarzoo.predict import check_top_k, predict_images

        if as_labels:
            return self.predict_proba(images, device=device).argmax(axis=1)
        check_top_k(top_k, "top_k")
        return predict_images(self.run_dir, images, top_k=top_k, device=device)

    def predict_proba(self, images: Any, *, device: str = "auto"):
        """Class probabilities, a float32 array ``(N, C)`` whose rows sum to 1 (columns: :attr:`classes`).

        ``images``: any form :meth:`predict` takes; an image that cannot be read raises.
        """
        import numpy as np

        from cifarzoo.predict import load_classifier, probabilities, read_images

        names, arrays, errors = read_images(images)
        bad = next((e for e in errors if e is not None), None)
        if bad is not None:
            raise CifarzooError(bad)
        return probabilities(load_classifier(self.run_dir, device=device), np.stack(arrays), names=names,
                             source=self.run_dir)

    @property
    def model(self):
        """The trained network in eval mode on the CPU, behind its input normalization (a new copy each time).

        It takes images as they come, ``(B, 32, 32, 3)`` uint8 or float in [0, 255], and returns
        logits ``(B, C)`` (:class:`cifarzoo.inference.ImageClassifier`); ``.model`` is the bare
        network, which takes normalized ``(B, 3, 32, 32)`` float batches.
        """
        from cifarzoo.inference import ImageClassifier
        from cifarzoo.train.checkpoint import load_model

        net, ckpt = load_model(self.run_dir)
        return ImageClassifier(net, ckpt["normalization"]["mean"], ckpt["normalization"]["std"]).eval()

    @property
    def history(self):
        """:attr:`metrics` as a pandas DataFrame, one row per epoch (Keras' ``History.history``); the list of
        dicts when pandas is not installed."""
        rows = self.metrics
        try:
            import pandas as pd
        except ImportError:
            return rows
        from cifarzoo.train.rundir import METRIC_COLUMNS

        return pd.DataFrame(rows, columns=list(rows[0]) if rows else list(METRIC_COLUMNS))

    # ---- display
    def plot(self, *, pyplot: bool | None = None):
        """The loss and accuracy curves as a matplotlib Figure: shown inline in Jupyter, by ``plt.show()``
        once pyplot is imported, or saved with ``.savefig`` (``pyplot``: see :func:`cifarzoo.plots.user_figure`)."""
        from cifarzoo.plots import CURVES_SIZE, curves_figure, user_figure

        rows = self.metrics
        if not rows:
            raise CifarzooError(f"{self.run_dir}: no finished epoch yet (metrics.csv is missing or empty)")
        info = self.info
        c = info.get("config", {})
        return curves_figure(rows, title=f"{c.get('model')} (width {c.get('width_mult')}, seed {c.get('seed')})",
                             eval_name=info.get("data", {}).get("eval_split", "eval"),
                             fig=user_figure(CURVES_SIZE, pyplot=pyplot))

    def _repr_html_(self) -> str:
        info, s, rows = self.info, self.summary, self.metrics
        c, d = info.get("config", {}), info.get("data", {})
        items = [("run folder", str(self.run_dir)), ("model", f"{c.get('model')} (width {c.get('width_mult')})"),
                 ("status", s.get("status", f"unfinished ({len(rows)} of {c.get('epochs')} epochs)"))]
        if s.get("test_acc") is not None:
            items += [("test accuracy", f"{100 * s['test_acc']:.2f}%"),
                      ("flip TTA", f"{100 * s['test_acc_tta']:.2f}%" if s.get("test_acc_tta") is not None else "–"),
                      ("test loss", f"{s['test_loss']:.4f}" if s.get("test_loss") is not None else "–"),
                      ("train time", f"{s['train_seconds']:.1f} s"),
                      ("images/s", f"{s['images_per_second']:,.0f}" if s.get("images_per_second") else "–")]
        items += [("epochs", f"{len(rows)} of {c.get('epochs')}"),
                  ("parameters", f"{info['parameters']:,}" if "parameters" in info else "–"),
                  ("device", f"{info.get('device_name', '–')}, {info.get('precision', '–')}"),
                  ("data", f"{d.get('source', '–')}")]
        parts = [_kv_table(items)]
        if rows:
            from cifarzoo.io import figure_bytes

            parts.append(_img(figure_bytes(self.plot(pyplot=False)), "learning curves"))  # not left open in pyplot
        return '<div class="cifarzoo-run">' + "".join(parts) + "</div>"


def _kv_table(items: list[tuple[str, str]]) -> str:
    e = html.escape
    return ("<table>" + "".join(f'<tr><th style="text-align:left">{e(k)}</th><td style="text-align:left">'
                                f"{e(str(v))}</td></tr>" for k, v in items) + "</table>")


def _img(png: bytes, alt: str) -> str:
    from cifarzoo.io import png_data_uri

    return (f'<img src="{png_data_uri(png)}" '
            f'alt="{html.escape(alt)}" style="max-width:100%">')


# --------------------------------------------------------------------------- studies
def benchmark(
    models: Sequence[str] | str | None = None,
    *,
    preset: str = "quick",
    seeds: int = 1,
    data: Any = None,
    classes: Iterable[str] | None = None,
    out: str | os.PathLike | None = None,
    force: bool = False,
    progress: Any = "auto",
    jobs: int | None = None,
    callbacks: Sequence[Any] | None = None,
    **overrides: Any,
) -> "Study":
    """Train every model under one rule and write the report, as ``cifarzoo benchmark``; returns a :class:`Study`.

    Same folder layout (default ``study/<preset>``), the same resuming of an interrupted
    study, and ``overrides`` (any TrainConfig field, e.g. ``epochs=2``) for every model.
    ``jobs``: runs trained at once, each in a process of its own, as ``--jobs`` (default:
    one per physical core for the quick and cpu presets on a CPU, else one). ``callbacks``: for
    every run, each run its own copy (they must pickle: runs may train in other processes).
    """
    from cifarzoo.progress import make_study_reporter
    from cifarzoo.study import run_study
    from cifarzoo.study.executors import LocalExecutor

    reporter = make_study_reporter(progress)
    spec, dataset = resolve_data(data, classes)
    if dataset is not None and dataset.labelling and "labels" not in overrides:
        overrides["labels"] = dataset.labelling
    out = Path(out) if out is not None else Path("study") / preset
    executor = None if jobs is None else LocalExecutor(jobs)
    result = run_study(models, preset=preset, seeds=seeds, data=spec, out_dir=out, force=force,
                       reporter=reporter, dataset=dataset, executor=executor, callbacks=callbacks, **overrides)
    return Study(result.plan.out_dir)


def tune(model: str | None = None, *, out: str | os.PathLike, progress: Any = "none", **kwargs: Any):
    """Search ``model``'s training settings on the validation split with Ray Tune (as ``cifarzoo tune``);
    returns a :class:`cifarzoo.tuning.TuneResult`. ``progress`` shows the final run's; ``kwargs``: see
    :func:`cifarzoo.tuning.tune` (``trials``, ``budget``, ``search``, ``space``, training settings, ...)."""
    from cifarzoo.progress import make_reporter
    from cifarzoo.tuning import tune as search

    return search(model, out=out, reporter=make_reporter(progress), **kwargs)


def load_study(path: str | os.PathLike) -> "Study":
    """Reopen a study folder (``cifarzoo benchmark --out DIR`` or :func:`benchmark`) as a :class:`Study`."""
    return Study(path)


class Study:
    """A study folder with its report: ``results`` (one dict per model), ``runs``, ``report`` (report.html)."""

    FIGURES = ("curves.png", "tradeoffs.png")  # shown inline, in this order, when the report has them

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        if not (self.out_dir / "results.json").is_file():
            raise CifarzooError(f"{out_dir}: no study report here (results.json missing); run "
                                f"cifarzoo.benchmark(..., out={str(out_dir)!r}) first")

    @property
    def report(self) -> Path:
        """The self-contained report.html."""
        return self.out_dir / "report.html"

    @property
    def results(self) -> list[dict]:
        """One row per model from results.json (test_acc_mean/std, train_seconds_mean, parameters, ...)."""
        from cifarzoo.io import read_json

        return list(read_json(self.out_dir / "results.json").get("models", []))

    @property
    def runs(self) -> list[Run]:
        """Every run folder of the study that has started, as a :class:`Run`."""
        root = self.out_dir / "runs"
        return [Run(p) for p in sorted(root.iterdir()) if _files(p).config_path.is_file()] if root.is_dir() else []

    def __repr__(self) -> str:
        return f"Study({str(self.out_dir)!r}: {', '.join(r['model'] for r in self.results)}; report {self.report})"

    def _repr_html_(self) -> str:
        def pct(m, s=None):
            return "–" if m is None else f"{100 * m:.2f}%" + (f" ± {100 * s:.2f}" if s is not None else "")

        head = ["Model", "Status", "Test accuracy", "Flip TTA", "Test loss", "Train time", "Parameters",
                "Epochs", "Seeds"]
        body = [[r["model"], r["status"], pct(r.get("test_acc_mean"), r.get("test_acc_std")),
                 pct(r.get("test_acc_tta_mean"), r.get("test_acc_tta_std")),
                 "–" if r.get("test_loss_mean") is None else f"{r['test_loss_mean']:.4f}",
                 "–" if r.get("train_seconds_mean") is None else f"{r['train_seconds_mean']:.1f} s",
                 "–" if r.get("parameters") is None else f"{r['parameters']:,}", r.get("epochs"),
                 r.get("n_seeds")] for r in self.results]
        e = html.escape
        table = ("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"
                 + "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in body)
                 + "</tbody></table>")
        figs = [_img((self.out_dir / "figures" / name).read_bytes(), name) for name in self.FIGURES
                if (self.out_dir / "figures" / name).is_file()]
        link = f"<p>Full report: <code>{e(str(self.report))}</code></p>"
        return '<div class="cifarzoo-study">' + table + "".join(figs) + link + "</div>"
