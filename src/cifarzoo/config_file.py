"""Settings files: ``--config FILE`` of `cifarzoo train` and `cifarzoo benchmark`, and ``cz.fit(config=...)``.

A settings file is one JSON object, or a TOML document when its name ends in ``.toml``
(TOML has no null: leave a setting out to keep its default). Its keys are the command's
own names (``lr``, ``batch_size``, ...: the option without ``--`` and with ``_`` for
``-``); a key the command does not know is refused by name, and options given on the
command line win over the file. ``cifarzoo tune`` writes its best settings as such a file.
"""
from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cifarzoo.errors import CifarzooError
from cifarzoo.io import open_regular


def read_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The settings in ``path`` as a dict; a missing file or bad syntax is one line naming the file."""
    path = Path(path)
    with open_regular(path) as f:
        raw = f.read()
    toml = path.suffix.lower() == ".toml"
    try:
        text = raw.decode("utf-8")
        if toml:
            import tomllib

            obj = tomllib.loads(text)
        else:
            obj = json.loads(text)
    except UnicodeDecodeError:
        raise CifarzooError(f"{path}: not a text file (UTF-8)") from None
    except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        kind = "TOML" if toml else "JSON (a name ending in .toml is read as TOML)"
        raise CifarzooError(f"{path}: not valid {kind}: {str(exc).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise CifarzooError(f"{path}: expected an object of settings ({{\"lr\": 0.1, ...}}), "
                            f"got {type(obj).__name__}")
    return obj


def check_names(path: str | os.PathLike, names: Iterable[Any], known: Iterable[str],
                hint: Callable[[str, set[str]], str] | None = None) -> None:
    """Refuse every name of ``names`` not in ``known``, each with ``hint(name, known)`` (default: did you mean)."""
    known = set(known)
    unknown = sorted({n for n in names if n not in known}, key=str)
    if unknown:
        hint = hint or close_name_hint
        raise CifarzooError(f"{path}: unknown settings: " + "; ".join(hint(n, known) for n in unknown))


def close_name_hint(name: Any, known: set[str]) -> str:
    close = difflib.get_close_matches(str(name).lower(), sorted(known), n=1, cutoff=0.75)
    return f"{name} (did you mean {close[0]}?)" if close else f"{name} (known: {', '.join(sorted(known))})"


def train_settings(path: str | os.PathLike) -> dict[str, Any]:
    """A training settings file: TrainConfig fields (model included) and optionally ``preset``."""
    import dataclasses

    from cifarzoo.train.config import TrainConfig, unknown_setting_hint

    settings = read_settings(path)
    check_names(path, settings, [f.name for f in dataclasses.fields(TrainConfig)] + ["preset"],
                unknown_setting_hint)
    return settings


def config_with_file(model: str | None, preset: str | None, file_settings: dict[str, Any],
                     overrides: dict[str, Any], where: str = "config"):
    """The TrainConfig of ``model`` (default: the file's): recipe < preset < the file < ``overrides``.

    The file's values are taken as they are, nulls included (``batch_size: null`` is the automatic
    batch even where a recipe sets one), so a run's own config.json, given back, is that run's config.
    ``overrides`` are the command line's or the caller's (None: not given).
    """
    from cifarzoo.train.config import TrainConfig, make_config

    file_settings = dict(file_settings)
    model = model or file_settings.pop("model", None)
    file_settings.pop("model", None)
    preset = preset or file_settings.pop("preset", None)
    file_settings.pop("preset", None)
    if model is None:
        raise CifarzooError(f"{where}: no model: give MODEL, or a \"model\" in the file")
    base = make_config(model, preset=preset)
    given = {k: v for k, v in overrides.items() if v is not None}
    return TrainConfig.from_dict({**base.to_dict(), **file_settings, **given})


def given_config(config: Any, model: str | None, preset: str | None, overrides: dict[str, Any]):
    """The API's ``config=``: a settings file's path, a dict of settings or a TrainConfig (see config_with_file)."""
    import dataclasses

    from cifarzoo.train.config import TrainConfig, unknown_setting_hint

    if isinstance(config, TrainConfig):
        settings, where = config.to_dict(), "config"
    elif isinstance(config, dict):
        settings, where = dict(config), "config"
        check_names(where, settings, [f.name for f in dataclasses.fields(TrainConfig)] + ["preset"],
                    unknown_setting_hint)
    elif isinstance(config, (str, os.PathLike)):
        settings, where = train_settings(config), str(config)
    else:
        raise CifarzooError(f"config: expected a settings file's path, a dict or a TrainConfig, "
                            f"got {type(config).__name__}")
    return config_with_file(model, preset, settings, overrides, where=where)
