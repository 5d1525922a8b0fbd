"""Training: one config, one loop, one run folder."""
from cifarzoo.train.config import PRESETS, RECIPES, TrainConfig, make_config
from cifarzoo.train.loop import Reporter, RunResult, fit

__all__ = ["PRESETS", "RECIPES", "Reporter", "RunResult", "TrainConfig", "fit", "make_config"]
