"""Adaptive average pooling that stays exact in exported graphs at every input size.

PSPNet's and UPerNet's pyramid pooling average a feature map into fixed 2x2, 3x3 and 6x6 grids
(``nn.AdaptiveAvgPool2d``). ONNX has no adaptive pooling operator: torch's exporter, with a dynamic
height and width, writes the bin boundaries of the example input into the graph as constants, so the
file runs at other sizes and returns wrong numbers (seen with torch 2.14: logits off by 0.08-0.3), or
indexes out of range. Here the bins are computed from the input's size inside the graph, and each
bin's mean comes from a cumulative sum (an integral image): the same numbers as PyTorch's pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

__all__ = ["ExactAdaptiveAvgPool2d", "make_pooling_exportable"]


class ExactAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` (same bins, same means) built from ops that export with dynamic sizes."""

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.output_size = _pair(output_size)

    def forward(self, x: Tensor) -> Tensor:
        # Averaging over a grid of bins is separable: rows first, then columns.
        return _adaptive_mean(_adaptive_mean(x, self.output_size[0], dim=2), self.output_size[1], dim=3)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def _adaptive_mean(x: Tensor, bins: int, dim: int) -> Tensor:
    """Means over PyTorch's adaptive bins along `dim`: bin i covers [floor(i*L/bins), ceil((i+1)*L/bins))."""
    length = x.shape[dim]
    index = torch.arange(bins, device=x.device)
    start = index * length // bins
    end = ((index + 1) * length + bins - 1) // bins
    # Accumulate in float32 whatever the autocast dtype: differences of long half-precision sums lose digits.
    cumulative = x.float().cumsum(dim)
    pad = [0, 0] * (x.dim() - 1 - dim) + [1, 0]  # one zero before the first element along `dim`
    cumulative = F.pad(cumulative, pad)
    sums = cumulative.index_select(dim, end) - cumulative.index_select(dim, start)
    shape = [1] * x.dim()
    shape[dim] = bins
    return (sums / (end - start).to(sums.dtype).view(shape)).to(x.dtype)


def make_pooling_exportable(model: nn.Module) -> nn.Module:
    """Swap every adaptive average pooling to a grid larger than 1x1 for ``ExactAdaptiveAvgPool2d``, in place.

    Pooling has no weights, so state-dict keys and values are unchanged. smp's ``PSPBlock`` also has
    an ONNX-only branch (``F.interpolate(mode="area")``, the same export problem): it is replaced by a
    block that always runs its own pooling.
    """
    from segmentation_models_pytorch.decoders.pspnet.decoder import PSPBlock

    _replace_children(model, lambda m: isinstance(m, PSPBlock), lambda m: _PyramidBin(m.pool))
    _replace_children(model, _is_grid_pooling, lambda m: ExactAdaptiveAvgPool2d(m.output_size))
    return model


def _is_grid_pooling(module: nn.Module) -> bool:
    # Pooling to 1x1 exports exactly (a global mean); only larger grids need the exact version.
    return isinstance(module, nn.AdaptiveAvgPool2d) and _pair(module.output_size) != (1, 1)


def _replace_children(model: nn.Module, matches, make) -> None:  # noqa: ANN001
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if matches(child):
                setattr(parent, name, make(child))


class _PyramidBin(nn.Module):
    """smp's ``PSPBlock`` (pool to a grid, 1x1 conv, upsample back) without its ONNX-only branch; same keys."""

    def __init__(self, pool: nn.Sequential) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[2:]
        return F.interpolate(self.pool(x), size=(height, width), mode="bilinear", align_corners=True)
