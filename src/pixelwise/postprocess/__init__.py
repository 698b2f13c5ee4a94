"""Post-processing of predictions: dense CRF refinement and label-map cleanup.

- :mod:`.crf`: fully connected CRF (Krähenbühl and Koltun, NIPS 2011) with mean-field
  inference on a permutohedral lattice (:mod:`.lattice`), as a function
  (:func:`dense_crf`), a fixed module (:class:`DenseCRF`) and a trainable layer
  (:class:`CRFasRNN`, Zheng et al., ICCV 2015).
- :mod:`.cleanup`: connected-component cleanup of label maps (small components, holes,
  largest component per class).
- :mod:`.decision`: logits to labels for binary, multiclass and multilabel models.
- :mod:`.instances`: instances to a semantic label map.
"""

import importlib

# Names -> their module, imported on first use: label-map cleanup needs SciPy, and
# `import pixelwise` (which uses .decision) must not load it (tests/test_transforms.py).
_LAZY = {"clean_mask": "cleanup", "fill_holes": "cleanup", "keep_largest_component": "cleanup",
         "remove_small_components": "cleanup", "CRFasRNN": "crf", "CRFKernels": "crf", "CRFRefinedModel": "crf",
         "DenseCRF": "crf", "dense_crf": "crf", "mean_field": "crf", "PermutohedralLattice": "lattice",
         "gaussian_blur_2d": "lattice"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CRFKernels",
    "CRFRefinedModel",
    "CRFasRNN",
    "DenseCRF",
    "PermutohedralLattice",
    "clean_mask",
    "dense_crf",
    "fill_holes",
    "gaussian_blur_2d",
    "keep_largest_component",
    "mean_field",
    "remove_small_components",
]
