"""Segmentation scores: dataset-level (one confusion matrix) and per-image.

IoU / Jaccard and mean IoU as in the PASCAL VOC challenge (Everingham et al., IJCV
2010); pixel accuracy, mean accuracy and frequency-weighted IoU as defined in FCN
(Long et al., "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015);
F-beta from van Rijsbergen, "Information Retrieval" (1979).

How every mean is taken. For class ``c`` let ``TP_c``, ``GT_c`` (ground-truth pixels of
``c``) and ``PR_c`` (pixels predicted as ``c``) be counts over the non-ignored pixels.

- :class:`ConfusionMatrix` (the default, *dataset-level*): the counts are summed over
  the whole dataset first, ``IoU_c = TP_c / (GT_c + PR_c - TP_c)`` on the sums, then
  ``mIoU = nanmean_c IoU_c``. A class absent from ground truth *and* prediction of the
  whole dataset is 0/0 = NaN and left out; a class absent from the ground truth but
  predicted has IoU 0 and counts. This is the convention of MMSegmentation's
  ``IoUMetric`` (``mmseg/evaluation/metrics/iou_metric.py``: per-image histograms are
  summed, ``IoU = intersect / union`` on the totals, the summary is ``np.nanmean``), so
  numbers compare with papers that use it.
- :class:`PerImageMetrics` (*per-image*): ``IoU_{i,c}`` is computed within image ``i``
  and is NaN where ``GT_{i,c} = PR_{i,c} = 0`` (class absent from that image's ground
  truth and prediction). ``IoU_c = mean of IoU_{i,c} over the images where it is not
  NaN``; ``mIoU = nanmean_c IoU_c``; ``image mIoU = mean_i nanmean_c IoU_{i,c}`` over
  images with at least one defined class. Small objects weigh as much as large ones.
"""

from .confusion import ConfusionMatrix
from .per_image import PerImageMetrics
from .surface import SurfaceMetrics, label_boundaries, surface_scores

__all__ = ["ConfusionMatrix", "PerImageMetrics", "SurfaceMetrics", "label_boundaries", "surface_scores"]
