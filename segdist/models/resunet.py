"""segdist's own residual U-Net with a self-attention bottleneck, in plain PyTorch.

``encoder`` for this architecture is ``"base<width>"`` (e.g. ``"base32"``): the channel width
of the first stage; widths double at each of the 4 downsampling stages. It has no pretrained
encoder; its decoder dropout sits on the input of the final 1x1 classifier conv, as in the smp models.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResUNetAttention", "parse_base_width"]


def parse_base_width(encoder: str) -> int:
    """Parse ``"base<width>"`` (e.g. ``"base32"``) into the first-stage width."""
    match = re.fullmatch(r"base(\d+)", encoder)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"resunet_attention expects encoder='base<width>' such as 'base32', got {encoder!r}."
        )
    return int(match.group(1))


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BatchNorm + SiLU layers with a (1x1-projected when needed) shortcut."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        if in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.activation = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


class SelfAttention2d(nn.Module):
    """Pre-norm multi-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        qkv = self.qkv(self.norm(tokens)).reshape(n, h * w, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, heads, HW, C/heads]
        attended = F.scaled_dot_product_attention(q, k, v)
        tokens = tokens + self.proj(attended.transpose(1, 2).reshape(n, h * w, c))
        return tokens.transpose(1, 2).reshape(n, c, h, w)


class UpBlock(nn.Module):
    """Bilinear upsampling to the skip's size, concatenation, residual block."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = ResidualBlock(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([x, skip], dim=1))


class ResUNetAttention(nn.Module):
    """Residual U-Net: 4 downsampling stages, attention bottleneck at 1/16, 4 up stages.

    Stage widths are ``base_width * (1, 2, 4, 8, 16)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_width: int = 32,
        num_heads: int = 8,
        decoder_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [base_width * 2**i for i in range(5)]
        self.stem = ResidualBlock(in_channels, widths[0])
        self.down_stages = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), ResidualBlock(widths[i], widths[i + 1]))
            for i in range(4)
        )
        self.bottleneck = nn.Sequential(
            ResidualBlock(widths[4], widths[4]),
            SelfAttention2d(widths[4], num_heads),
        )
        self.up_stages = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], widths[i]) for i in reversed(range(4))
        )
        self.dropout = nn.Dropout2d(decoder_dropout)
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down in self.down_stages:
            skips.append(down(skips[-1]))
        x = self.bottleneck(skips.pop())
        for up, skip in zip(self.up_stages, reversed(skips)):
            x = up(x, skip)
        return self.head(self.dropout(x))
