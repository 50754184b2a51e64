"""Build the backend a stage asked for, from the run's config: the stage resolves the model file."""
from __future__ import annotations

from typing import Any

from zoo_core.backends.base import Backend, ModelIO
from zoo_core.runs.context import RunContext
from zoo_core.runs.model_files import resolve_model_file


def model_io(ctx: RunContext) -> ModelIO:
    """The selected model's hooks as the callables a backend may use."""
    cfg, hooks = ctx.cfg, ctx.hooks
    return ModelIO(
        model=ctx.model_name,
        input_specs=lambda: hooks.input_spec(cfg=cfg),
        output_specs=lambda meta: hooks.output_spec(cfg=cfg, meta=meta),
        oracle=lambda sample, meta: hooks.oracle_outputs(cfg=cfg, sample=sample, meta=meta, dataset=ctx.dataset),
        build_model=lambda: hooks.build_model(cfg=cfg, weights=ctx.weights_choice().hook_weights),
    )


def backend_options(ctx: RunContext, name: str) -> dict[str, Any]:
    """The backend's config section as a plain dict, plus the run-level facts some backends need."""
    from omegaconf import OmegaConf

    cfg = ctx.cfg
    opts: dict[str, Any] = {}
    if str(cfg.backend.get("name")) == name:
        opts = OmegaConf.to_container(cfg.backend, resolve=True)  # type: ignore[assignment]
    opts.setdefault("batch_size", int(cfg.batch_size))
    opts.setdefault("weights", ctx.weights())
    if name == "replay":
        opts["dir"] = opts.get("dir") or cfg.get("outputs_dir")
        opts.setdefault("dump_dtype", cfg.get("dump_dtype"))
    if name == "acl":
        opts.setdefault("device_id", int(cfg.get("device_id", 0)))
        opts["gears"] = list(cfg.atc.dynamic_batch) if cfg.atc.get("dynamic_batch") else None
    return opts


def open_backend(ctx: RunContext, name: str | None = None, model_file: str | None = None,
                 options: dict[str, Any] | None = None) -> Backend:
    """The backend ``name`` (default ``backend.name``) for this run's model."""
    name = name or str(ctx.cfg.backend.name)
    cls = ctx.manager.backend_class(name)
    path = resolve_model_file(ctx, getattr(cls, "model_kind", None), model_file)
    opts = backend_options(ctx, name)
    if options:
        opts.update(options)
    return cls(model_file=path, options=opts, io=model_io(ctx))
