"""Training: one config, one step, one loop, one run folder.

    fit(config, callbacks=[...]) -> RunResult         the whole run (train/loop.py; callbacks.py)
    build_model(config, num_classes, device)          the recipe's model (train/step.py)
    make_step(model, config, device, ...) -> TrainStep; step(x, y) -> (loss, logits)
"""
from cifarzoo.train.callbacks import Callback, EarlyStopping, StopTraining
from cifarzoo.train.config import PRESETS, TrainConfig, make_config, preset_entry, recipe
from cifarzoo.train.loop import Reporter, RunResult, fit
from cifarzoo.train.step import TrainStep, build_model, make_step, model_loss

__all__ = ["PRESETS", "Callback", "EarlyStopping", "Reporter", "RunResult", "StopTraining", "TrainConfig",
           "TrainStep", "build_model", "fit", "make_config", "make_step", "model_loss", "preset_entry", "recipe"]
