"""pixelwise: image segmentation in plain PyTorch.

Public API::

    from pixelwise import InstancePredictor, Segmenter, create_model, list_models, load, save
    model = create_model("unet", encoder=None, in_channels=1, num_classes=2)
    seg = Segmenter.from_pretrained("runs/demo/best"); result = seg("image.png", tile=512)
"""

from __future__ import annotations

from . import export as _export  # noqa: F401  (registers the Segmenter's ONNX Runtime backends)
from . import losses
from .compat import DPT, FPN, DeepLabV3, DeepLabV3Plus, PSPNet, Segformer, Unet, UnetPlusPlus, UPerNet
from .hub import load
from .hub import save_model as save
from .infer.instance_predictor import InstancePredictor  # also registers the instance task's predictor
from .infer.segmenter import Segmenter, SegmentResult
from .models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "load", "save", "losses", "Segmenter", "SegmentResult", "InstancePredictor",
           "__version__",
           # segmentation_models.pytorch-style constructors (pixelwise.compat)
           "Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "Segformer", "UPerNet", "DPT"]
