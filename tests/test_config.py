"""TrainConfig's settings are described once, in each field's metadata: `cifarzoo train`'s options, their --help
groups and the range checks are made from it."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from cifarzoo.errors import CifarzooError
from cifarzoo.train.config import GROUPS, TrainConfig


def _train_parser() -> argparse.ArgumentParser:
    from cifarzoo.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_setting_has_help_and_a_group_and_every_number_a_range():
    for f in dataclasses.fields(TrainConfig):
        assert isinstance(f.metadata.get("help"), str) and f.metadata["help"].strip(), f.name
        assert f.metadata.get("group") in GROUPS, f.name
        assert (f.metadata["range"] is None) == (f.name not in _numbers() or f.name == "tta_level"), f.name
    from cifarzoo.data.augment import AUGMENTATIONS

    augment_help = TrainConfig.__dataclass_fields__["augment"].metadata["help"]
    assert all(name in augment_help for name in AUGMENTATIONS)  # the copy in the CLI had lost altflip


def _numbers() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig) if any(t in str(f.type) for t in ("int", "float"))}


def test_every_train_option_for_a_setting_comes_from_the_fields_metadata():
    parser = _train_parser()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    group_of = {id(action): group.title for group in parser._action_groups for action in group._group_actions}
    settings = [a for a in parser._actions if a.dest in fields and a.option_strings]
    assert {a.dest for a in settings} == set(fields) - {"model", "model_kwargs"}  # MODEL is the positional
    for action in settings:
        meta = fields[action.dest].metadata
        assert action.option_strings[0] == "--" + action.dest.replace("_", "-")
        assert group_of[id(action)] == meta["group"], action.dest
        if action.dest not in ("data", "labels"):  # the options every data-reading command shares
            assert action.help == meta["help"].replace("%", "%%"), action.dest
            assert tuple(action.choices or ()) == tuple(meta["choices"] or ()), action.dest
    help_text = parser.format_help()
    assert [title for title in GROUPS if f"\n{title}:\n" in help_text] == list(GROUPS)
    assert "25% of the run" in help_text  # a % in a field's help is printed, not taken for a format


@pytest.mark.parametrize("name, value, message", [
    ("lr", 0, "invalid --lr 0: expected a number in (0, 10]"),
    ("momentum", 1.0, "invalid --momentum 1.0: expected a number in [0, 1)"),
    ("subset", 0, "invalid --subset 0: expected an integer in [1, 60000], or none"),
    ("optimizer", "lion", "invalid --optimizer 'lion': expected sgd | adam | adamw | muon"),
    ("warmup", "maybe", "invalid --warmup 'maybe': expected auto | on | off"),
])
def test_range_and_choice_checks_come_from_the_metadata(name, value, message):
    with pytest.raises(CifarzooError) as error:
        TrainConfig(**{name: value})
    assert str(error.value) == message
    assert TrainConfig(optimizer="AdamW").optimizer == "adamw"  # a word is matched case-insensitively


def test_a_models_recipe_and_preset_entries_live_in_its_decorator():
    """Registering a model, its recipe and its preset entries is one decorator: the package's presets
    name no model, every model's entries name a known preset, and make_config layers them as documented
    (defaults < recipe < the preset's "all" < the model's entry < the caller's settings)."""
    from torch import nn

    from cifarzoo.models import get_entry, list_models, register_model
    from cifarzoo.models.registry import unregister
    from cifarzoo.recipe_kit import CoreBudget
    from cifarzoo.train.config import PRESETS, equal_budgets, make_config

    shared = {"description", "data", "one_run_per_core", "all", "epoch_factor"}
    assert all(set(p) <= shared for p in PRESETS.values()), {n: set(p) - shared for n, p in PRESETS.items()}
    for name in list_models(as_written=True):
        assert set(get_entry(name).presets) <= set(PRESETS), name
    assert set(equal_budgets("cpu")) == {"vgg16", "vgg19", "resnet50", "inception", "xception"}

    @register_model("test", recipe=dict(epochs=7, lr=0.3, label_smoothing=0.2),
                    presets={"quick": dict(epochs=3, lr=0.01), "cpu": CoreBudget(0.5, 64, 0.02, img_s=1000.0)})
    def decorated_net(*, num_classes: int = 10, width_mult: float = 1.0, **kwargs) -> nn.Module:
        return nn.Linear(3, num_classes)

    try:
        plain = make_config("decorated_net")
        assert (plain.epochs, plain.lr, plain.label_smoothing) == (7, 0.3, 0.2)
        quick = make_config("decorated_net", preset="quick", epochs=5)
        assert (quick.epochs, quick.lr, quick.label_smoothing, quick.batch_size) == (5, 0.01, 0.2, 32)
        cpu = make_config("decorated_net", preset="cpu")  # 20 core-minutes at 1,000 img/s: 24 epochs of 50,000
        assert (cpu.width_mult, cpu.batch_size, cpu.lr, cpu.epochs, cpu.eval_every) == (0.5, 64, 0.02, 24, 6)
        tuned = CoreBudget(0.5, 64, 0.02, img_s=1000.0, extra=dict(warmup_epochs=1.5, weight_decay=1e-4))
        assert {k: tuned.settings()[k] for k in ("epochs", "warmup_epochs", "weight_decay", "lr")} == dict(
            epochs=24, warmup_epochs=1.5, weight_decay=1e-4, lr=0.02)  # its extra settings, the budget unchanged
        with pytest.raises(ValueError, match="epochs"):
            CoreBudget(0.5, 64, 0.02, img_s=1000.0, extra=dict(epochs=40))  # compute is the budget's own
        PRESETS["quick"]["decorated_net"] = dict(lr=0.04)  # a preset's own entry for it wins over the decorator's
        assert make_config("decorated_net", preset="quick").lr == 0.04
    finally:
        PRESETS["quick"].pop("decorated_net", None)
        unregister("decorated_net")
