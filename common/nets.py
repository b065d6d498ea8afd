"""The building blocks every script's networks are made of, one copy each: `mlp`, the
convolutional image encoder and decoder of World Models / PlaNet (the AIME authors' `cnn_ha`
encoder and decoder, used by V-MAIL and Dreamer as well), and `observation`, which picks the
setting's observation out of a batch. The world models, policies and discriminators built from
them are written out in each script."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


def mlp(
    inp: int, out: int, hidden: int, layers: int, act: type[nn.Module] = nn.ELU, norm: bool = False
) -> nn.Sequential:
    """`layers` hidden layers of `hidden` units (optionally LayerNorm), then a linear head."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(inp if i == 0 else hidden, hidden)]
        mods += [nn.LayerNorm(hidden)] if norm else []
        mods += [act()]
    mods.append(nn.Linear(hidden if layers else inp, out))
    return nn.Sequential(*mods)


class ConvEncoder(nn.Module):
    """World Models / PlaNet encoder: 4 convolutions, kernel 4, stride 2, depths 32-64-128-256."""

    def __init__(self, depth: int = 32) -> None:
        super().__init__()
        d = depth
        self.net = nn.Sequential(
            nn.Conv2d(3, d, 4, 2), nn.ReLU(inplace=True),
            nn.Conv2d(d, 2 * d, 4, 2), nn.ReLU(inplace=True),
            nn.Conv2d(2 * d, 4 * d, 4, 2), nn.ReLU(inplace=True),
            nn.Conv2d(4 * d, 8 * d, 4, 2), nn.Flatten(),
        )  # fmt: skip
        self.out_dim = 32 * d  # 256 channels x 2 x 2

    def forward(self, image: Tensor) -> Tensor:  # [..., 3, 64, 64] -> [..., 1024]
        return self.net(image.flatten(0, -4)).unflatten(0, image.shape[:-3])


class PointDeconv(nn.ConvTranspose2d):
    """A transposed convolution of a 1 x 1 input: the same parameters and the same function,
    computed as one matrix product, several times faster than the general transposed
    convolution on a CPU."""

    def forward(self, x: Tensor, output_size: Optional[list[int]] = None) -> Tensor:
        out = x.flatten(1) @ self.weight.flatten(1)  # [N, out * k * k]
        out = out.unflatten(1, self.weight.shape[1:]) + self.bias[:, None, None]  # type: ignore[index]
        return out.contiguous(memory_format=torch.channels_last)


class ConvDecoder(nn.Module):
    """The transposed decoder: a linear layer to 1024 x 1 x 1, then kernels 5-5-6-6, stride 2."""

    def __init__(self, feature_dim: int, depth: int = 32) -> None:
        super().__init__()
        d = depth
        self.net = nn.Sequential(
            nn.Linear(feature_dim, 32 * d), nn.Unflatten(-1, (32 * d, 1, 1)),
            PointDeconv(32 * d, 4 * d, 5, 2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(4 * d, 2 * d, 5, 2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * d, d, 6, 2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(d, 3, 6, 2), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, features: Tensor) -> Tensor:  # [..., feature] -> [..., 3, 64, 64]
        return self.net(features.flatten(0, -2)).unflatten(0, features.shape[:-1])


def observation(batch: dict[str, Tensor], keys: tuple[str, ...]) -> Tensor:
    """The setting's observation o_t: the image, or the low-dimensional keys concatenated."""
    return batch["image"] if keys == ("image",) else torch.cat([batch[k] for k in keys], -1)
