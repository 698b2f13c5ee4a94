"""Segmentation losses and :func:`build_loss`, which turns a config list into one module.

Importing this package registers every loss in :data:`pixelwise.registry.LOSSES`.
Every registered loss has one signature: ``Loss(mode="multiclass", *, ignore_index=255,
...)``, ``mode`` (``"binary"``, ``"multiclass"``, ``"multilabel"``; positional too, as in
smp) then keyword-only options. The options they share (``mode``, ``ignore_index``,
``reduction``, ``classes``, ``class_weights``, ``smooth``, ``eps``) are checked once, by
:class:`~pixelwise.losses.options.LossOptions`, kept as ``loss.options``; the tensor
layouts are in :mod:`pixelwise.losses._targets`, and the region losses (Dice, IoU,
Tversky, sensitivity-specificity) share one functional core, :mod:`pixelwise.losses.region`.

Registered names (module, class):

- ``"ce"`` (:mod:`.ce`, :class:`CrossEntropyLoss`): pixel-wise (binary) cross-entropy.
- ``"dice"`` (:mod:`.dice`, :class:`DiceLoss`): soft Dice (V-Net).
- ``"focal"`` (:mod:`.focal`, :class:`FocalLoss`): focal loss (Lin et al. 2017).
- ``"iou"`` (:mod:`.jaccard`, :class:`JaccardLoss`): soft IoU (Rahman & Wang 2016).
- ``"tversky"``, ``"focal_tversky"`` (:mod:`.tversky`, :class:`TverskyLoss`,
  :class:`FocalTverskyLoss`): Salehi et al. 2017; Abraham & Khan 2019.
- ``"lovasz"`` (:mod:`.lovasz`, :class:`LovaszLoss`): Lovász-softmax / hinge
  (Berman et al. 2018).
- ``"topk"``, ``"ohem"`` (:mod:`.topk`, :class:`TopKCrossEntropyLoss`,
  :class:`OhemCrossEntropyLoss`): cross-entropy on the hardest pixels.
- ``"boundary"``, ``"hausdorff"`` (:mod:`.boundary`, :class:`BoundaryLoss`,
  :class:`HausdorffDTLoss`): distance-map losses (Kervadec et al. 2019; Karimi &
  Salcudean 2019).
- ``"distance_ce"`` (:mod:`.distance_ce`, :class:`DistanceWeightedCrossEntropyLoss`):
  cross-entropy weighted up near ground-truth boundaries.
- ``"sens_spec"`` (:mod:`.sensitivity_specificity`, :class:`SensitivitySpecificityLoss`):
  Brosch et al. 2015.
"""

from __future__ import annotations

import inspect
import numbers

from torch import nn

from ..errors import ConfigError
from ..registry import LOSSES, lookup
from .adversarial import AdversarialLoss, LabelMapDiscriminator
from .boundary import BoundaryLoss, HausdorffDTLoss
from .ce import CrossEntropyLoss
from .combined import CombinedLoss
from .dice import DiceLoss
from .distance_ce import DistanceWeightedCrossEntropyLoss
from .focal import FocalLoss
from .jaccard import JaccardLoss
from .lovasz import LovaszLoss
from .sensitivity_specificity import SensitivitySpecificityLoss
from .topk import OhemCrossEntropyLoss, TopKCrossEntropyLoss
from .tversky import FocalTverskyLoss, TverskyLoss

# smp's mode constants, so `smp.losses.DiceLoss(smp.losses.MULTICLASS_MODE)` ports unchanged.
BINARY_MODE = "binary"
MULTICLASS_MODE = "multiclass"
MULTILABEL_MODE = "multilabel"

__all__ = [
    "BINARY_MODE",
    "MULTICLASS_MODE",
    "MULTILABEL_MODE",
    "AdversarialLoss",
    "LabelMapDiscriminator",
    "BoundaryLoss",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "DistanceWeightedCrossEntropyLoss",
    "FocalLoss",
    "FocalTverskyLoss",
    "HausdorffDTLoss",
    "JaccardLoss",
    "LovaszLoss",
    "OhemCrossEntropyLoss",
    "SensitivitySpecificityLoss",
    "TopKCrossEntropyLoss",
    "TverskyLoss",
    "build_loss",
]


def build_loss(
    specs: list[dict], *, ignore_index: int | None = 255, mode: str = "multiclass"
) -> CombinedLoss:
    """Build a :class:`CombinedLoss` from specs such as
    ``[{"name": "ce", "class_weights": [1, 5]}, {"name": "dice", "weight": 0.5}]``.

    In each spec, ``name`` picks the loss from :data:`pixelwise.registry.LOSSES`,
    ``weight`` (default 1.0) is its factor in the sum, and every other key is passed to
    the loss constructor. ``ignore_index`` and ``mode`` are passed to every loss unless
    its spec sets them. Terms are named after their loss; a repeated name gets a suffix
    (``"dice"``, ``"dice_1"``), which is the key in ``CombinedLoss.last_terms``.

    Raises :class:`~pixelwise.errors.ConfigError` naming the loss and the bad key for an
    unknown name, an unknown option or a bad value.
    """
    if isinstance(specs, dict) or not isinstance(specs, (list, tuple)) or len(specs) == 0:
        raise ConfigError(
            f"loss specs must be a non-empty list of dicts like [{{'name': 'ce'}}] but got "
            f"{specs!r}"
        )
    terms: dict[str, nn.Module] = {}
    weights: dict[str, float] = {}
    for position, spec in enumerate(specs):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(
                f"loss spec #{position} must be a dict with a 'name' key but got {spec!r}"
            )
        options = dict(spec)
        name = options.pop("name")
        weight = options.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise ConfigError(f"loss {name!r}: weight must be a number but got {weight!r}")
        options.setdefault("ignore_index", ignore_index)
        options.setdefault("mode", mode)
        try:
            constructor = lookup(LOSSES, name, "loss")
        except KeyError as error:
            raise ConfigError(error.args[0]) from None

        accepted = _keyword_names(constructor)
        if accepted is not None:
            unknown = sorted(set(options) - accepted)
            if unknown:
                raise ConfigError(
                    f"loss {name!r} has no option {', '.join(map(repr, unknown))}; its "
                    f"options are {', '.join(sorted(accepted))} (plus 'weight')"
                )
        try:
            module = constructor(**options)
        except TypeError as error:
            raise ConfigError(f"loss {name!r} rejected the options {options}: {error}") from error

        key, suffix = name, 1
        while key in terms:
            key, suffix = f"{name}_{suffix}", suffix + 1
        terms[key] = module
        weights[key] = float(weight)
    return CombinedLoss(terms, weights)


def _keyword_names(constructor) -> set[str] | None:
    """Names the constructor accepts as keywords, or None if it takes ``**kwargs``."""
    try:
        parameters = inspect.signature(constructor).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
