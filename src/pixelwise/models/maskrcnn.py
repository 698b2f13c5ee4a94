"""Mask R-CNN (He et al., "Mask R-CNN", ICCV 2017) on any pixelwise encoder.

The parts are torchvision's detection building blocks, assembled around a pixelwise
encoder instead of a fixed ResNet:

    image ─► encoder (timm / torchvision / pixelwise) ─► FPN (Lin et al. 2017) + max-pool level
          ─► RPN (Ren et al. 2015: anchors, objectness, box deltas, NMS)
          ─► MultiScaleRoIAlign 7×7 ─► two-FC box head ─► class scores + per-class box deltas
          ─► MultiScaleRoIAlign 14×14 ─► 4 convs + deconv ─► per-class 28×28 mask logits
          └► optional keypoint branch (Mask R-CNN §5: 17-keypoint style heatmaps), ``num_keypoints > 0``

The mask branch predicts one sigmoid mask per class and, in training, is supervised with
binary cross-entropy on the ground-truth class's mask only, for positive proposals only
(torchvision ``roi_heads.maskrcnn_loss`` indexes ``mask_logits[i, label_i]``) — the
decoupling of mask and class that the paper argues for (its Table 2b).

Inputs are images scaled to 0..1; the model normalises them with ``image_mean`` /
``image_std`` and resizes so the short side is ``min_size`` (long side at most
``max_size``), then maps the outputs back to input pixels. This model is not in
``registry.MODELS`` (its inputs and outputs differ from semantic models); it lives in
``registry.INSTANCE_MODELS`` and is built with :func:`create_instance_model`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN as TorchvisionMaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import (
    KeypointRCNNHeads,
    KeypointRCNNPredictor,
)
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..encoders import build_encoder
from ..errors import ConfigError
from ..registry import INSTANCE_MODELS, lookup, register

__all__ = ["EncoderFPN", "Instances", "MaskRCNN", "create_instance_model", "list_instance_models"]


@dataclass
class Instances:
    """Detections of one image, in input pixel coordinates.

    Attributes:
        boxes: ``(D, 4)`` float xyxy.
        labels: ``(D,)`` int64 classes in ``1..num_classes-1`` (0 is background).
        scores: ``(D,)`` float confidences, sorted high to low per class after NMS.
        masks: ``(D, H, W)`` float mask probabilities in 0..1 (threshold e.g. at 0.5).
        keypoints: ``(D, P, 3)`` (x, y, visibility) or ``None`` without a keypoint head.
        keypoint_scores: ``(D, P)`` or ``None``.
    """

    boxes: Tensor
    labels: Tensor
    scores: Tensor
    masks: Tensor
    keypoints: Tensor | None = None
    keypoint_scores: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class EncoderFPN(nn.Module):
    """A pixelwise encoder followed by a Feature Pyramid Network.

    Uses the deepest encoder feature of each distinct reduction ``>= min_reduction``
    (the paper's C2..C5 for a ResNet), adds a stride-2 max-pool level on top (P6, used by
    the RPN only), and returns an ``OrderedDict`` ``{"0": P2, ..., "pool": P6}`` of
    ``(N, fpn_channels, H / s, W / s)`` maps, the format torchvision's heads expect.

    Attributes: ``out_channels`` (int), ``strides`` (list of the level strides, pool included).
    """

    def __init__(self, encoder: nn.Module, *, fpn_channels: int = 256, min_reduction: int = 4) -> None:
        super().__init__()
        chosen: dict[int, int] = {}
        for index, reduction in enumerate(encoder.reductions):
            if reduction >= min_reduction:
                chosen[reduction] = index  # later features with the same reduction win: they are deeper
        if not chosen:
            raise ConfigError(f"encoder reductions {encoder.reductions} have none >= {min_reduction}; "
                              f"Mask R-CNN needs a downsampling encoder (e.g. resnet50)")
        self.encoder = encoder
        self.indices = [chosen[r] for r in sorted(chosen)]
        self.fpn = FeaturePyramidNetwork([encoder.out_channels[i] for i in self.indices], fpn_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels
        self.strides = sorted(chosen) + [2 * max(chosen)]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features = self.encoder(x)
        return self.fpn(OrderedDict((str(k), features[i]) for k, i in enumerate(self.indices)))


class MaskRCNN(nn.Module):
    """Mask R-CNN with a pixelwise encoder backbone; see the module docstring for the parts.

    Args:
        encoder: encoder name for :func:`pixelwise.encoders.build_encoder`.
        encoder_weights: ``None``, ``"imagenet"`` or a local weight file.
        in_channels: image channels.
        num_classes: classes including background (label 0), e.g. 5 for synthetic_instances.
        min_size, max_size: images are resized so the short side is ``min_size`` and the long
            side at most ``max_size`` (torchvision's 800 / 1333 suit COCO; use the image size
            for small images, upscaling them costs time and gains nothing).
        image_mean, image_std: per-channel normalisation of 0..1 inputs (ImageNet by default).
        fpn_channels: FPN and head input width (paper: 256).
        anchor_scale: anchor side at each level = ``anchor_scale * stride`` (torchvision: 8,
            i.e. 32 px on P2 .. 512 px on P6); lower it for small objects.
        aspect_ratios: anchor height/width ratios, the same on every level.
        representation_size: width of the two-FC box head (paper: 1024).
        mask_channels, mask_layers: width and depth of the mask head's conv tower (paper: 256, 4).
        rpn_pre_nms_top_n_train/_test, rpn_post_nms_top_n_train/_test: proposals kept per
            level before NMS and per image after it.
        rpn_batch_size_per_image, box_batch_size_per_image: anchors / RoIs sampled for losses.
        box_score_thresh, box_nms_thresh, box_detections_per_img: inference filtering.
        num_keypoints: > 0 adds the keypoint branch (targets then need ``"keypoints"`` (K, P, 3)).

    ``forward(images, targets=None)``: ``images`` a ``(N, C, H, W)`` tensor or a list of
    ``(C, H_i, W_i)`` tensors in 0..1. Training (needs targets in torchvision's format:
    ``boxes`` (K, 4) xyxy, ``labels`` (K,), ``masks`` (K, H, W)) returns the loss dict
    ``loss_classifier, loss_box_reg, loss_mask, loss_objectness, loss_rpn_box_reg``
    (+ ``loss_keypoint``); evaluation returns a list of :class:`Instances`.
    """

    def __init__(
        self,
        *,
        encoder: str = "resnet50",
        encoder_weights: str | None = None,
        in_channels: int = 3,
        num_classes: int = 91,
        min_size: int = 800,
        max_size: int = 1333,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        fpn_channels: int = 256,
        anchor_scale: float = 8.0,
        aspect_ratios: list[float] | tuple[float, ...] = (0.5, 1.0, 2.0),
        representation_size: int = 1024,
        mask_channels: int = 256,
        mask_layers: int = 4,
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 512,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
        num_keypoints: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"Mask R-CNN num_classes counts the background too; got {num_classes}, need >= 2")
        image_mean = list(image_mean) if image_mean is not None else ([0.485, 0.456, 0.406] if in_channels == 3
                                                                      else [0.5] * in_channels)
        image_std = list(image_std) if image_std is not None else ([0.229, 0.224, 0.225] if in_channels == 3
                                                                   else [0.25] * in_channels)
        if len(image_mean) != in_channels or len(image_std) != in_channels:
            raise ConfigError(f"image_mean {image_mean} / image_std {image_std} need one value per input "
                              f"channel (in_channels={in_channels})")
        self.config = {
            "name": "maskrcnn", "encoder": encoder, "encoder_weights": encoder_weights,
            "in_channels": in_channels, "num_classes": num_classes, "min_size": min_size, "max_size": max_size,
            "image_mean": image_mean, "image_std": image_std, "fpn_channels": fpn_channels,
            "anchor_scale": float(anchor_scale), "aspect_ratios": [float(a) for a in aspect_ratios],
            "representation_size": representation_size, "mask_channels": mask_channels, "mask_layers": mask_layers,
            "rpn_pre_nms_top_n_train": rpn_pre_nms_top_n_train, "rpn_pre_nms_top_n_test": rpn_pre_nms_top_n_test,
            "rpn_post_nms_top_n_train": rpn_post_nms_top_n_train,
            "rpn_post_nms_top_n_test": rpn_post_nms_top_n_test,
            "rpn_batch_size_per_image": rpn_batch_size_per_image, "box_batch_size_per_image": box_batch_size_per_image,
            "box_score_thresh": box_score_thresh, "box_nms_thresh": box_nms_thresh,
            "box_detections_per_img": box_detections_per_img, "num_keypoints": num_keypoints,
        }
        self.num_classes = num_classes
        backbone = EncoderFPN(build_encoder(encoder, in_channels=in_channels, weights=encoder_weights),
                              fpn_channels=fpn_channels)
        levels = [str(k) for k in range(len(backbone.strides) - 1)]  # RoI pooling skips the pool level
        anchors = AnchorGenerator(sizes=tuple((round(anchor_scale * s),) for s in backbone.strides),
                                  aspect_ratios=(tuple(float(a) for a in aspect_ratios),) * len(backbone.strides))
        box_pool = MultiScaleRoIAlign(featmap_names=levels, output_size=7, sampling_ratio=2)
        mask_pool = MultiScaleRoIAlign(featmap_names=levels, output_size=14, sampling_ratio=2)
        self.detector = TorchvisionMaskRCNN(
            backbone, num_classes=None, min_size=min_size, max_size=max_size,
            image_mean=image_mean, image_std=image_std, rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_train=rpn_post_nms_top_n_train, rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            rpn_batch_size_per_image=rpn_batch_size_per_image, box_roi_pool=box_pool,
            box_head=TwoMLPHead(fpn_channels * 7 * 7, representation_size),
            box_predictor=FastRCNNPredictor(representation_size, num_classes),
            box_batch_size_per_image=box_batch_size_per_image, box_score_thresh=box_score_thresh,
            box_nms_thresh=box_nms_thresh, box_detections_per_img=box_detections_per_img,
            mask_roi_pool=mask_pool, mask_head=MaskRCNNHeads(fpn_channels, [mask_channels] * mask_layers, 1),
            mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
        )
        # Padding to the deepest stride keeps every level's size an exact division of the input.
        self.detector.transform.size_divisible = max(32, backbone.strides[-2])
        if num_keypoints > 0:
            # The RoIHeads of torchvision run mask and keypoint branches side by side when both exist.
            heads = self.detector.roi_heads
            heads.keypoint_roi_pool = MultiScaleRoIAlign(featmap_names=levels, output_size=14, sampling_ratio=2)
            heads.keypoint_head = KeypointRCNNHeads(fpn_channels, [mask_channels] * 8)
            heads.keypoint_predictor = KeypointRCNNPredictor(mask_channels, num_keypoints)

    def forward(self, images: Tensor | list[Tensor], targets: list[dict] | None = None
                ) -> dict[str, Tensor] | list[Instances]:
        if isinstance(images, Tensor):
            if images.ndim != 4:
                raise ValueError(f"Mask R-CNN expects (N, C, H, W) or a list of (C, H, W) images, "
                                 f"got {tuple(images.shape)}")
            images = list(images.unbind(0))
        if self.training:
            if targets is None:
                raise ValueError("Mask R-CNN in training mode needs targets (boxes, labels, masks per image); "
                                 "call model.eval() for inference")
            points = self.config["num_keypoints"]
            if points > 0 and any("keypoints" not in t for t in targets):
                raise ValueError(f"this Mask R-CNN has a {points}-keypoint branch, so every training target needs "
                                 f"'keypoints' (K, {points}, 3) [x, y, visibility]; use a dataset with keypoints "
                                 f"(coco_keypoints, synthetic_instances with keypoints: true) or num_keypoints=0")
            return self.detector(images, [_model_target(t) for t in targets])
        return [Instances(boxes=d["boxes"], labels=d["labels"], scores=d["scores"], masks=d["masks"][:, 0],
                          keypoints=d.get("keypoints"), keypoint_scores=d.get("keypoints_scores"))
                for d in self.detector(images)]


def _model_target(target: dict) -> dict:
    """The tensors torchvision's heads read; masks as uint8 so their resize stays exact."""
    out = {"boxes": target["boxes"].float(), "labels": target["labels"].long(),
           "masks": target["masks"].to(torch.uint8)}
    if "keypoints" in target:
        out["keypoints"] = target["keypoints"].float()
    return out


@register(INSTANCE_MODELS, "maskrcnn")
def maskrcnn(**kwargs) -> MaskRCNN:
    """Mask R-CNN (He et al. 2017); keyword arguments as :class:`MaskRCNN`."""
    return MaskRCNN(**kwargs)


def create_instance_model(name: str, **kwargs) -> nn.Module:
    """Build an instance segmentation model by name (``maskrcnn``); kwargs go to its constructor.

    The result has a ``.config`` dict, so :func:`pixelwise.hub.save_model`
    saves it and :func:`pixelwise.tasks.instance.load_instance_model` rebuilds it.
    """
    try:
        builder = lookup(INSTANCE_MODELS, name, "instance model")
    except KeyError as err:
        raise ConfigError(err.args[0]) from None
    return builder(**kwargs)


def list_instance_models() -> list[str]:
    """Names of the instance segmentation models."""
    return sorted(INSTANCE_MODELS)
