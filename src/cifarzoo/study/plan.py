"""What a study is: its models, seeds, presets and per-run configs, and where each run lives.

Layout of a study folder ``DIR``::

    DIR/study.json                  what was asked: preset, models, seeds, data, overrides, budget rule
    DIR/runs/<model>-s<seed>/       one ordinary run folder per (model, seed) (see train/rundir.py), plus
        confusion.json/.png         written by ``cifarzoo.evaluate.evaluate`` after training
        report_eval.json            per-class accuracy, confusion and the most confidently wrong
                                    test images, for the report (EVAL_FILE)
    DIR/results.json, results.csv, report.md, report.html, figures/*.png   (see report.py)

Both the runner (which trains the runs) and the report (which reads them) import this
module; neither imports the other.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cifarzoo import __version__
from cifarzoo.errors import CifarzooError
from cifarzoo.io import make_folder, read_json, read_json_object, write_json
from cifarzoo.train.config import MAX_SEEDS, PRESETS, TrainConfig, equal_budgets, make_config

STUDY_FILE = "study.json"
RUNS_DIR = "runs"
TUNE_DIR = "tune"  # DIR/tune/<model>/: `cifarzoo tune`'s folder of each model of a tuned study (--tune-budget)
NOT_TUNED = ("the recipes were not tuned for this study: every model trains with its recipe and its entry in the "
             "preset, as set in the package (docs/recipes.md says how each was chosen); `cifarzoo benchmark "
             "--tune-budget 20m` tunes each model on the validation split first, with the same budget")
EVAL_FILE = "report_eval.json"

# The five networks of the original study (the default of `cifarzoo benchmark`).
STUDY_MODELS = ("vgg16", "vgg19", "resnet50", "inception", "xception")

# What the original Keras study reported, for the seed preset's report.
ORIGINAL_STUDY = {
    "vgg16": "10.0% (loss stuck at ln 10)",
    "vgg19": "10.0% (loss stuck at ln 10)",
    "resnet50": "10.0% (loss stuck at 3.8090, not ln 10)",
    "inception": "not finished",
    "xception": "75.3%",
}
# What its training logs printed, for the replay of its networks as written (``as_written=True``).
ORIGINAL_PRINTED = {
    "vgg16": "loss 2.3028, val_loss 2.3026 (ln 10), accuracy 0.097-0.100 in every epoch",
    "vgg19": "loss 2.3028, val_loss 2.3026 (ln 10), accuracy 0.097-0.100 in every epoch",
    "resnet50": "loss 3.8090, accuracy 0.1000 in every epoch",
    "inception": "not finished",
    "xception": "75.34% test accuracy",
}
# The study's own networks, as written (models/as_written.py), beside the zoo's correct ones.
AS_WRITTEN_OF = {"vgg16": "as_written_vgg16", "vgg19": "as_written_vgg19", "resnet50": "as_written_resnet",
                 "xception": "as_written_xception"}


@dataclass(frozen=True)
class RunSpec:
    """One (model, seed) of a study: its full training config and its run folder."""

    model: str
    seed: int
    config: TrainConfig
    run_dir: Path
    # which loggers train it (cifarzoo.tracking.TrackingSpec), not part of what the run is
    tracking: Any = field(default=None, compare=False)
    # The study's callbacks, pickled: each run unpickles its own copy, wherever it trains (train_one).
    callbacks: bytes = field(default=b"", compare=False, repr=False)

    @property
    def name(self) -> str:
        return run_name(self.model, self.seed)


@dataclass(frozen=True)
class StudyPlan:
    out_dir: Path
    preset: str
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    data: str | None  # the --data spec every run uses (None: the default CIFAR-10 cache)
    overrides: dict
    runs: tuple[RunSpec, ...]
    rule: str  # the budget rule, in words, as the report states it
    tuning: str = NOT_TUNED  # how the models' settings were tuned for the study, in words (see with_tuning)

    @property
    def labels(self) -> str:
        """CIFAR-100's labelling every run uses ("fine" or "coarse"; set with the ``labels`` override)."""
        return self.runs[0].config.labels if self.runs else "fine"

    def to_dict(self) -> dict:
        return {
            "format": "cifarzoo.study", "version": 1,
            "preset": self.preset, "preset_description": PRESETS[self.preset].get("description", ""),
            "models": list(self.models), "seeds": list(self.seeds), "data": self.data,
            "overrides": dict(self.overrides), "rule": self.rule, "tuning": self.tuning,
            "runs": [{"name": s.name, "model": s.model, "seed": s.seed,
                      "run_dir": os.path.relpath(s.run_dir, self.out_dir)} for s in self.runs],
            "configs": {m: _config_for(self, m).to_dict() for m in self.models},
            "cifarzoo": __version__,
        }


def _config_for(plan: StudyPlan, model: str) -> TrainConfig:
    return next(s.config for s in plan.runs if s.model == model)


def run_name(model: str, seed: int) -> str:
    return f"{model}-s{seed}"


