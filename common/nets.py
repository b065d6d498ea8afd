"""The building blocks every script's networks are made of, one copy each: `mlp`, the
convolutional image encoder and decoder of World Models / PlaNet (the AIME authors' `cnn_ha`
encoder and decoder, used by V-MAIL and Dreamer as well), `observation`, which picks the
setting's observation out of a batch, and the distributions the losses are written with: the
Gaussian KL (`kl_normal`, `kl_loss` with free nats and balancing) and the policies' tanh-Gaussian
`TanhNormal`. The world models, policies and discriminators built from them are written out in
each script."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
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


# The width of AIME's tabular encoder and decoders in each layout (the authors' rssm.yaml and
# rssmo.yaml), where a world model records none.
LAYOUT_WIDTH = {"aime": 128, "dreamer": 512}


def aime_encoder(
    dims: dict[str, int], layout: str, width: int, depth: int = 32
) -> tuple[nn.Module, int]:
    """AIME's encoder f(o_t) and its output size, in the layout of the authors' configs: the conv
    encoder for images (channels-last), else the identity (`aime`, Appendix B) or the original
    Dreamer's two Linear-LayerNorm-SiLU blocks of `width` without head (`dreamer`). `dims` holds
    the observation's keys and sizes (aime.py's world model; vmail_obs.py reads it from a file)."""
    if "image" in dims:
        cl = {"memory_format": torch.channels_last}  # the fast layout for convolutions
        encoder = ConvEncoder(depth).to(**cl)  # type: ignore[call-overload]
        return encoder, encoder.out_dim
    obs_dim = sum(dims.values())
    if layout == "aime":
        return nn.Identity(), obs_dim
    block = [nn.LayerNorm(width), nn.SiLU()]
    return nn.Sequential(*mlp(obs_dim, width, width, 1, nn.SiLU, norm=True), *block), width


class ConvEncoder(nn.Module):
    """World Models / PlaNet encoder: 4 convolutions, kernel 4, stride 2, depths 32-64-128-256.

    It takes images in [0, 1] and subtracts `centre` first; `last_relu` puts a ReLU after the
    last convolution too (the V-MAIL authors' encoder: images - 0.5, ReLU after each layer)."""

    def __init__(self, depth: int = 32, centre: float = 0.0, last_relu: bool = False) -> None:
        super().__init__()
        d = depth
        self.centre = centre
        self.net = nn.Sequential(
            nn.Conv2d(3, d, 4, 2), nn.ReLU(inplace=True),
            nn.Conv2d(d, 2 * d, 4, 2), nn.ReLU(inplace=True),
            nn.Conv2d(2 * d, 4 * d, 4, 2), nn.ReLU(inplace=True),
            nn.Conv2d(4 * d, 8 * d, 4, 2), *([nn.ReLU(inplace=True)] if last_relu else []),
            nn.Flatten(),
        )  # fmt: skip
        self.out_dim = 32 * d  # 256 channels x 2 x 2

    def forward(self, image: Tensor) -> Tensor:  # [..., 3, 64, 64] -> [..., 1024]
        x = image.flatten(0, -4)
        return self.net(x - self.centre if self.centre else x).unflatten(0, image.shape[:-3])


class PointDeconv(nn.ConvTranspose2d):
    """A transposed convolution of a 1 x 1 input: the same parameters and the same function,
    computed as one matrix product, several times faster than the general transposed
    convolution on a CPU."""

    def forward(self, x: Tensor, output_size: Optional[list[int]] = None) -> Tensor:
        out = x.flatten(1) @ self.weight.flatten(1)  # [N, out * k * k]
        out = out.unflatten(1, self.weight.shape[1:]) + self.bias[:, None, None]  # type: ignore[index]
        return out.contiguous(memory_format=torch.channels_last)


class ConvDecoder(nn.Module):
    """The transposed decoder: a linear layer to 1024 x 1 x 1, then kernels 5-5-6-6, stride 2,
    and a sigmoid (images in [0, 1]; `sigmoid=False`: linear, the V-MAIL authors' Normal mean)."""

    def __init__(self, feature_dim: int, depth: int = 32, sigmoid: bool = True) -> None:
        super().__init__()
        d = depth
        self.net = nn.Sequential(
            nn.Linear(feature_dim, 32 * d), nn.Unflatten(-1, (32 * d, 1, 1)),
            PointDeconv(32 * d, 4 * d, 5, 2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(4 * d, 2 * d, 5, 2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * d, d, 6, 2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(d, 3, 6, 2), *([nn.Sigmoid()] if sigmoid else []),
        )  # fmt: skip

    def forward(self, features: Tensor) -> Tensor:  # [..., feature] -> [..., 3, 64, 64]
        return self.net(features.flatten(0, -2)).unflatten(0, features.shape[:-1])


def observation(batch: dict[str, Tensor], keys: tuple[str, ...]) -> Tensor:
    """The setting's observation o_t: the image, or the low-dimensional keys concatenated."""
    return batch["image"] if keys == ("image",) else torch.cat([batch[k] for k in keys], -1)


# --------------------------------------------------------------------------------------------
# KL divergence
# --------------------------------------------------------------------------------------------
def kl_normal(q_mean: Tensor, q_std: Tensor, p_mean: Tensor, p_std: Tensor) -> Tensor:
    """KL[N(q_mean, q_std) || N(p_mean, p_std)] per dimension, in closed form."""
    var_ratio = (q_std / p_std) ** 2
    return 0.5 * (var_ratio + ((q_mean - p_mean) / p_std) ** 2 - 1) - torch.log(q_std / p_std)


def kl_loss(
    q_mean: Tensor,
    q_std: Tensor,
    p_mean: Tensor,
    p_std: Tensor,
    free_nats: float = 0.0,
    balance: Optional[float] = None,
) -> Tensor:
    """The KL term of the ELBO for the loss, summed over the state dims: [...].

    balance=α (KL balancing, DreamerV2): α KL[sg(q) || p] + (1 - α) KL[q || sg(p)], which has the
    same value as the KL but moves the prior α and the posterior 1 - α of the way.
    free_nats: the gradient of max(KL, free_nats) per step and sequence (none below `free_nats`)
    with the value of the KL, as the authors' code reports it (`aime/models/ssm.py`, forward).
    With the defaults (0, None) this is the true KL of the ELBO.
    """
    if balance is None:
        kl = kl_normal(q_mean, q_std, p_mean, p_std).sum(-1)
    else:
        to_prior = kl_normal(q_mean.detach(), q_std.detach(), p_mean, p_std).sum(-1)
        to_post = kl_normal(q_mean, q_std, p_mean.detach(), p_std.detach()).sum(-1)
        kl = balance * to_prior + (1 - balance) * to_post
    if free_nats <= 0:
        return kl
    clamped = kl.clamp(min=free_nats)
    return clamped + (kl - clamped).detach()  # the KL's value, the clamped KL's gradient


# --------------------------------------------------------------------------------------------
# Tanh-Gaussian distribution of the policies
# --------------------------------------------------------------------------------------------
class TanhNormal:
    """a = tanh(u), u ~ N(mean, std) per dimension: actions in (-1, 1).

    log p(a) = sum_i [log N(u_i; mean_i, std_i) - log(1 - tanh(u_i)^2)], u = atanh(a); the log
    Jacobian is computed as 2 (log 2 - u - softplus(-2u)), which is exact and stable for large |u|.
    """

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        self.mean, self.std = mean, std

    def _log_normal(self, u: Tensor) -> Tensor:
        """log N(u; mean, std) per dimension, u the value before the tanh."""
        return (
            -0.5 * ((u - self.mean) / self.std) ** 2
            - torch.log(self.std)
            - 0.5 * math.log(2 * math.pi)
        )

    def rsample(self, noise: Optional[Tensor] = None) -> Tensor:
        """A reparameterised sample a = tanh(mean + std * noise) [..., A]; `noise` standard normal,
        drawn where None (zeros give the mode)."""
        noise = torch.randn_like(self.mean) if noise is None else noise
        return torch.tanh(self.mean + self.std * noise)

    def rsample_with_log_prob(self) -> tuple[Tensor, Tensor]:
        """A reparameterised sample and its log-probability ([..., A], [...]), without atanh."""
        u = self.mean + self.std * torch.randn_like(self.mean)
        # in this order (tanh, log N, log det): autograd sums u's gradients in the reverse order
        action, log_normal = torch.tanh(u), self._log_normal(u)
        log_det = 2 * (math.log(2) - u - F.softplus(-2 * u))  # log(1 - tanh(u)^2)
        return action, (log_normal - log_det).sum(-1)

    def log_prob(self, action: Tensor, clip: float = 0.999) -> Tensor:
        """log p(a) summed over action dims: [...]. As the authors' `TanhNormal` (`aime/dist.py`,
        TANH_CLIP = 0.999): a is clipped to +-clip first, then log N(atanh(a)) - log(1 - a^2), so
        a saturated dimension (a = +-1, common in expert data) adds -log(1 - 0.999^2) = 6.2."""
        a = action.clamp(-clip, clip)
        return (self._log_normal(torch.atanh(a)) - torch.log(1 - a**2)).sum(-1)

    @property
    def mode(self) -> Tensor:
        """tanh(mean), the deterministic action used for evaluation."""
        return torch.tanh(self.mean)

    def sampled_mode(self, samples: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """The most likely of `samples` draws [..., A], per batch element: Dreamer-v1's
        `SampleDist.mode`, the V-MAIL authors' evaluation action. Each draw's log-probability is
        computed as Dreamer-v1's tanh bijector does, from atanh of the action clipped to
        +-0.99999997, so a saturated draw (|u| > 8.7) counts as u = +-8.7."""
        noise = torch.randn(
            (samples, *self.mean.shape), generator=generator, device=self.mean.device
        )
        action = torch.tanh(self.mean + self.std * noise)  # [samples, ..., A]
        u = torch.atanh(action.clamp(-0.99999997, 0.99999997))
        log_det = 2 * (math.log(2) - u - F.softplus(-2 * u))  # log(1 - tanh(u)^2)
        log_p = (self._log_normal(u) - log_det).sum(-1)  # [samples, ...]
        best = log_p.argmax(0)[None, ..., None].expand(1, *action.shape[1:])
        return action.gather(0, best)[0]
