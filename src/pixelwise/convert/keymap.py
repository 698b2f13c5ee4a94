"""Renaming state-dict keys by ordered regular-expression rules, with every key accounted for."""

from __future__ import annotations

import re
from typing import Sequence

from torch import Tensor

from ..errors import ConfigError

Rule = tuple[str, str | None]  # (pattern, replacement); replacement None drops the key


def rename(state: dict[str, Tensor], rules: Sequence[Rule], *, source: str) -> dict[str, Tensor]:
    """Apply the first matching rule (``re.fullmatch``) to each key; ``None`` drops it.

    A key no rule matches is an error naming it: a silent leftover would mean a layer that
    keeps its random initialisation.
    """
    compiled = [(re.compile(p), r) for p, r in rules]
    out: dict[str, Tensor] = {}
    unmatched = []
    for key, value in state.items():
        for pattern, replacement in compiled:
            if pattern.fullmatch(key):
                if replacement is not None:
                    out[pattern.sub(replacement, key)] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise ConfigError(f"{len(unmatched)} keys of the {source} checkpoint have no pixelwise counterpart, e.g. "
                          f"{unmatched[:4]}; is it the architecture named by --from / its config.json?")
    return out


def load_into(model, state: dict[str, Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` whose failure names the first missing/unexpected keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ConfigError(f"converted {source} weights do not fit the pixelwise model: missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]}, shape mismatches {wrong[:4]}")
    model.load_state_dict(state)
