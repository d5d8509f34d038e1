"""segdist.pooling: exact adaptive average pooling, and pyramid pooling that exports right at every size."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from segdist.models.pooling import ExactAdaptiveAvgPool2d, make_pooling_exportable


@pytest.mark.parametrize("output_size", [1, 2, 3, 6, (2, 5)])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 5), (13, 40), (64, 33)])
def test_same_means_as_torchs_adaptive_pooling(output_size, size) -> None:  # noqa: ANN001
    x = torch.randn(2, 4, *size)
    torch.testing.assert_close(ExactAdaptiveAvgPool2d(output_size)(x), nn.AdaptiveAvgPool2d(output_size)(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_sums_in_float32(dtype: torch.dtype) -> None:
    x = torch.rand(1, 2, 200, 300) + 100  # long rows of large values: half-precision running sums lose digits
    expected = nn.AdaptiveAvgPool2d(6)(x.double())
    got = ExactAdaptiveAvgPool2d(6)(x.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, rtol=torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("arch", ["pspnet", "upernet"])
def test_pyramid_pooling_swap_keeps_weights_and_outputs(arch: str) -> None:
    torch.manual_seed(0)
    model = smp.create_model(arch, "tu-test_resnet", encoder_weights=None, classes=3).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = model(images)
    keys = list(model.state_dict())
    make_pooling_exportable(model)
    assert list(model.state_dict()) == keys
    grid_pools = [m for m in model.modules()
                  if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size not in (1, (1, 1))]
    assert not grid_pools and any(isinstance(m, ExactAdaptiveAvgPool2d) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected)
