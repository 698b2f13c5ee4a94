"""A weighted sum of named loss terms, e.g. ``1.0 * ce + 0.5 * dice``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


class CombinedLoss(nn.Module):
    """``total = sum_k weights[k] * terms[k](logits, target)``.

    Every term is called with the same ``(logits, target)`` and must return a scalar
    (so ``reduction="none"`` terms do not fit). After each forward, ``last_terms`` maps
    each term's name to its *unweighted* value as a detached Python float, for the
    training loop to log; checking the total for NaN/inf is the loop's job.

    Args:
        terms: name -> loss module. Order is kept; names must be valid
            :class:`torch.nn.ModuleDict` keys (no ``"."``).
        weights: name -> weight of that term; a missing name means 1.0.
    """

    def __init__(
        self, terms: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        if len(terms) == 0:
            raise ValueError("CombinedLoss: terms is empty; give at least one loss")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(terms))
        if unknown:
            raise ValueError(
                f"CombinedLoss: weights name {unknown} which are not terms; terms are "
                f"{list(terms)}"
            )
        # A ModuleDict so that buffers such as class weights follow .to(device).
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = {name: float(weights.get(name, 1.0)) for name in terms}
        self.last_terms: dict[str, float] = {}

    def extra_repr(self) -> str:
        return "weights=" + repr(self.weights)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the weighted sum as a scalar tensor and record ``last_terms``."""
        total: Tensor | None = None
        values: dict[str, Tensor] = {}
        for name, term in self.terms.items():
            value = term(logits, target)
            if value.dim() != 0:
                raise ValueError(
                    f"CombinedLoss: term {name!r} returned shape {tuple(value.shape)} but a "
                    f"scalar is needed; use reduction='mean' or 'sum' for it"
                )
            values[name] = value
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
        # One device->host copy for all terms instead of one sync per term (float32,
        # not float64, because MPS has no float64; plenty for logging).
        floats = torch.stack([value.detach().float() for value in values.values()]).tolist()
        self.last_terms = dict(zip(values, floats))
        return total
