"""One small instance of every architecture for the tests: tiny encoders and decoders, random init."""

from __future__ import annotations

from torch import nn

from segdist.models import build_model

NUM_CLASSES = 3
NARROW = [16] * 5  # U-Net-like decoders: one width per stage
# arch -> (encoder, (H, W) of a training-like input, smp architecture options). timm's test_* models
# have a few thousand parameters; mit_b0 is smp's smallest MiT (SegFormer's own encoder); PAN's
# feature pyramid needs 128 px.
TINY = {
    "unet": ("test_resnet", (64, 96), {"decoder_channels": NARROW}),
    "unetplusplus": ("test_efficientnet", (64, 96), {"decoder_channels": NARROW}),
    "manet": ("test_convnext", (64, 96), {"decoder_channels": NARROW, "decoder_pab_channels": 16}),
    "linknet": ("test_byobnet", (64, 96), {}),
    "fpn": ("test_convnext", (64, 96), {"decoder_pyramid_channels": 16, "decoder_segmentation_channels": 32}),
    "pspnet": ("test_resnet", (64, 96), {"psp_out_channels": 16}),
    "deeplabv3": ("test_resnet", (64, 96), {"decoder_channels": 16}),
    "deeplabv3plus": ("test_efficientnet", (64, 96), {"decoder_channels": 16}),
    "pan": ("test_resnet", (128, 160), {"decoder_channels": 16}),
    "upernet": ("test_convnext", (64, 96), {"decoder_channels": 16}),
    "segformer": ("mit_b0", (64, 96), {"decoder_segmentation_channels": 16}),
    "dpt": ("test_vit", (64, 96), {"decoder_intermediate_channels": [16] * 4, "decoder_fusion_channels": 16}),
    "resunet_attention": ("base8", (64, 96), {}),
}


def tiny_model(arch: str, **options) -> nn.Module:  # noqa: ANN003
    encoder, _, arch_kwargs = TINY[arch]
    return build_model(arch, encoder, NUM_CLASSES, arch_kwargs=arch_kwargs or None, **options)


def input_size(arch: str) -> tuple[int, int]:
    return TINY[arch][1]
