"""Build the backend a stage asked for, from the run's config: the stage resolves the model file."""
from __future__ import annotations

from typing import Any

from zoo_core.backends.base import Backend, ModelIO
from zoo_core.runs.context import RunContext
from zoo_core.runs.model_files import quantize_int8, resolve_model_file


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
    """The backend ``name`` (default ``backend.name``) for this run's model.

    With ``quantize=int8`` an ``onnx`` backend loads the INT8 ONNX (built first when missing or stale,
    ``model_file`` then naming the FP32 ONNX to quantize) and an ``om`` backend the INT8 OM; other
    backends (torch, oracle, replay) refuse it."""
    name = name or str(ctx.cfg.backend.name)
    cls = ctx.manager.backend_class(name)
    kind = getattr(cls, "model_kind", None)
    if quantize_int8(ctx):
        path = int8_model_file(ctx, name, kind, model_file)
    else:
        path = resolve_model_file(ctx, kind, model_file)
    opts = backend_options(ctx, name)
    if options:
        opts.update(options)
    backend = cls(model_file=path, options=opts, io=model_io(ctx))
    ctx.opened_backend = {"backend": name, "model_file": str(path) if path else None}
    return backend


def int8_model_file(ctx: RunContext, name: str, kind: str | None, model_file: str | None):
    """The INT8 model a backend of ``kind`` loads (``quantize=int8``; docs/quantize.md)."""
    from zoo_core.api.errors import ConfigError

    if kind == "onnx":
        from zoo_core.quantize.onnxruntime_int8 import ensure_int8_onnx

        given = model_file or ctx.cfg.get("model_file")
        if given and not str(given).endswith(".onnx"):
            raise ConfigError(f"model_file={given} is not an .onnx file, which quantize=int8 quantizes")
        return ensure_int8_onnx(ctx, given)
    if kind == "om":
        return resolve_model_file(ctx, kind, model_file)
    raise ConfigError(f"quantize=int8 does not apply to backend={name}: it runs no quantized model file; "
                      "use backend=onnxruntime (INT8 ONNX) or backend=acl (AMCT + ATC OM), or quantize=none")
