"""Drop-in constructors for segmentation_models.pytorch (smp) users.

``import pixelwise as smp`` keeps a script's model lines working::

    model = smp.Unet(encoder_name="resnet34", encoder_weights=None, in_channels=1, classes=3)
    loss = smp.losses.DiceLoss(smp.losses.MULTICLASS_MODE)

Each constructor is a thin alias over :func:`pixelwise.create_model` that maps smp's
keyword names (``encoder_name``, ``classes``, ``activation``, ...) onto pixelwise's and
returns an :class:`SmpStyleModel`: the pixelwise network plus smp's optional output
activation, ``predict()`` and attribute names (``encoder``, ``decoder``,
``segmentation_head``). It saves with :func:`pixelwise.save` like any pixelwise model.

Differences a user should know (also in docs/smp-migration.md):

- ``encoder_weights`` defaults to ``None``: pixelwise downloads nothing unless asked.
  ``"imagenet"`` asks timm/torchvision to download; a file path loads local weights.
- Encoder names are timm's (``resnet34``, ``efficientnet_b0``); smp's spellings
  ``efficientnet-b0``, ``timm-efficientnet-b0`` and ``tu-NAME`` are translated.
- ``PSPNet`` is the paper's (dilated encoder, output stride 8, bins 1/2/3/6), not smp's
  shallow variant; ``DeepLabV3``'s auxiliary head is off so the output is one tensor.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .models import create_model

__all__ = ["SmpStyleModel", "Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus",
           "Segformer", "UPerNet", "DPT", "smp_encoder_name"]

# smp's own encoder names -> the pixelwise/timm encoder holding the same network.
_SMP_ENCODERS = {
    "mobilenet_v2": "tv:mobilenet_v2", "xception": "legacy_xception", "inceptionv4": "inception_v4",
    "inceptionresnetv2": "inception_resnet_v2", "se_resnet50": "legacy_seresnet50",
    "se_resnet101": "legacy_seresnet101", "se_resnet152": "legacy_seresnet152",
    "se_resnext50_32x4d": "legacy_seresnext50_32x4d", "se_resnext101_32x4d": "legacy_seresnext101_32x4d",
    "senet154": "legacy_senet154",
}

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "identity": nn.Identity,
    "sigmoid": nn.Sigmoid,
    "softmax": lambda: nn.Softmax(dim=1),
    "softmax2d": lambda: nn.Softmax(dim=1),
    "logsoftmax": lambda: nn.LogSoftmax(dim=1),
    "tanh": nn.Tanh,
}


def smp_encoder_name(name: str) -> str:
    """Translate an smp encoder name to the name pixelwise/timm uses.

    ``tu-regnety_004`` -> ``regnety_004``; ``efficientnet-b3`` -> ``efficientnet_b3``;
    ``timm-efficientnet-b3`` -> ``tf_efficientnet_b3`` (smp's "timm-" EfficientNets are
    the TensorFlow-ported weights); ``timm-regnetx_002`` -> ``regnetx_002`` (smp's other
    "timm-" encoders are timm models); ``mobilenet_v2`` -> ``tv:mobilenet_v2`` and smp's
    Cadene-era names (``xception``, ``se_resnet50``, ...) -> timm's ``legacy_*``; anything else unchanged.
    """
    if name.startswith("tu-"):
        return name[3:]
    if name in _SMP_ENCODERS:
        return _SMP_ENCODERS[name]
    match = re.fullmatch(r"(timm-)?efficientnet-(b\d|l2)", name)
    if match:
        return ("tf_" if match.group(1) else "") + f"efficientnet_{match.group(2)}"
    if name.startswith("timm-"):
        return name[len("timm-"):]
    return name


def _activation(activation: str | Callable | None) -> nn.Module:
    if activation is None:
        return nn.Identity()
    if callable(activation):
        return activation()
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"activation {activation!r} is unknown; use None, a callable or one of "
                          f"{', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[activation]()


class ClassificationHead(nn.Sequential):
    """smp's ``aux_params`` head on the deepest encoder feature: global pooling, dropout, linear,
    optional activation: ``(N, C, h, w)`` -> ``(N, classes)``."""

    def __init__(self, in_channels: int, *, classes: int, pooling: str = "avg", dropout: float | None = 0.2,
                 activation: str | Callable | None = None) -> None:
        if pooling not in ("avg", "max"):
            raise ConfigError(f"aux_params pooling must be 'avg' or 'max', got {pooling!r}")
        pool = nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.AdaptiveMaxPool2d(1)
        super().__init__(pool, nn.Flatten(), nn.Dropout(dropout) if dropout else nn.Identity(),
                         nn.Linear(in_channels, classes), _activation(activation))


class SmpStyleModel(nn.Module):
    """A pixelwise network with smp's interface.

    ``forward(x)``: ``(N, C_in, H, W)`` -> ``activation(logits)`` ``(N, classes, H, W)``; with
    ``aux_params`` (smp's classification head) a tuple ``(masks, labels (N, aux classes))``.
    The classification head is not part of the saved pixelwise folder (``pixelwise.save``
    writes the segmentation network); save ``model.classification_head.state_dict()`` yourself.
    The state dict and ``config`` are the inner network's, so ``pixelwise.save`` writes a
    normal pixelwise model folder; the activation's name goes into its card, and
    ``pixelwise.load`` returns an smp-style model with that activation again.
    """

    def __init__(self, net: nn.Module, activation: str | Callable | None = None,
                 aux_params: dict | None = None) -> None:
        super().__init__()
        self.net = net
        self.activation = _activation(activation)
        self.config = net.config
        # Saved in the folder's card so pixelwise.load gives back the same interface; a callable
        # activation cannot be written down, so it is not restored (said so in the card).
        self.interface = {"kind": "smp", "activation": activation if isinstance(activation, str) or activation is None
                          else f"unsaved callable {getattr(activation, '__name__', type(activation).__name__)}"}
        self.classification_head = ClassificationHead(net.encoder.out_channels[-1], **aux_params) if aux_params else None
        self._deepest: Tensor | None = None
        if self.classification_head is not None:
            net.encoder.register_forward_hook(self._keep_deepest)

    def _keep_deepest(self, module: nn.Module, args: Any, output: Any) -> None:
        self._deepest = output[-1]

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    @property
    def decoder(self) -> nn.Module:
        return self.net.decoder

    @property
    def segmentation_head(self) -> nn.Module:
        return self.net.head

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        masks = self.activation(self.net(x))
        if self.classification_head is None:
            return masks
        return masks, self.classification_head(self._deepest)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Eval mode + no grad + forward, as smp's ``predict``."""
        if self.training:
            self.eval()
        return self(x)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)


