"""Which weights a stage runs: the user's file, the plugin's real default weights, or random on request.

Random weights are never chosen silently. A stage whose output depends on the weights (``export``,
``convert``, and ``eval`` / ``infer`` / ``predict`` / ``perf`` when they build or export the model)
asks :func:`choose_weights`:

* ``weights=<file>``: that file (a regular file, else one error line);
* ``weights=random``: the plugin's seeded random initial weights, on purpose, said on stderr and
  recorded as ``"weights": "random"`` in ``run.json`` and the export fingerprint; refused for a
  model whose plugin has real default weights (the hooks would load those, not random ones);
* no ``weights=``: the plugin's real default weights when its model config declares them
  (``model.default_weights``, :class:`zoo_core.api.config.ModelConfig`), said on stderr with the
  file the export used; ``stage=perf`` times random weights (latency does not depend on them) and
  says so; any other stage stops with an error naming ``weights=`` and what to pass.

Backends that need no weights (``oracle``, ``replay``, ``acl`` on a converted OM) and a given
``model_file=`` never ask.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo_core.api.checkpoint import regular_file
from zoo_core.api.errors import ConfigError

log = logging.getLogger("zoo")

RANDOM = "random"
#: Stages that may run random weights when none are given (their numbers do not depend on them).
RANDOM_OK_STAGES = ("perf",)


@dataclass
class WeightsChoice:
    """``source``: ``"file"`` (``path``), ``"default"`` (``description``; ``file`` once the export
    named it) or ``"random"``."""

    source: str
    path: str | None = None
    description: str | None = None
    file: dict[str, Any] | None = None

    @property
    def hook_weights(self) -> str | None:
        """What the plugin hooks receive as ``weights``: the file, or ``None`` (defaults / random init)."""
        return self.path

    @property
    def label(self) -> str:
        """``run.json`` / fingerprint value: the file path, ``"default"`` or ``"random"``."""
        return self.path if self.source == "file" and self.path else self.source

    def record(self) -> dict[str, Any]:
        """What ``run.json`` says about the weights."""
        rec: dict[str, Any] = {"weights": self.label}
        if self.source == "default":
            rec["default_weights"] = {"description": self.description, **({"file": self.file} if self.file else {})}
        return rec


def user_weights(cfg: Any) -> str | None:
    """The ``weights=`` file, checked to be a regular file; ``None`` when unset or ``random``."""
    w = cfg.get("weights")
    if w is None or str(w) in ("", RANDOM):
        return None
    help_text = cfg.model.get("weights_help")
    hint = f"weights= is the model's checkpoint: {help_text}" if help_text else None
    if hint and not Path(str(w)).expanduser().is_absolute():
        hint += f"; a relative path is taken from {Path.cwd()}"
    return str(regular_file(str(w), "weights file", missing_hint=hint))


def choose_weights(cfg: Any, stage: str, model: str) -> WeightsChoice:
    """The weights this stage runs (module docstring); raises :class:`ConfigError` when none may be chosen."""
    w = cfg.get("weights")
    default = cfg.model.get("default_weights")
    if w is not None and str(w) == RANDOM:
        if default:
            raise ConfigError(f"weights=random: the {model} model runs real weights when weights= is not given "
                              f"({default}), not random ones; drop weights= to use them, or pass weights=<file>")
        log.warning("weights=random: %s runs with seeded random weights; its outputs and scores mean nothing", model)
        return WeightsChoice("random")
    path = user_weights(cfg)
    if path is not None:
        return WeightsChoice("file", path)
    if default:
        log.info("no weights= given: %s runs its default weights: %s", model, default)
        return WeightsChoice("default", description=str(default))
    if stage in RANDOM_OK_STAGES:
        log.warning("no weights= given: stage=%s times %s with seeded random weights (latency does not depend "
                    "on the weights; pass weights=<file> to time yours)", stage, model)
        return WeightsChoice("random")
    help_text = cfg.model.get("weights_help")
    what = f"weights=<file> ({help_text})" if help_text else "weights=<your checkpoint file>"
    alt = "" if stage == "export" else ", or model_file=<an exported model>"
    raise ConfigError(f"stage={stage} needs the {model} model's weights, and its plugin ships none: pass {what}{alt}; "
                      f"weights=random runs seeded random weights on purpose (outputs and scores then mean nothing)")


def stage_needs_weights(ctx: Any) -> bool:
    """Whether this stage will build or export the model (so it must know its weights before it starts).

    ``export`` always; ``quantize`` unless ``model_file=`` names the FP32 ONNX; ``convert`` unless
    ``model_file=`` names an ONNX; the stages that run a backend
    (``eval``, ``infer``, ``predict``, ``perf``) when the backend exports an ONNX without a
    ``model_file=`` (``onnxruntime``) or builds the torch model (``torch``); ``compare`` when either
    side does so with the run's ``weights=`` (a side given its own ``compare.<side>_model`` brings
    its own file); never ``oracle``, ``replay``, ``acl`` nor the stages that run no model.
    """
    cfg = ctx.cfg
    given = cfg.get("model_file")
    if ctx.stage == "export":
        return True
    if ctx.stage == "quantize":
        return not given
    if ctx.stage == "convert":
        return not (given and str(given).endswith(".onnx"))
    if ctx.stage == "compare":
        return any(compare_side_needs_weights(ctx, side) for side in ("reference", "candidate"))
    if ctx.stage not in ("eval", "infer", "predict", "perf"):
        return False
    return backend_needs_weights(ctx, str(cfg.backend.name), given)


def backend_needs_weights(ctx: Any, name: str, model_file: Any) -> bool:
    """Backend ``name`` builds the torch model, or exports an ONNX because no ``model_file`` was given."""
    backend = ctx.manager.backend_class(name)
    if getattr(backend, "builds_model", False):
        return True
    return getattr(backend, "model_kind", None) == "onnx" and not model_file


def compare_side_needs_weights(ctx: Any, side: str) -> bool:
    """``stage=compare``: the ``side`` backend runs the model from the run's own ``weights=``."""
    from zoo_core.stages.compare_stage import side_context

    sctx, name, _options = side_context(ctx, side)
    if sctx.cfg.get("weights") != ctx.cfg.get("weights"):
        return False  # compare.<side>_model names this side's own checkpoint
    return backend_needs_weights(ctx, name, sctx.cfg.get("model_file"))


def preflight(ctx: Any) -> None:
    """Choose the weights at the start of a stage that needs them, so a missing ``weights=`` stops the
    run before any image is read or worker started."""
    if stage_needs_weights(ctx):
        ctx.weights_choice()