def resolve_models(models: Sequence[str] | str | None) -> tuple[str, ...]:
    """Canonical names, in the order given, duplicates dropped; default: the five study models.

    A string is a comma list. Unknown names raise with the list of known ones.
    """
    from cifarzoo.models import resolve

    if models is None:
        return tuple(STUDY_MODELS)
    if isinstance(models, str):
        models = [m for m in models.split(",")]
    names = [m.strip() for m in models if m and m.strip()]
    if not names:
        raise CifarzooError("--models is empty; give a comma list such as vgg16,resnet50 (see `cifarzoo models`)")
    out: list[str] = []
    for m in names:
        r = resolve(m)
        if r not in out:
            out.append(r)
    return tuple(out)


def _equal_budget(configs: dict[str, TrainConfig], preset: str | None) -> str | None:
    """The preset's equal-compute rule in words ("each network trained for 20 core-minutes of ... at
    its width: vgg16 w0.25 30 epochs, ..."), where the preset has one (cpu) and every model of the
    study trains at its settings; else None."""
    budgets = equal_budgets(preset)
    if not configs or not set(configs) <= set(budgets):
        return None
    if len({(budgets[m].core_minutes, budgets[m].reference) for m in configs}) != 1:
        return None  # not one budget
    for m, c in configs.items():
        b = budgets[m]
        if (c.width_mult, c.batch_size, c.epochs) != (b.width, b.batch, b.epochs):
            return None
    per_model = ", ".join(f"{m} w{c.width_mult:g} {c.epochs} epochs" for m, c in configs.items())
    b = budgets[next(iter(configs))]
    return (f"each network trained for {b.core_minutes:g} core-minutes of {b.reference} at its "
            f"width ({per_model}: the epochs its measured training throughput there fills)")


def budget_rule(configs: dict[str, TrainConfig], preset: str | None = None) -> str:
    """The rule every model of the study is trained under, in one sentence or three."""
    cs = list(configs.values())
    epochs = {m: c.epochs for m, c in configs.items()}
    equal = _equal_budget(configs, preset)
    if equal:
        ep = equal
    elif len(set(epochs.values())) == 1:
        ep = f"{cs[0].epochs} epoch{'s' if cs[0].epochs != 1 else ''} for every model"
    else:
        ep = "each model's preset epochs (" + ", ".join(f"{m} {e}" for m, e in epochs.items()) + ")"
    aug = {c.augment for c in cs}
    aug_text = (f"the same augmentation ({cs[0].augment})" if len(aug) == 1
                else "augmentation per model: " + ", ".join(f"{m} {c.augment}" for m, c in configs.items()))
    opt = {(c.optimizer, c.lr, c.batch_size, c.schedule) for c in cs}
    if len(opt) == 1:
        c = cs[0]
        batch = c.batch_size if c.batch_size is not None else "auto (512, smaller on small data)"
        opt_text = f"{c.optimizer} at peak lr {c.lr:g}, batch {batch}, {c.schedule} schedule for all"
    else:
        opt_text = "each model's recipe for optimizer, learning rate and batch size (see results.json configs)"
    return (f"{ep}; same data, {aug_text} and seeds; {opt_text}; "
            "final-epoch weights, no test-set selection (the test set is only ever used for reporting)")


def plan_study(
    models: Sequence[str] | str | None = None,
    *,
    preset: str = "standard",
    seeds: int = 1,
    data: str | None = None,
    out_dir: str | os.PathLike = "study",
    as_written: bool = False,
    **overrides: Any,
) -> StudyPlan:
    """Every (model, seed) run of a study and its config: ``make_config(model, preset, data=, seed=, **overrides)``.

    ``seeds`` runs seeds 0..seeds-1 of each model. ``data`` replaces the preset's data
    source; ``overrides`` (None values ignored) apply to every model alike. ``as_written``
    (preset "seed" only) adds, after each model, the original study's network as written
    (AS_WRITTEN_OF): the replay of its failure beside the correct networks.
    """
    if preset not in PRESETS:
        raise CifarzooError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    if not (isinstance(seeds, int) and not isinstance(seeds, bool) and 1 <= seeds <= MAX_SEEDS):
        raise CifarzooError(f"--seeds must be an integer in [1, {MAX_SEEDS}], got {seeds!r}")
    names = resolve_models(models)
    if as_written:
        if preset != "seed":
            raise CifarzooError(f"--as-written replays the original study under its own settings: it needs "
                                f"--preset seed, not {preset!r}")
        names = tuple(dict.fromkeys(n for m in names for n in (m, AS_WRITTEN_OF.get(m)) if n))
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for k in ("seed", "model"):
        if k in overrides:
            raise CifarzooError(f"a study sets {k!r} itself; use --seeds / --models")
    data_spec = data if data is not None else PRESETS[preset].get("data")
    out = Path(out_dir)
    runs = []
    for m in names:
        for s in range(seeds):
            cfg = make_config(m, preset=preset, data=data_spec, seed=s, **overrides)
            runs.append(RunSpec(m, s, cfg, out / RUNS_DIR / run_name(m, s)))
    configs = {m: next(r.config for r in runs if r.model == m) for m in names}
    return StudyPlan(out, preset, names, tuple(range(seeds)), data_spec, overrides, tuple(runs),
                     budget_rule(configs, preset))


