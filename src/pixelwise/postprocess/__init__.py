"""Post-processing of predictions: dense CRF refinement and label-map cleanup.

- :mod:`.crf`: fully connected CRF (Krähenbühl and Koltun, NIPS 2011) with mean-field
  inference on a permutohedral lattice (:mod:`.lattice`), as a function
  (:func:`dense_crf`), a fixed module (:class:`DenseCRF`) and a trainable layer
  (:class:`CRFasRNN`, Zheng et al., ICCV 2015).
- :mod:`.cleanup`: connected-component cleanup of label maps (small components, holes,
  largest component per class).
"""

from .cleanup import (
    clean_mask,
    fill_holes,
    keep_largest_component,
    remove_small_components,
)
from .crf import CRFasRNN, CRFKernels, CRFRefinedModel, DenseCRF, dense_crf, mean_field
from .lattice import PermutohedralLattice, gaussian_blur_2d

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
