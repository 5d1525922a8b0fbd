"""Experiment tracking with the real tools: a TensorBoard writer and an MLflow logger, as training callbacks.

    fit(config, callbacks=[TensorBoardLogger()])         # RUN_DIR/tensorboard: `tensorboard --logdir runs`
    fit(config, callbacks=[MLflowLogger()])           # MLflow's default store, or MLflowLogger("http://host:5000")
    cifarzoo train resnet18 --log tensorboard,mlflow [--mlflow-uri URI]

Both see the run through the callback methods only (on_start: config.json's content; on_epoch_end:
the metrics.csv row; on_end: summary.json's content) and read what else they need from the run
folder once it is complete (metrics.csv, curves.png's data, the final checkpoint). The same names
are used in both tools: ``train/loss``, ``train/acc``, ``val/...`` or ``test/...`` (the split the run
evaluates on each epoch), ``lr``, ``images_per_second`` with the epoch as step, and at the end
``final/test_acc``, ``final/test_loss``, ``final/test_acc_tta``, ... (summary.json's figures).

Where MLflow writes without a URI is MLflow's own choice (``MLFLOW_TRACKING_URI`` if set): in MLflow
3 a SQLite database ``./mlflow.db`` with the artifacts under ``./mlruns`` (MLflow 3 refuses its old
``./mlruns`` file store unless ``MLFLOW_ALLOW_FILE_STORE=true``). A study is one parent MLflow run
with a child run per (model, seed): :class:`TrackingSpec` is what travels to the processes that
train the runs (plain data, picklable), each of which builds its own loggers from it.

tensorboard and mlflow are optional extras (``pip install 'cifarzoo[tensorboard]'``,
``'cifarzoo[mlflow]'``); this module imports them only when a logger is made.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from cifarzoo.errors import CifarzooError
from cifarzoo.train.callbacks import Callback

LOGGERS = ("tensorboard", "mlflow")  # the names --log takes, each also the name of its extra
TENSORBOARD_DIR = "tensorboard"  # inside the run folder
DEFAULT_EXPERIMENT = "cifarzoo"  # MLflow experiment unless MLFLOW_EXPERIMENT_NAME or experiment= says otherwise
FINAL_KEYS = ("test_acc", "test_loss", "test_acc_tta", "test_loss_tta", "test_acc_tta_level", "train_seconds",
              "images_per_second")  # summary.json's figures logged as final/<key>
RUN_KEY_TAG = "cifarzoo.run_key"  # identifies one run (folder and start) across a resume
STUDY_KEY_TAG = "cifarzoo.study_dir"


# --------------------------------------------------------------------------- the names, and the extras
def parse_log(text: str | None, mlflow_uri: str | None = None) -> tuple[str, ...]:
    """``--log tensorboard,mlflow`` as a tuple of names (empty: none); one line for an unknown name,
    or for ``--mlflow-uri`` without ``mlflow``."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in (text or "").split(",") if n.strip()))
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise CifarzooError(f"--log: unknown logger {unknown[0]!r}; known: {', '.join(LOGGERS)} "
                            "(a comma list, e.g. --log tensorboard,mlflow)")
    if mlflow_uri is not None and "mlflow" not in names:
        raise CifarzooError("--mlflow-uri: only with --log mlflow")
    return names


def _need(module: str, extra: str):
    """Import ``module``, or say in one line which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise CifarzooError(f"logging to {extra} needs the {extra} package: pip install 'cifarzoo[{extra}]'") from None


def _summary_writer():
    return _need("torch.utils.tensorboard", "tensorboard").SummaryWriter


def _mlflow():
    return _need("mlflow", "mlflow")


# --------------------------------------------------------------------------- what is logged
def flat_params(info: dict) -> dict[str, object]:
    """The run's settings as one flat dict: config.json's ``config`` (nested dicts as ``a.b``, lists as
    JSON), plus the data source, the split evaluated each epoch, the device and the parameter count."""
    out: dict[str, object] = {}

    def put(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                put(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else value

    put("", info.get("config", {}))
    data = info.get("data", {})
    put("data_source", data.get("source"))
    put("eval_split", data.get("eval_split"))
    put("device", info.get("device"))
    put("parameters", info.get("parameters"))
    return out


def epoch_scalars(row: dict, eval_split: str) -> dict[str, float]:
    """One metrics row's figures by tracking name; an epoch without evaluation has no eval figures."""
    split = row.get("eval_split") or eval_split
    named = {"train/loss": row.get("train_loss"), "train/acc": row.get("train_acc"),
             f"{split}/loss": row.get("eval_loss"), f"{split}/acc": row.get("eval_acc"),
             "lr": row.get("lr"), "images_per_second": row.get("images_per_second")}
    return {k: float(v) for k, v in named.items() if _finite(v)}


