"""The recurrent state-space model (RSSM) cell of PlaNet / Dreamer-v1, with continuous latents.

The latent state at time t is (h_t, s_t): h_t deterministic (a GRU), s_t Gaussian.

    h_t = GRU(h_{t-1}, [s_{t-1}, a_{t-1}])          deterministic transition
    p(s_t | h_t)        = N(prior_mean, prior_std)    prior      p_θ(s_t | s_{t-1}, a_{t-1})
    q(s_t | h_t, e_t)   = N(post_mean, post_std)      posterior  q_φ(s_t | s_{t-1}, a_{t-1}, o_t)

with e_t = f_φ(o_t) the encoder's embedding (the encoders live in the scripts). One cell serves
every path: `obs_step` (one posterior step), `img_step` (one prior step), `observe` (filter a
sequence with the posterior) and `imagine` (roll the prior forward under given actions or a policy);
`FilteringActor` acts in environments on the state it filters from their observations, step by step.

Three layouts (`RSSMConfig`), two from the AIME authors' code and one from the V-MAIL authors':
- `AIME_RSSM` (paper default, Appendix B): GRU 512 on [s, a], s of 128 dims, separate mean and std
  MLPs of 2x128 ELU for prior and posterior, std = softplus(.) + 1e-6.
- `DREAMER_RSSM` (the original-Dreamer layout: the authors' configs' default, their cheetah models):
  [s, a] -> Linear 512, LayerNorm, SiLU before the GRU; prior and posterior one MLP of 512
  (LayerNorm + SiLU) giving mean and std together, s of 30 dims, std = 2 sigmoid(x / 2) + 0.1.
- `VMAIL_RSSM` (Dreamer-v1's, the V-MAIL authors' `models.py`): GRU 200, s of 30 dims, one ELU
  layer of 200 before the GRU and in the prior and posterior, one MLP giving mean and std together,
  std = softplus(.) + 0.1. `keras_init` gives V-MAIL's networks, this cell among them, the V-MAIL
  authors' initialisation (TensorFlow's Keras defaults).

The sequence loop is the hot path: it runs on plain tensors (no dicts or distribution objects per
step, no host synchronisation), and holds only the GRU and the posterior; the embedding half of
the posterior's first layer and the sampling noise are computed for the whole sequence before the
loop, the prior after it; everything traces under torch.compile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.nets import TanhNormal, observation
from common.replay import records_batch


@dataclass(frozen=True)
class RSSMConfig:
    """Sizes and layout of the RSSM cell."""

    deter: int = 512
    """size of the deterministic state h (GRU)"""
    stoch: int = 128
    """size of the Gaussian stochastic state s"""
    hidden: int = 128
    """width of the prior, posterior (and pre-GRU) MLPs"""
    layers: int = 2
    """hidden layers of the prior and posterior MLPs"""
    act: Literal["elu", "silu"] = "elu"
    """activation of the hidden layers"""
    layer_norm: bool = False
    """LayerNorm after every hidden linear layer"""
    pre_gru: bool = False
    """an MLP layer on [s, a] before the GRU (original Dreamer) instead of [s, a] directly"""
    separate_std: bool = True
    """separate MLPs for the mean and the std (AIME) instead of one MLP with 2 * stoch outputs"""
    std_act: Literal["softplus", "sigmoid2"] = "softplus"
    """std = softplus(x) + min_std, or 2 * sigmoid(x / 2) + min_std"""
    min_std: float = 1e-6
    """lower bound added to every std"""


AIME_RSSM = RSSMConfig()
DREAMER_RSSM = RSSMConfig(
    stoch=30,
    hidden=512,
    layers=1,
    act="silu",
    layer_norm=True,
    pre_gru=True,
    separate_std=False,
    std_act="sigmoid2",
    min_std=0.1,
)
LAYOUT_RSSM = {"aime": AIME_RSSM, "dreamer": DREAMER_RSSM}  # AIME's two layouts (aime.py)
VMAIL_RSSM = RSSMConfig(
    deter=200,
    stoch=30,
    hidden=200,
    layers=1,
    act="elu",
    pre_gru=True,
    separate_std=False,
    std_act="softplus",
    min_std=0.1,
)


def _activation(name: str) -> nn.Module:
    return nn.ELU() if name == "elu" else nn.SiLU()


class GaussianNet(nn.Module):
    """x -> (mean, std) of a diagonal Gaussian over s, with x = h (prior) or [h, e] (posterior).

    The first linear layer is split by input, W [h, e] = W_h h + W_e e, so that `project_embed`
    can compute W_e e for a whole sequence outside the recurrence. With `separate_std` the mean
    and std MLPs' first layers are stacked into one linear layer, which is exactly two first
    layers side by side; the remaining layers of the two MLPs are separate.
    """

    def __init__(self, in_h: int, in_e: int, cfg: RSSMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        nets = 2 if cfg.separate_std else 1
        width = nets * cfg.hidden
        self.first_h = nn.Linear(in_h, width)
        self.first_e = nn.Linear(in_e, width, bias=False) if in_e > 0 else None
        out = cfg.stoch if cfg.separate_std else 2 * cfg.stoch
        self.rest = nn.ModuleList([self._rest(cfg, out) for _ in range(nets)])
        # The split layer starts as the authors' single layer over [h, e] does: PyTorch's default
        # initialisation U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in_h + in_e.
        bound = 1 / math.sqrt(in_h + in_e)
        halves = [self.first_h] if self.first_e is None else [self.first_h, self.first_e]
        for p in (q for layer in halves for q in layer.parameters()):
            nn.init.uniform_(p, -bound, bound)

    @staticmethod
    def _rest(cfg: RSSMConfig, out: int) -> nn.Sequential:
        """Everything after an MLP's first linear layer."""
        layers: list[nn.Module] = []
        for i in range(cfg.layers):
            if i > 0:
                layers.append(nn.Linear(cfg.hidden, cfg.hidden))
            if cfg.layer_norm:
                layers.append(nn.LayerNorm(cfg.hidden))
            layers.append(_activation(cfg.act))
        layers.append(nn.Linear(cfg.hidden, out))
        return nn.Sequential(*layers)

    def project_embed(self, e: Tensor) -> Tensor:
        """W_e e, the embedding half of the first layer: [..., embed] -> [..., width]."""
        assert self.first_e is not None, "the prior takes no embedding"
        return self.first_e(e)

    def forward(self, h: Tensor, e_proj: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        x = self.first_h(h) if e_proj is None else self.first_h(h) + e_proj
        if self.cfg.separate_std:
            x_mean, x_std = x.chunk(2, dim=-1)
            mean, raw_std = self.rest[0](x_mean), self.rest[1](x_std)
        else:
            mean, raw_std = self.rest[0](x).chunk(2, dim=-1)
        if self.cfg.std_act == "softplus":
            std = F.softplus(raw_std)
        else:
            std = 2 * torch.sigmoid(raw_std / 2)
        return mean, std + self.cfg.min_std


def normal_sample(mean: Tensor, std: Tensor, noise: Optional[Tensor] = None) -> Tensor:
    """mean + std * noise, a reparameterised Gaussian sample; `noise` standard normal, drawn
    where None."""
    return mean + std * (torch.randn_like(mean) if noise is None else noise)


class Filtered(NamedTuple):
    """States filtered by `RSSM.observe`, each [T, B, ...]."""

    deter: Tensor  # h_t         [T, B, deter]
    stoch: Tensor  # s_t ~ q     [T, B, stoch]
    prior_mean: Tensor  # p(s_t | h_t)  [T, B, stoch]
    prior_std: Tensor
    post_mean: Tensor  # q(s_t | h_t, e_t)  [T, B, stoch]
    post_std: Tensor

    def features(self) -> Tensor:
        """[h_t, s_t], the input of decoders and policies: [T, B, deter + stoch]."""
        return torch.cat([self.deter, self.stoch], dim=-1)


class Imagined(NamedTuple):
    """States rolled out by `RSSM.imagine`, each [H, B, ...]; state t follows action t."""

    deter: Tensor  # [H, B, deter]
    stoch: Tensor  # [H, B, stoch]
    mean: Tensor  # prior mean  [H, B, stoch]
    std: Tensor  # prior std   [H, B, stoch]
    actions: Tensor  # a_{t-1} that led to state t  [H, B, action]

    def features(self) -> Tensor:
        """[h_t, s_t]: [H, B, deter + stoch]."""
        return torch.cat([self.deter, self.stoch], dim=-1)


class RSSM(nn.Module):
    """The RSSM cell; see the module docstring for the equations and the two layouts."""

    def __init__(self, action_dim: int, embed_dim: int, cfg: RSSMConfig = AIME_RSSM) -> None:
        super().__init__()
        self.cfg = cfg
        self.action_dim, self.embed_dim = action_dim, embed_dim
        self.pre_gru: nn.Module
        if cfg.pre_gru:
            layers: list[nn.Module] = [nn.Linear(cfg.stoch + action_dim, cfg.hidden)]
            if cfg.layer_norm:
                layers.append(nn.LayerNorm(cfg.hidden))
            self.pre_gru = nn.Sequential(*layers, _activation(cfg.act))
            gru_in = cfg.hidden
        else:
            self.pre_gru = nn.Identity()
            gru_in = cfg.stoch + action_dim
        self.gru = nn.GRUCell(gru_in, cfg.deter)
        self.prior = GaussianNet(cfg.deter, 0, cfg)
        self.posterior = GaussianNet(cfg.deter, embed_dim, cfg)

    @property
    def feature_dim(self) -> int:
        """Size of the features [h, s] that decoders and policies read."""
        return self.cfg.deter + self.cfg.stoch

    def initial(
        self, batch_size: int, device: Optional[torch.device] = None
    ) -> tuple[Tensor, Tensor]:
        """The zero state (h_0, s_0) that starts every window: ([B, deter], [B, stoch])."""
        device = device or self.gru.weight_hh.device
        return (
            torch.zeros(batch_size, self.cfg.deter, device=device),
            torch.zeros(batch_size, self.cfg.stoch, device=device),
        )

    def project_embed(self, embed: Tensor) -> Tensor:
        """The posterior's embedding half of its first layer: [..., embed] -> [..., width]."""
        return self.posterior.project_embed(embed)

    def transition(self, h: Tensor, s: Tensor, action: Tensor) -> Tensor:
        """h_t = GRU(h_{t-1}, [s_{t-1}, a_{t-1}]), the deterministic step: [B, deter]."""
        return self.gru(self.pre_gru(torch.cat([s, action], dim=-1)), h)

    def img_step(
        self, h: Tensor, s: Tensor, action: Tensor, noise: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One prior step: (h, s) [B, .] and a_{t-1} [B, A] -> (h_t, s_t ~ p, mean, std).

        `noise` [B, stoch] is the standard normal sample (zeros give the mean); drawn if None.
        """
        h = self.transition(h, s, action)
        mean, std = self.prior(h)
        return h, normal_sample(mean, std, noise), mean, std

    def obs_step(
        self,
        h: Tensor,
        s: Tensor,
        action: Tensor,
        embed_proj: Tensor,
        noise: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One posterior step, given `embed_proj = project_embed(e_t)` [B, width].

        Returns (h_t, s_t ~ q, post_mean, post_std). The prior p(s_t | h_t) does not feed the
        recurrence, so it is left out here: apply `self.prior` to the h_t of all steps at once.
        """
        h = self.transition(h, s, action)
        post_mean, post_std = self.posterior(h, embed_proj)
        return h, normal_sample(post_mean, post_std, noise), post_mean, post_std

    def observe(
        self,
        embed: Tensor,
        actions: Tensor,
        state: Optional[tuple[Tensor, Tensor]] = None,
        sample: bool = True,
    ) -> Filtered:
        """Filter a sequence with the posterior: s_t ~ q(s_t | s_{t-1}, a_{t-1}, o_t), t = 0..T-1.

        embed [T, B, embed] are the encoded observations o_t, actions [T, B, A] the actions
        a_{t-1} that led to them (a dataset's `pre_action`); the state starts at `state` or zero.
        `sample=False` follows the posterior means. Only what the recurrence needs runs inside
        the loop; the embedding projection, the noise and the prior run once for all steps.
        """
        T, B = actions.shape[:2]
        h, s = self.initial(B, actions.device) if state is None else state
        embed_proj = self.project_embed(embed)  # [T, B, width]
        draw = torch.randn if sample else torch.zeros
        noise = draw(T, B, self.cfg.stoch, device=actions.device, dtype=h.dtype)
        outputs: list[tuple[Tensor, ...]] = []
        for t in range(T):
            h, s, post_mean, post_std = self.obs_step(h, s, actions[t], embed_proj[t], noise[t])
            outputs.append((h, s, post_mean, post_std))
        deter, stoch, post_mean, post_std = (torch.stack(x) for x in zip(*outputs, strict=True))
        prior_mean, prior_std = self.prior(deter)  # p(s_t | h_t) for all t at once: [T, B, stoch]
        return Filtered(deter, stoch, prior_mean, prior_std, post_mean, post_std)

    def imagine(
        self,
        state: tuple[Tensor, Tensor],
        horizon: int,
        policy: Optional[Callable[[Tensor], Tensor]] = None,
        actions: Optional[Tensor] = None,
        sample: bool = True,
    ) -> Imagined:
        """Roll the prior `horizon` steps from `state` ([B, deter], [B, stoch]).

        Actions come either from `actions` [horizon, B, A] (open loop) or from
        `policy(features [B, deter + stoch]) -> [B, A]` applied to each current state.
        """
        if (policy is None) == (actions is None):
            raise ValueError("imagine takes exactly one of `policy` and `actions`")
        h, s = state
        outputs: list[tuple[Tensor, ...]] = []
        for t in range(horizon):
            if actions is None:
                assert policy is not None
                action = policy(torch.cat([h, s], -1))
            else:
                action = actions[t]
            noise = None if sample else torch.zeros_like(s)
            h, s, mean, std = self.img_step(h, s, action, noise)
            outputs.append((h, s, mean, std, action))
        return Imagined(*(torch.stack(x) for x in zip(*outputs, strict=True)))


# --------------------------------------------------------------------------------------------
# Acting on the filtered state
# --------------------------------------------------------------------------------------------
class FilteringActor:
    """A policy acting in `n` environments on the state the model filters from their real
    observations: s_t ~ q(s_t | s_t-1, a_t-1, f(o_t)) by `RSSM.obs_step` from the zero state,
    then a_t from pi(a_t | s_t). Called with the current records, it returns the actions [n, A].

    The action is the policy's mode where `explore` is None (tanh(mean), or the most likely of
    `samples` draws from a generator of its own, seeded 0, so that an evaluation is repeatable and
    leaves torch's stream alone), otherwise a sample plus Gaussian noise of std `explore`, clipped
    to [-1, 1]. The posterior's noise comes from the generator `noise`, drawn at every call, or,
    where it is None, from torch's global one, drawn only at the steps that act. At the episodes'
    last record no action is taken and zeros are returned."""

    def __init__(
        self, encoder: nn.Module, rssm: RSSM, policy: Callable[[Tensor], TanhNormal],
        keys: tuple[str, ...], device: torch.device, n: int, explore: Optional[float] = None,
        samples: int = 0, noise: Optional[torch.Generator] = None,
    ) -> None:  # fmt: skip
        self.encoder, self.rssm, self.policy, self.keys = encoder, rssm, policy, keys
        self.device, self.explore, self.samples, self.noise = device, explore, samples, noise
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.h, self.s = rssm.initial(n, device)

    @torch.no_grad()
    def __call__(self, records: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
        n, stoch = len(records), self.rssm.cfg.stoch
        noise = None  # obs_step draws from the global generator
        if self.noise is not None:  # drawn at every call, the last one too
            noise = torch.randn(n, stoch, device=self.device, generator=self.noise)
        if records[0]["is_last"]:  # the episodes end: no action is taken
            return np.zeros((n, *records[0]["pre_action"].shape), np.float32)
        batch = records_batch(records, (*self.keys, "pre_action"), self.device)  # [1, n, ...]
        embed = self.rssm.project_embed(self.encoder(observation(batch, self.keys))[0])  # [n, .]
        h, s, action = self.h, self.s, batch["pre_action"][0]
        self.h, self.s, _, _ = self.rssm.obs_step(h, s, action, embed, noise)
        pi = self.policy(torch.cat([self.h, self.s], -1))
        if self.explore is None:
            mode = pi.sampled_mode(self.samples, self.generator) if self.samples else pi.mode
            return mode.cpu().numpy()
        action = pi.rsample()
        if self.explore > 0:
            action = (action + self.explore * torch.randn_like(action)).clamp(-1, 1)
        return action.cpu().numpy()


NetT = TypeVar("NetT", bound=nn.Module)


def keras_init(net: NetT) -> NetT:
    """V-MAIL's initialisation, the authors' (TensorFlow) Keras defaults, of every layer of
    `net`: Glorot-uniform kernels, zero biases, the GRU's recurrent kernel orthogonal."""
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GRUCell):
            nn.init.xavier_uniform_(m.weight_ih)
            nn.init.orthogonal_(m.weight_hh)
            nn.init.zeros_(m.bias_ih)
            nn.init.zeros_(m.bias_hh)
    for m in net.modules():  # the posterior's first layer: their one Dense over [h, e], in two
        if isinstance(m, GaussianNet) and m.first_e is not None:
            fan = m.first_h.in_features + m.first_e.in_features + m.first_h.out_features
            bound = math.sqrt(6 / fan)  # Glorot over the whole kernel
            for half in (m.first_h, m.first_e):
                nn.init.uniform_(half.weight, -bound, bound)
    return net