def _build(name: str, encoder_name: str, encoder_weights: str | None, in_channels: int, classes: int,
           activation: str | Callable | None, aux_params: dict | None = None, **extra: Any) -> SmpStyleModel:
    net = create_model(name, encoder=smp_encoder_name(encoder_name), encoder_weights=encoder_weights,
                       in_channels=in_channels, num_classes=classes, **extra)
    return SmpStyleModel(net, activation, aux_params)


def _depth5(model: str, encoder_depth: int) -> None:
    if encoder_depth != 5:
        raise ConfigError(f"{model}(encoder_depth={encoder_depth}) is not supported: pixelwise's {model} uses all "
                          f"five encoder stages; encoder_depth < 5 is available for Unet")


def Unet(encoder_name: str = "resnet34", encoder_depth: int = 5, encoder_weights: str | None = None,
         decoder_channels: list[int] | tuple[int, ...] | None = None, decoder_attention_type: str | None = None,
         decoder_interpolation: str = "bilinear", in_channels: int = 3, classes: int = 1,
         activation: str | Callable | None = None, aux_params: dict | None = None) -> SmpStyleModel:
    """U-Net with an encoder (smp ``Unet``); pixelwise ``unet``.

    ``decoder_channels`` defaults to (256, 128, 64, 32, 16)[:encoder_depth], as smp's.
    ``decoder_attention_type="scse"`` adds scSE blocks. pixelwise keeps its bilinear decoder and
    1×1 head by default; ``decoder_interpolation="nearest"`` gives smp's nearest upsampling (smp's
    3×3 head: ``create_model("unet", head_kernel=3)``, what ``convert --from smp`` builds).
    """
    extra: dict = {"upsampling": decoder_interpolation}
    if decoder_channels is not None:
        extra["decoder_channels"] = list(decoder_channels)
    elif encoder_depth != 5:
        extra["decoder_channels"] = [256, 128, 64, 32, 16][:encoder_depth]
    if encoder_depth != 5:
        extra["encoder_depth"] = encoder_depth
    if decoder_attention_type is not None:
        extra["decoder_attention"] = decoder_attention_type
    return _build("unet", encoder_name, encoder_weights, in_channels, classes, activation, aux_params, **extra)