def final_scalars(summary: dict) -> dict[str, float]:
    return {f"final/{k}": float(summary[k]) for k in FINAL_KEYS if _finite(summary.get(k))}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _run_key(info: dict) -> str:
    """The same for a run and its resumptions (config.json keeps the first start), new after --force."""
    from cifarzoo.train.rundir import RunDir

    run_dir = Path(info["run_dir"]).resolve()
    started = (RunDir(run_dir).read_info() or info).get("started", "")
    return hashlib.sha1(f"{run_dir}\n{started}".encode()).hexdigest()


# --------------------------------------------------------------------------- TensorBoard
class TensorBoardLogger(Callback):
    """Scalars per epoch, the settings as hparams, and at the end the curves and the confusion matrix
    of the final weights on the test set as images, in ``log_dir`` (default RUN_DIR/tensorboard).

    The confusion matrix comes from the run folder's confusion.json where ``cifarzoo evaluate`` wrote
    one for this checkpoint; else the final checkpoint is evaluated on the run's test set (one
    forward pass; ``confusion=False`` skips it). A resumed run appends to the same folder.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, *, confusion: bool = True):
        self._writer_class = _summary_writer()  # a missing package is said now, not after the data loads
        self.log_dir, self.confusion = log_dir, confusion
        self.writer = None

    def on_start(self, info: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        self.run_dir = Path(info["run_dir"])
        self.eval_split = info.get("data", {}).get("eval_split", "test")
        self.device = info.get("config", {}).get("device", "auto")
        self.writer = self._writer_class(log_dir=str(self.log_dir or self.run_dir / TENSORBOARD_DIR))
        # The hparams dashboard shows each session's last value of these scalar tags.
        metrics = {f"{self.eval_split}/acc": 0, f"{self.eval_split}/loss": 0, "final/test_acc": 0,
                   "final/test_loss": 0}
        experiment, start, self._end_info = hparams(flat_params(info), metrics)
        for s in (experiment, start):
            self.writer.file_writer.add_summary(s)
        self.writer.add_text("config", f"```\n{json.dumps(info.get('config', {}), indent=1)}\n```")
        self.writer.flush()

    def on_epoch_end(self, row: dict) -> None:
        for tag, value in epoch_scalars(row, self.eval_split).items():
            self.writer.add_scalar(tag, value, int(row["epoch"]))
        self.writer.flush()  # an interrupted run keeps every epoch it recorded

    def on_end(self, summary: dict) -> None:
        from cifarzoo.plots import curves_figure, figure_pixels
        from cifarzoo.train.rundir import RunDir

        rows = RunDir(self.run_dir).read_metrics()  # every epoch, those before a resume included
        step = int(rows[-1]["epoch"]) if rows else int(summary.get("epochs") or 0)  # a stopped run's last
        for tag, value in final_scalars(summary).items():
            self.writer.add_scalar(tag, value, step)
        title = f"{summary.get('model', '')} (seed {summary.get('seed')})"
        self.writer.add_image("curves", figure_pixels(curves_figure(rows, title, self.eval_split)), step,
                              dataformats="HWC")
        if self.confusion:
            figure = _confusion_figure(self.run_dir, self.device)
            if figure is not None:
                self.writer.add_image("confusion", figure_pixels(figure), step, dataformats="HWC")
        self.writer.file_writer.add_summary(self._end_info)
        self.close()

    def close(self, status: str | None = None) -> None:
        """Flush and close the event file (also after a failed or interrupted run; idempotent)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _confusion_figure(run_dir: Path, device: str):
    """The final weights' test-set confusion matrix as a Figure: confusion.json where it is newer than
    the checkpoint, else from one evaluation pass. None (with a warning) where the run's data cannot
    be loaded again, e.g. a run trained from arrays in memory."""
    import warnings

    import numpy as np

    from cifarzoo.io import read_json_object
    from cifarzoo.plots import confusion_figure
    from cifarzoo.train.rundir import RunDir

    run = RunDir(run_dir)
    saved = read_json_object(run_dir / "confusion.json")
    fresh = saved and (run_dir / "confusion.json").stat().st_mtime >= run.checkpoint_path.stat().st_mtime
    if fresh and "confusion" in saved and "classes" in saved:
        cm, classes = np.asarray(saved["confusion"]), saved["classes"]
    else:
        from cifarzoo.evaluate import evaluate

        try:
            r = evaluate(run_dir, device=device, save=False)
        except CifarzooError as exc:
            warnings.warn(f"TensorBoard: no confusion matrix for {run_dir}: {exc}", stacklevel=3)
            return None
        cm, classes = r.confusion, r.classes
    return confusion_figure(cm, classes, title="test set, final weights")


