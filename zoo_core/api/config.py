"""Typed config sections: the base classes of a plugin's config schemas.

A model plugin declares the type of every key of the config files it ships, as the core's
``ZooSchema`` does for the run-level keys, in a module attribute of its entry-point module::

    ZOO_CONFIG_SCHEMAS = {"model/mydet": MyDetConfig, "dataset/mydet_discs": DiscsConfig}

(keys: ``<group>/<name>`` of ``conf/<group>/<name>.yaml``; values: dataclasses deriving from
:class:`ModelConfig` / :class:`DatasetConfig`; one dataclass per file). A model scored by zoo-core's
dataset API derives from :class:`WiderFaceModelConfig` or :class:`CocoModelConfig`, which declare the
model keys that evaluator reads. The datasets zoo-core ships (``widerface``, ``coco``...) are typed by
zoo-core itself (:mod:`zoo_core.config.dataset_schemas`); a plugin declares only the datasets it
ships. The core merges each composed section into its schema before anything runs, so
``model.iou_thresh=abc`` fails at composition with one line naming the key and its type, and the
hooks receive values of the declared types (``model.iou_thresh=1`` arrives as ``1.0``). Keys added
on purpose with ``+model.key=value`` stay untyped.

Field types are what OmegaConf supports: ``int``, ``float``, ``bool``, ``str``, an ``enum.Enum``
(``enum.StrEnum`` keeps ``str(value)`` the plain name), ``list[...]``, ``dict[str, ...]`` and
``X | None``. Values come from the plugin's YAML file; a field's default is used only when the YAML
leaves the key out (``"???"``, OmegaConf's ``MISSING``, makes the YAML value mandatory).

A float key with a meaningful range declares it with :func:`in_range` (``iou_thresh: float =
in_range(0.5, 0, 1, lo_open=True)``): a value outside it fails at composition like a value of the
wrong type. On a list key the range applies to every element, and ``length=`` fixes the number of
elements (``std: list[float] = in_range(MISSING, 0, lo_open=True, length=3)``); ``multiple=`` requires a
whole multiple (``input_h: int = in_range(512, 1, multiple=32)``, a network that halves its input 5 times).
NaN and infinite values are refused for every key (``model.threshold=nan``).

Importing this module is cheap: dataclasses only.
"""
from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

#: OmegaConf's marker of a mandatory value (``omegaconf.MISSING``), without importing omegaconf.
MISSING: Any = "???"

#: The ``dataclasses.field`` metadata key :func:`in_range` sets.
RANGE_KEY = "zoo_range"

#: The ``dataclasses.field`` metadata key :func:`in_range` sets when given ``length``.
LENGTH_KEY = "zoo_length"

#: The ``dataclasses.field`` metadata key :func:`in_range` sets when given ``multiple``.
MULTIPLE_KEY = "zoo_multiple"


def in_range(default: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             hi_open: bool = False, length: int | None = None, multiple: int | None = None) -> Any:
    """A schema field whose numeric value must lie in ``[lo, hi]`` (``(lo`` / ``hi)`` when open; ``None``:
    unbounded on that side), checked at composition; ``default`` as a plain field's (``MISSING`` too).
    On a list field every element must lie in the range, and ``length`` (if given) is the exact
    number of elements (a ``None`` value, where the type allows it, is not checked). ``multiple`` (if
    given) requires each value to be a whole multiple of it (``multiple=32``: 64, 512, not 500)."""
    metadata: dict[str, Any] = {RANGE_KEY: (lo, hi, lo_open, hi_open)}
    if length is not None:
        metadata[LENGTH_KEY] = int(length)
    if multiple is not None:
        metadata[MULTIPLE_KEY] = int(multiple)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    """Keys of every ``model`` section; a plugin's model schema subclasses it.

    :ivar name: the model name (the ``zoo.models`` entry-point name).
    :ivar default_weights: when the plugin uses real weights of its own with no ``weights=`` given
        (e.g. a file from an installed package), a one-line description of them; ``None`` (the
        default) when it has none: then every stage whose output depends on the weights refuses to
        run without ``weights=<file>`` or ``weights=random``. Seeded random initial weights are
        *not* default weights.
    :ivar weights_help: what to pass as ``weights=`` (which file, where to get it), quoted in the
        error when the weights are missing.
    :ivar export_keys: the keys that change the export (:mod:`zoo_core.runs.export_keys`); ``None``:
        every key counts.
    :ivar export_keys_by_target: keys that change the export for one target only, by target
        (``{ascend: [input_h, input_w]}``), added to ``export_keys`` for that target.
    :ivar aipp_keys: the keys the plugin's AIPP config (ATC ``--insert_op_conf``) is computed from, e.g.
        ``[mean, std]``: an OM whose ATC line inserts AIPP records their values, and a run that loads it with
        other values is refused (:mod:`zoo_core.runs.om_record`); they never re-export.
    :ivar predict_threshold: ``stage=predict``'s default ``stage.score_threshold`` (``None``: keep all).
    :ivar class_names: ``stage=predict``'s box labels, indexed by ``Detections.labels``.
    :ivar quantize_exclude_op_types: ONNX op types ``stage=quantize`` keeps in FP32 (e.g. ``DeformConv``);
        written down in the INT8 model's record (docs/quantize.md).
    """

    name: str = MISSING
    default_weights: str | None = None
    weights_help: str | None = None
    export_keys: list[str] | None = None
    export_keys_by_target: dict[str, list[str]] | None = None
    aipp_keys: list[str] | None = None
    predict_threshold: float | None = None
    class_names: list[str] | None = None
    quantize_exclude_op_types: list[str] = field(default_factory=list)


