"""Metadata about the architectures, kept out of the model files: the paper each follows
and the canonical configuration whose parameter count the README and `pixelwise models` quote."""

from __future__ import annotations

CATALOG: dict[str, dict] = {
    "unet": {"paper": "Ronneberger et al., MICCAI 2015 (arXiv:1505.04597)",
             "canonical": {"in_channels": 1, "num_classes": 2},
             "encoders": "paper encoder (encoder=None), any timm / tv: / vgg16 encoder"},
    "fcn32s": {"paper": "Long et al., CVPR 2015 (arXiv:1411.4038)",
               "canonical": {"num_classes": 21}, "encoders": "vgg16 (default), encoders with strides 8/16/32"},
    "fcn16s": {"paper": "Long et al., CVPR 2015 (arXiv:1411.4038)",
               "canonical": {"num_classes": 21}, "encoders": "vgg16 (default), encoders with strides 8/16/32"},
    "fcn8s": {"paper": "Long et al., CVPR 2015 (arXiv:1411.4038)",
              "canonical": {"num_classes": 21}, "encoders": "vgg16 (default), encoders with strides 8/16/32"},
    "segnet": {"paper": "Badrinarayanan et al., TPAMI 2017 (arXiv:1511.00561)",
               "canonical": {"num_classes": 12}, "encoders": "VGG16-BN only (the decoder needs its pooling indices)"},
    "deeplabv3": {"paper": "Chen et al. 2017 (arXiv:1706.05587)",
                  "canonical": {"num_classes": 21},
                  "encoders": "any timm (dilated to output stride 8/16), tv: Bottleneck ResNets"},
    "deeplabv3plus": {"paper": "Chen et al., ECCV 2018 (arXiv:1802.02611)",
                      "canonical": {"num_classes": 21},
                      "encoders": "any timm with a stride-4 feature (Xception: xception65), tv: Bottleneck ResNets"},
    "deeplabv1": {"paper": "Chen et al., ICLR 2015 (arXiv:1412.7062)", "canonical": {"num_classes": 21},
                  "encoders": "VGG16 (dilated, output stride 8) only, as in the paper"},
    "deeplabv2": {"paper": "Chen et al., TPAMI 2017 (arXiv:1606.00915)", "canonical": {"num_classes": 21},
                  "encoders": "any timm (dilated), tv: Bottleneck ResNets; default resnet101"},
    "pspnet": {"paper": "Zhao et al., CVPR 2017 (arXiv:1612.01105)", "canonical": {"num_classes": 21},
               "encoders": "any timm (dilated to output stride 8), tv: Bottleneck ResNets"},
    "resunet": {"paper": "Zhang et al., IEEE GRSL 2018 (arXiv:1711.10684)", "canonical": {"in_channels": 1, "num_classes": 2},
                "encoders": "its own residual encoder (encoder=None), or any encoder with residual decoder blocks"},
    "r2unet": {"paper": "Alom et al. 2018 (arXiv:1802.06955)", "canonical": {"in_channels": 1, "num_classes": 2},
               "encoders": "its own RRCNN encoder (encoder=None), or any encoder with RRCNN decoder blocks"},
    "attention_unet": {"paper": "Oktay et al., MIDL 2018 (arXiv:1804.03999)",
                       "canonical": {"in_channels": 1, "num_classes": 2},
                       "encoders": "paper encoder (encoder=None), any timm / tv: / vgg16 encoder"},
    "attention_r2unet": {"paper": "Alom et al. 2018 + Oktay et al. 2018", "canonical": {"in_channels": 1, "num_classes": 2},
                         "encoders": "its own RRCNN encoder (encoder=None), or any encoder"},
}
