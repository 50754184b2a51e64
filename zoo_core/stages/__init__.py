"""Stages: one module per stage, each exposing ``run(ctx) -> dict`` (the stage's summary)."""
from __future__ import annotations

import importlib

from zoo_core.config.schema import STAGES


def get_stage(name: str):
    if name not in STAGES:
        from zoo_core.api.errors import ConfigError

        raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return importlib.import_module(f"{__name__}.{name}_stage").run