class PredCount(enum.StrEnum):
    """``model.pred_count``: how a WIDER prediction file's count line is read."""

    strict = "strict"
    lines = "lines"


class PredOrder(enum.StrEnum):
    """``model.pred_order``: the order a WIDER prediction file's boxes are scored in."""

    sort = "sort"
    keep = "keep"


@dataclass
class WiderFaceModelConfig(ModelConfig):
    """A model scored on ``kind: widerface`` datasets: the keys zoo-core's WIDER FACE evaluator reads.

    :ivar iou_thresh: IoU of a true positive (0.5, the official protocol).
    :ivar report_both_iou: also report every setting at IoU 0.5 and 0.4.
    :ivar pred_count: reading a WIDER prediction tree a user brings: ``strict`` (a count line that
        disagrees with the box lines is an error) or ``lines`` (trust the box lines).
    :ivar pred_order: boxes of a prediction file: ``sort`` (stable descending score, as MATLAB
        ``read_pred.m``) or ``keep`` (file order, as wondervictor).
    """

    iou_thresh: float = in_range(0.5, 0.0, 1.0, lo_open=True)
    report_both_iou: bool = False
    pred_count: PredCount = PredCount.strict
    pred_order: PredOrder = PredOrder.sort


@dataclass
class CocoModelConfig(ModelConfig):
    """A model scored on ``kind: coco`` datasets: the keys zoo-core's COCO evaluator reads.

    :ivar category_ids: 0-based class index -> COCO category id (``None``: the 80 COCO ids).
    :ivar coco_evaluator: ``auto`` | ``pycocotools`` | ``faster-coco-eval``.
    """

    category_ids: list[int] | None = None
    coco_evaluator: str = "auto"


@dataclass
class DatasetConfig:
    """Keys of every ``dataset`` section (the core adds the sharding keys to each dataset).

    :ivar kind: ``widerface`` | ``coco`` for a dataset zoo-core reads and scores; ``None`` when the
        model's own ``dataset`` / ``evaluate`` hooks do.
    :ivar generator: the zoo-core generator that writes a sample dataset on first use, if any.
    """

    name: str | None = None
    kind: str | None = None
    generator: str | None = None
    num_shards: int = 1
    shard: int = 0
    limit: int | None = None


_T = TypeVar("_T")


def per_config(fn: Callable[[Any], _T]) -> Callable[[Any], _T]:
    """Decorate ``fn(cfg)`` so it runs once per config object (e.g. decode parameters a hook reads
    from ``cfg`` on every batch: OmegaConf access costs tens of microseconds per key).

    A run never changes its config in place; a caller that changes values passes a new object
    (``OmegaConf.merge``), which is computed afresh. The config object is kept with its value, so its
    ``id`` cannot be reused while remembered; at most 64 configs are remembered.
    """
    memo: dict[int, tuple[Any, _T]] = {}

    @functools.wraps(fn)
    def once(cfg: Any) -> _T:
        hit = memo.get(id(cfg))
        if hit is not None and hit[0] is cfg:
            return hit[1]
        value = fn(cfg)
        if len(memo) >= 64:
            memo.clear()
        memo[id(cfg)] = (cfg, value)
        return value

    return once
