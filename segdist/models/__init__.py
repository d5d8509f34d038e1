"""Segmentation models: one factory over segmentation-models-pytorch and timm, losses, inference.

    factory.py     build_model / build_from_config (smp's registry + resunet_attention), check_model,
                   use_channels_last
    options.py     the rules a model's options follow (architectures, encoder kinds, reserved kwargs)
    encoders.py    timm / MiT encoder names, feature strides, local pretrained checkpoints
    resunet.py     segdist's residual attention U-Net
    pooling.py     exact, exportable pyramid pooling for PSPNet and UPerNet
    aux_head.py    the auxiliary FCN head of training (model.aux_head), and its removal for inference
    losses.py      CE, weighted CE, focal, Dice, Dice+CE, Lovasz with one ignore index
    inference.py   whole-image and sliding-window inference, TTA, autocast
    preflight.py   the config checks that need the model stack (train, bench-data)
"""

from segdist.models.factory import (
                                    ARCHS,
                                    MIT_ENCODERS,
                                    SMP_ARCHS,
                                    ModelOptionError,
                                    ResUNetAttention,
                                    build_from_config,
                                    build_model,
                                    check_model,
                                    output_stride_choices,
                                    use_channels_last,
)

__all__ = ["ARCHS", "MIT_ENCODERS", "SMP_ARCHS", "ModelOptionError", "ResUNetAttention", "build_from_config",
           "build_model", "check_model", "output_stride_choices", "use_channels_last"]