def _created(out_dir: Path) -> str:
    """When this study folder was first started (kept across invocations)."""
    created = (read_json_object(out_dir / STUDY_FILE) or {}).get("created")
    return created or time.strftime("%Y-%m-%dT%H:%M:%S%z")


def load_plan(out_dir: str | os.PathLike) -> StudyPlan:
    """The plan recorded in ``out_dir/study.json`` (for ``--report-only``)."""
    out = Path(out_dir)
    p = out / STUDY_FILE
    if not p.exists():
        raise CifarzooError(f"{out}: no study here ({STUDY_FILE} missing); run `cifarzoo benchmark --out {out}` first")
    meta = read_json(p)
    if not isinstance(meta, dict):
        raise CifarzooError(f"{p}: not a cifarzoo study file (a JSON {type(meta).__name__}, not an object)")
    try:
        return with_tuning(plan_study(meta["models"], preset=meta["preset"], seeds=len(meta["seeds"]),
                                      data=meta["data"], out_dir=out, **meta.get("overrides", {})))
    except KeyError as exc:
        raise CifarzooError(f"{p}: not a cifarzoo study file (missing {exc})") from None
    except (TypeError, AttributeError) as exc:
        raise CifarzooError(f"{p}: not a cifarzoo study file ({exc})") from None


def with_recorded_models(plan: StudyPlan) -> StudyPlan:
    """``plan`` plus the models that study.json already records with the same preset, seeds, data
    and overrides and that still have a run folder: re-running a study with fewer ``--models``
    keeps the others in the study and its report. Delete a model's run folders to drop it."""
    meta = read_json_object(plan.out_dir / STUDY_FILE)
    if not meta or (meta.get("preset"), meta.get("seeds"), meta.get("data"), meta.get("overrides")) != (
            plan.preset, list(plan.seeds), plan.data, dict(plan.overrides)):
        return plan
    recorded = [m for m in meta.get("models") or [] if isinstance(m, str)]
    extra = [m for m in recorded if m not in plan.models
             and any((plan.out_dir / RUNS_DIR / run_name(m, s)).exists() for s in plan.seeds)]
    if not extra:
        return plan
    models = [m for m in recorded if m in extra or m in plan.models] + [m for m in plan.models if m not in recorded]
    return with_tuning(plan_study(models, preset=plan.preset, seeds=len(plan.seeds), data=plan.data,
                                  out_dir=plan.out_dir, **plan.overrides))


def write_plan(plan: StudyPlan) -> None:
    """``DIR/study.json``: the plan, and when the study was first started (kept across invocations)."""
    make_folder(plan.out_dir, "study folder")
    write_json(plan.out_dir / STUDY_FILE, {**plan.to_dict(), "created": _created(plan.out_dir)})


def with_tuning(plan: StudyPlan) -> StudyPlan:
    """``plan`` with every model's tuned settings, where each has ``DIR/tune/<model>/best.json`` (written by
    ``cifarzoo benchmark --tune-budget``), and the sentence saying how they were tuned; else ``plan``."""
    import dataclasses

    folders = {m: plan.out_dir / TUNE_DIR / m for m in plan.models}
    if not plan.models or not all((f / "best.json").exists() and (f / "tune.json").exists()
                                  for f in folders.values()):
        return plan
    best = {m: read_json(f / "best.json") for m, f in folders.items()}
    asked = {m: read_json(f / "tune.json") for m, f in folders.items()}
    runs = tuple(dataclasses.replace(r, config=TrainConfig.from_dict({**best[r.model], "seed": r.seed,
                                                                        "data": plan.data}))
                 for r in plan.runs)
    a = next(iter(asked.values()))
    names = sorted({n for q in asked.values() for n in q["space"]})
    cpus = a["cpus"] * a.get("slots", 1)
    tuning = (f"each model tuned for {a['budget']} of {cpus:g} CPU{'s' if cpus != 1 else ''}"
              + (f" and {a['gpus'] * a.get('slots', 1):g} GPUs" if a["gpus"] else "")
              + f" on {a['val_images']:,} validation images ({a['trials']} trials at most, Ray Tune's ASHA on "
              f"the per-epoch validation accuracy, Optuna's TPE); search space {', '.join(names)} around each "
              f"model's recipe ({TUNE_DIR}/<model>/tune.json); the test set was not used for tuning")
    configs = {m: next(r.config for r in runs if r.model == m) for m in plan.models}
    return dataclasses.replace(plan, runs=runs, rule=budget_rule(configs, plan.preset), tuning=tuning)