def UnetPlusPlus(encoder_name: str = "resnet34", encoder_weights: str | None = None, in_channels: int = 3,
                 classes: int = 1, activation: str | Callable | None = None, encoder_depth: int = 5,
                 aux_params: dict | None = None) -> SmpStyleModel:
    """U-Net++ with an encoder (smp ``UnetPlusPlus``); pixelwise ``unetplusplus``."""
    _depth5("UnetPlusPlus", encoder_depth)
    return _build("unetplusplus", encoder_name, encoder_weights, in_channels, classes, activation, aux_params)


def FPN(encoder_name: str = "resnet34", encoder_weights: str | None = None, in_channels: int = 3,
        classes: int = 1, activation: str | Callable | None = None, decoder_pyramid_channels: int = 256,
        decoder_segmentation_channels: int = 128, encoder_depth: int = 5,
        aux_params: dict | None = None) -> SmpStyleModel:
    """Panoptic-FPN semantic head (smp ``FPN``); pixelwise ``fpn``."""
    _depth5("FPN", encoder_depth)
    return _build("fpn", encoder_name, encoder_weights, in_channels, classes, activation, aux_params,
                  fpn_channels=decoder_pyramid_channels, head_channels=decoder_segmentation_channels)


def PSPNet(encoder_name: str = "resnet34", encoder_weights: str | None = None, in_channels: int = 3,
           classes: int = 1, activation: str | Callable | None = None, encoder_depth: int = 5,
           aux_params: dict | None = None) -> SmpStyleModel:
    """PSPNet as in the paper (smp ``PSPNet`` name); pixelwise ``pspnet`` without the aux head.

    smp's default ``encoder_depth=3`` (a shallow PSPNet on the stride-8 feature) is not reproduced:
    pixelwise's is the paper's dilated network, so ``encoder_depth`` must be 5 (its default here).
    """
    _depth5("PSPNet", encoder_depth)
    return _build("pspnet", encoder_name, encoder_weights, in_channels, classes, activation, aux_params, aux=False)


def DeepLabV3(encoder_name: str = "resnet34", encoder_weights: str | None = None, in_channels: int = 3,
              classes: int = 1, activation: str | Callable | None = None,
              encoder_output_stride: int = 8, encoder_depth: int = 5, aux_params: dict | None = None) -> SmpStyleModel:
    """DeepLab v3 (smp ``DeepLabV3``); pixelwise ``deeplabv3`` without the aux head."""
    _depth5("DeepLabV3", encoder_depth)
    return _build("deeplabv3", encoder_name, encoder_weights, in_channels, classes, activation, aux_params,
                  output_stride=encoder_output_stride, aux=False)


