"""The original's UNET, with configurable widths."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
    """(3x3 conv without bias -> BatchNorm -> ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """UNET: DoubleConv encoder over ``features``, a bottleneck of twice the last width,
    ConvTranspose 2x2 upsampling with skip concatenation, and a 1x1 head to ``out_channels``.
    Widths need not double from level to level (e.g. ``[16, 32, 64, 64, 64]``); when they do, the
    layers are the original's.

    Inputs of any size work: when pooling rounded a size down, the upsampled map is
    resized to its skip connection (as the original does).
    """

    def __init__(self, *, in_channels: int = 3, out_channels: int = 1,
                 features: tuple[int, ...] | list[int] = (64, 128, 256, 512)):
        super().__init__()
        self.in_channels = in_channels
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.pool = nn.MaxPool2d(2, 2)
        channels = in_channels
        for width in features:
            self.downs.append(DoubleConv(channels, width))
            channels = width
        self.bottleneck = DoubleConv(features[-1], features[-1] * 2)
        channels = features[-1] * 2
        for width in reversed(features):
            self.ups.append(nn.ConvTranspose2d(channels, width, kernel_size=2, stride=2))
            self.ups.append(DoubleConv(width * 2, width))
            channels = width
        self.final_conv = nn.Conv2d(features[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects a batch shaped (N, {self.in_channels}, H, W), got {tuple(x.shape)}; "
                             "add a batch dimension or convert the images to RGB")
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for i in range(0, len(self.ups), 2):
            x = self.ups[i](x)
            skip = skips[-1 - i // 2]
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.ups[i + 1](torch.cat((skip, x), dim=1))
        return self.final_conv(x)