# --------------------------------------------------------------------------- MLflow
class MLflowLogger(Callback):
    """Params (the flattened settings), metrics per epoch (step = epoch), the final figures, and the
    whole run folder as artifacts at the end, in one MLflow run.

    ``tracking_uri``: a tracking server (``http://host:5000``), a database (``sqlite:///mlflow.db``);
    None: MLflow's default (see the module doc). ``experiment``: default ``$MLFLOW_EXPERIMENT_NAME``,
    else "cifarzoo". ``parent_run_id``: make the run a child of that run (a study's runs).
    ``artifacts=False`` leaves the run folder out (a large model's checkpoint is copied otherwise).
    A resumed run continues its MLflow run. A run that ends without ``on_end`` (failed, interrupted)
    is marked KILLED when its process exits, or by :meth:`close` (a study marks its failed runs FAILED).
    """

    def __init__(self, tracking_uri: str | None = None, *, experiment: str | None = None,
                 parent_run_id: str | None = None, run_name: str | None = None, artifacts: bool = True):
        mlflow = _mlflow()
        self.client = mlflow.MlflowClient(tracking_uri)
        self.tracking_uri = self.client.tracking_uri
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        self.parent_run_id, self.run_name, self.artifacts = parent_run_id, run_name, artifacts
        self.run_id: str | None = None
        self.epoch = 0  # the last epoch logged: the step of the final figures

    def on_start(self, info: dict) -> None:
        self.run_dir = Path(info["run_dir"])
        self.eval_split = info.get("data", {}).get("eval_split", "test")
        tags = {RUN_KEY_TAG: _run_key(info), "cifarzoo.run_dir": str(self.run_dir.resolve())}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        self.run_id, resumed = _open_run(self.client, self.experiment, RUN_KEY_TAG, tags,
                                         self.run_name or self.run_dir.name)
        if not resumed:  # MLflow refuses a param logged again with another value (a resume on another device)
            params = [(k, "None" if v is None else str(v)) for k, v in flat_params(info).items()]
            _log(self.client, self.run_id, params=params)
        atexit.register(self.close, "KILLED")

    def on_epoch_end(self, row: dict) -> None:
        self.epoch = int(row["epoch"])
        _log(self.client, self.run_id, metrics=epoch_scalars(row, self.eval_split), step=self.epoch)

    def on_end(self, summary: dict) -> None:
        step = self.epoch or int(summary.get("epochs") or 0)
        _log(self.client, self.run_id, metrics=final_scalars(summary), step=step)
        self.client.set_tag(self.run_id, "cifarzoo.status", str(summary.get("status", "finished")))
        if self.artifacts:
            _log_folder(self.client, self.run_id, self.run_dir)
        self.close("FINISHED")

    def close(self, status: str = "KILLED") -> None:
        """End the MLflow run with ``status`` (FINISHED, FAILED, KILLED) unless it has ended; idempotent."""
        if self.run_id is not None:
            run_id, self.run_id = self.run_id, None
            atexit.unregister(self.close)
            self.client.set_terminated(run_id, status)


def _experiment_id(client, name: str) -> str:
    """The experiment's id, made if it does not exist (two processes may race to make it)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another process made it between the two calls
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _open_run(client, experiment: str, key_tag: str, tags: dict, name: str) -> tuple[str, bool]:
    """(run id, resumed): the unfinished run whose tag ``key_tag`` has the value in ``tags`` (a
    resumption), else a new run."""
    exp_id = _experiment_id(client, experiment)
    # the key is a hex digest or a resolved path; a quote in the path is doubled for MLflow's filter
    value = tags[key_tag].replace("'", "''")
    for run in client.search_runs([exp_id], filter_string=f"tags.`{key_tag}` = '{value}'", max_results=10):
        if run.info.status != "FINISHED":
            client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id, True
    return client.create_run(exp_id, tags=tags, run_name=name).info.run_id, False


def _log(client, run_id: str, *, params=(), metrics: dict | None = None, step: int = 0) -> None:
    """Params and metrics in batches of MLflow's limits (100 params, 1000 metrics per request)."""
    from mlflow.entities import Metric, Param

    params = list(params)
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params[i:i + 100]])
    now = int(time.time() * 1000)
    if metrics:
        client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])


