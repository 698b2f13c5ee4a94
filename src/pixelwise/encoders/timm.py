"""Any timm model as an encoder, through timm's ``features_only`` interface."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ..errors import ConfigError


def list_names() -> list[str]:
    """Every model name timm knows (all of them can be used with ``features_only``, most do)."""
    import timm

    return timm.list_models()


def _dilate(module: nn.Module, rate: int) -> None:
    """smp's ``replace_strides_with_dilation``: every Conv2d gets stride 1, dilation ``rate``, padding to match."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            conv.stride, conv.dilation = (1, 1), (rate, rate)
            conv.padding = ((conv.kernel_size[0] // 2) * rate, (conv.kernel_size[0] // 2) * rate)


class TimmEncoder(nn.Module):
    """Wraps ``timm.create_model(name, features_only=True)``.

    Args:
        name: any timm model name (``resnet34``, ``efficientnet_b0``, ``convnext_tiny``, ...).
        in_channels: input channels; timm adapts pretrained first-layer weights itself.
        weights: ``None``, ``"imagenet"`` (timm download; needs a network) or a local file
            in timm's format (loaded by timm, no network).
        output_stride: 32, 16 or 8; the last stages use dilation instead of stride.
        timm_kwargs: forwarded to ``timm.create_model`` (e.g. ``embed_dim``, ``depths`` for tiny test networks).
        dilation: ``"timm"`` (timm's output stride: the first block of a dilated stage keeps the
            previous dilation) or ``"smp"`` (smp's ``make_dilated``: every convolution of a stage
            past the output stride gets stride 1 and the full dilation; converted smp models).

    Swin models accept any input size (``strict_img_size=False``) and their channels-last
    outputs are returned as ``(N, C, h, w)``.

    ``forward``: ``(N, in_channels, H, W)`` -> list of features, reductions e.g. ``[2, 4, 8, 16, 32]``.
    """

    def __init__(self, name: str, *, in_channels: int = 3, weights: str | None = None,
                 output_stride: int = 32, timm_kwargs: dict | None = None, dilation: str = "timm") -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):
            close = timm.list_models(f"*{name}*")[:8]
            raise ConfigError(f"unknown encoder {name!r}; not a timm model name either "
                              f"(similar timm names: {close or 'none'}); see `pixelwise models`")
        if dilation not in ("timm", "smp"):
            raise ConfigError(f"dilation must be 'timm' or 'smp', got {dilation!r}")
        kwargs: dict = {"features_only": True, "in_chans": in_channels, **(timm_kwargs or {})}
        if output_stride != 32 and dilation == "timm":
            kwargs["output_stride"] = output_stride
        if weights is None:
            kwargs["pretrained"] = False
        elif weights == "imagenet":
            kwargs["pretrained"] = True
        else:
            if not Path(weights).is_file():
                raise ConfigError(f"encoder weight file {weights!r} does not exist; pass a local timm "
                                  f"checkpoint or 'imagenet' to download")
            kwargs["pretrained"] = True
            kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        family = timm.models.model_entrypoint(name.split(".")[0]).__module__  # a pretrained tag is not part of it
        if family.endswith(("swin_transformer", "swin_transformer_v2")):
            # Swin: any input size (timm pads to the window inside each block) instead of the trained size only.
            kwargs["strict_img_size"] = False
        self.model = timm.create_model(name, **kwargs)
        # Hierarchical transformers (Swin) return channels-last maps; decoders expect (N, C, H, W).
        self.nhwc = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")
        self.out_channels: list[int] = list(self.model.feature_info.channels())
        self.reductions: list[int] = list(self.model.feature_info.reduction())
        if output_stride != 32 and dilation == "smp":
            for name, reduction in zip(self.model.feature_info.module_name(), self.reductions):
                if reduction > output_stride:
                    stage = getattr(self.model, name.replace(".", "_"), None) or self.model.get_submodule(name)
                    _dilate(stage, reduction // output_stride)
        if output_stride != 32:
            self.reductions = [min(r, output_stride) for r in self.reductions]

    def forward(self, x: Tensor) -> list[Tensor]:
        features = list(self.model(x))
        return [f.permute(0, 3, 1, 2) for f in features] if self.nhwc else features