def DeepLabV3Plus(encoder_name: str = "resnet34", encoder_weights: str | None = None, in_channels: int = 3,
                  classes: int = 1, activation: str | Callable | None = None,
                  encoder_output_stride: int = 16, encoder_depth: int = 5,
                  aux_params: dict | None = None) -> SmpStyleModel:
    """DeepLab v3+ (smp ``DeepLabV3Plus``); pixelwise ``deeplabv3plus``."""
    _depth5("DeepLabV3Plus", encoder_depth)
    return _build("deeplabv3plus", encoder_name, encoder_weights, in_channels, classes, activation, aux_params,
                  output_stride=encoder_output_stride)


def Segformer(encoder_name: str = "mit_b0", encoder_depth: int = 5, encoder_weights: str | None = None,
              decoder_segmentation_channels: int = 256, in_channels: int = 3, classes: int = 1,
              activation: str | Callable | None = None, upsampling: int = 4,
              aux_params: dict | None = None) -> SmpStyleModel:
    """SegFormer (smp ``Segformer``); pixelwise ``segformer``. The final 4× upsampling is bilinear
    with ``align_corners=False`` (smp: ``True``; ``convert --from smp`` reproduces smp's)."""
    _depth5("Segformer", encoder_depth)
    if upsampling != 4:
        raise ConfigError(f"Segformer(upsampling={upsampling}): pixelwise's head runs at 1/4 and always returns "
                          f"logits at the input size; leave upsampling at 4")
    return _build("segformer", encoder_name, encoder_weights, in_channels, classes, activation, aux_params,
                  decoder_channels=decoder_segmentation_channels)


def UPerNet(encoder_name: str = "resnet34", encoder_depth: int = 5, encoder_weights: str | None = None,
            decoder_channels: int = 256, in_channels: int = 3, classes: int = 1,
            activation: str | Callable | None = None, upsampling: int = 4,
            aux_params: dict | None = None) -> SmpStyleModel:
    """UPerNet (smp ``UPerNet``); pixelwise ``upernet`` (no auxiliary FCN head, smp's width 256)."""
    _depth5("UPerNet", encoder_depth)
    if upsampling != 4:
        raise ConfigError(f"UPerNet(upsampling={upsampling}): leave it at 4; logits always come at the input size")
    return _build("upernet", encoder_name, encoder_weights, in_channels, classes, activation, aux_params,
                  channels=decoder_channels, aux=False)


_READOUTS = {"cat": "project", "add": "add", "ignore": "ignore"}


def DPT(encoder_name: str = "tu-vit_base_patch16_224", encoder_depth: int = 4, encoder_weights: str | None = None,
        encoder_output_indices: list[int] | None = None, decoder_readout: str = "cat",
        decoder_intermediate_channels: list[int] | tuple[int, ...] = (256, 512, 1024, 1024),
        decoder_fusion_channels: int = 256, in_channels: int = 3, classes: int = 1,
        activation: str | Callable | None = None, aux_params: dict | None = None) -> SmpStyleModel:
    """DPT (smp ``DPT``); pixelwise ``dpt``. ``decoder_readout`` "cat" is the paper's "project"."""
    if encoder_depth != 4:
        raise ConfigError(f"DPT(encoder_depth={encoder_depth}): DPT taps four blocks; leave encoder_depth at 4")
    if decoder_readout not in _READOUTS:
        raise ConfigError(f"decoder_readout must be one of {sorted(_READOUTS)}, got {decoder_readout!r}")
    name = smp_encoder_name(encoder_name).split(".")[0]  # timm pretrained tags (".augreg_in21k") do not apply
    net = create_model("dpt", encoder=name, encoder_weights=encoder_weights, in_channels=in_channels,
                       num_classes=classes, indices=encoder_output_indices, readout=_READOUTS[decoder_readout],
                       neck_channels=list(decoder_intermediate_channels), fusion_channels=decoder_fusion_channels,
                       aux=False)
    return SmpStyleModel(net, activation, aux_params)
