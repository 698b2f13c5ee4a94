"""Tiny configurations of every registered model, shared by the registry-loop tests
(test_models, test_onnx_export, test_bf16_models): a new architecture adds one line here and
is then tested for shapes, backward, export and bf16 training for free."""

# Small configurations of every registered architecture (the registry loop of DESIGN.md).
TINY = {
    "unet": {"base_channels": 4, "depth": 3},
    "fcn8s": {"encoder": "vgg16", "fc_channels": 16},
    "fcn16s": {"encoder": "vgg16", "fc_channels": 16},
    "fcn32s": {"encoder": "vgg16", "fc_channels": 16},
    "segnet": {},
    "deeplabv3": {"encoder": "resnet18"},
    "deeplabv3plus": {"encoder": "resnet18"},
    "deeplabv1": {},
    "deeplabv2": {"encoder": "resnet18"},
    "pspnet": {"encoder": "resnet18"},
    "resunet": {"base_channels": 4, "depth": 3},
    "r2unet": {"base_channels": 4, "depth": 3},
    "attention_unet": {"base_channels": 4, "depth": 3},
    "attention_r2unet": {"base_channels": 4, "depth": 3},
    "unetplusplus": {"base_channels": 4, "depth": 3, "deep_supervision": True},
    "dense_unet": {"base_channels": 4, "depth": 3, "growth_rate": 4, "num_layers": 2},
    "multiresunet": {"base_channels": 6, "depth": 3},
    "enet": {"initial_channels": 8, "stage_channels": [16, 32]},
    "dilatednet": {"fc_channels": 16},
    "hourglass": {"channels": 16, "num_stacks": 2, "depth": 2},
    "fpn": {"encoder": "resnet18", "fpn_channels": 16, "head_channels": 16},
    "lraspp": {"width_mult": 0.25, "inter_channels": 16},
    "refinenet": {"encoder": "resnet18", "channels": 16, "coarse_channels": 32, "crp_stages": 2},
    "fastfcn": {"encoder": "resnet18", "jpu_channels": 16, "head_channels": 32},
    "gscnn": {"encoder": "resnet18", "channels": 32},
    "fcn_dilated": {"encoder": "resnet18"},
    "segformer": {"encoder_config": {"dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "heads": [1, 1, 1, 2]},
                  "decoder_channels": 16},
    "upernet": {"encoder": "swin_tiny_patch4_window7_224", "out_norm": True, "channels": 16, "aux_channels": 8,
                "encoder_kwargs": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}},
    "dpt": {"encoder": "vit_small_patch16_224", "encoder_kwargs": {"embed_dim": 32, "depth": 4, "num_heads": 2},
            "neck_channels": [8, 16, 32, 32], "fusion_channels": 16},
}

# Registered models whose CPU bf16 training step is known to differ from fp32 beyond the test's bound, with why.
BF16_KNOWN_FAILURES = {
    "segformer": "oneDNN bf16 gradients ~10x the ATen bf16 error at 67x93 (fine at 32x96 and with ratios 1); "
                 "not yet narrowed to one kernel (contiguous feature maps did not help); train SegFormer in fp32 "
                 "or CUDA bf16 until then",
}

TINY_VOLUMETRIC = {"unet3d": {"in_channels": 1, "base_channels": 4, "depth": 2}}

TINY_INSTANCE = {"maskrcnn": {"encoder": "test_resnet", "num_classes": 5, "min_size": 64, "max_size": 64,
                              "fpn_channels": 16, "anchor_scale": 4.0, "representation_size": 32, "mask_channels": 16,
                              "mask_layers": 2, "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
                              "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
                              "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 32}}