def _log_folder(client, run_id: str, folder: Path) -> None:
    """Every file of a run folder as the run's artifacts, at the same relative paths (its lock and any
    temporary file of an interrupted write left out)."""
    from cifarzoo.train.rundir import LOCK_FILE

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name == LOCK_FILE or path.name.endswith(".tmp"):
            continue
        parent = path.parent.relative_to(folder).as_posix()
        client.log_artifact(run_id, str(path), None if parent == "." else parent)


# --------------------------------------------------------------------------- from the command line, and studies
@dataclass(frozen=True)
class TrackingSpec:
    """Which loggers every run of a study gets, as plain data that travels to worker processes and
    Ray tasks: each builds its own loggers with :meth:`loggers`. ``mlflow_uri`` is resolved in the
    study's process (MLflow's default is relative to the working directory)."""

    log: tuple[str, ...] = ()
    mlflow_uri: str | None = None
    experiment: str | None = None
    parent_run_id: str | None = None

    def loggers(self) -> list[Callback]:
        return make_loggers(self.log, self.mlflow_uri, experiment=self.experiment, parent_run_id=self.parent_run_id)


def make_loggers(log: str | tuple[str, ...] | None, mlflow_uri: str | None = None, *,
                 experiment: str | None = None, parent_run_id: str | None = None) -> list[Callback]:
    """The loggers ``--log`` names (a comma list or a tuple), in that order; one line for an unknown
    name or a missing extra."""
    names = parse_log(log if isinstance(log, str) or log is None else ",".join(log), mlflow_uri)
    made: list[Callback] = []
    for name in names:
        if name == "tensorboard":
            made.append(TensorBoardLogger())
        else:
            made.append(MLflowLogger(mlflow_uri, experiment=experiment, parent_run_id=parent_run_id))
    return made


def tracking_spec(log: str | None, mlflow_uri: str | None = None) -> TrackingSpec | None:
    """``--log`` and ``--mlflow-uri`` of ``benchmark`` as a :class:`TrackingSpec` (None: no logging),
    the extras checked and MLflow's URI resolved here, before any run starts."""
    names = parse_log(log, mlflow_uri)
    if not names:
        return None
    if "tensorboard" in names:
        _summary_writer()
    if "mlflow" in names:
        mlflow_uri = _mlflow().MlflowClient(mlflow_uri).tracking_uri
    return TrackingSpec(names, mlflow_uri)


def start_study(spec: TrackingSpec, plan) -> TrackingSpec:
    """With MLflow: open the study's parent run (or continue the unfinished one of the same study
    folder) with the study's settings as params; returns the spec its runs get (the parent's id)."""
    if "mlflow" not in spec.log:
        return spec
    client = _mlflow().MlflowClient(spec.mlflow_uri)
    out = Path(plan.out_dir).resolve()
    tags = {STUDY_KEY_TAG: str(out)}
    experiment = spec.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    run_id, resumed = _open_run(client, experiment, STUDY_KEY_TAG, tags, f"study {out.name}")
    if not resumed:  # the same study started again (with other --models, say) keeps its first params
        meta = plan.to_dict()
        params = {"preset": meta["preset"], "models": ",".join(meta["models"]), "seeds": len(meta["seeds"]),
                  "data": meta["data"], "rule": meta["rule"],
                  **{f"overrides.{k}": v for k, v in meta["overrides"].items()}}
        _log(client, run_id, params=[(k, str(v)) for k, v in params.items()])
    return replace(spec, parent_run_id=run_id)


def end_study(spec: TrackingSpec, status: str, files: dict | None = None) -> None:
    """Close the study's parent run with ``status`` (FINISHED, FAILED, KILLED), the report's files as
    its artifacts."""
    if spec.parent_run_id is None:
        return
    client = _mlflow().MlflowClient(spec.mlflow_uri)
    for path in (files or {}).values():
        if Path(path).is_file():
            client.log_artifact(spec.parent_run_id, str(path))
    client.set_terminated(spec.parent_run_id, status)


def close_all(callbacks, status: str) -> None:
    """End the loggers of a run that did not reach on_end (failed: FAILED, interrupted: KILLED)."""
    for cb in callbacks:
        close = getattr(cb, "close", None)
        if close is not None:
            close(status)
