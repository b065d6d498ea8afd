"""The RSSM cell against hand computations, the KL against torch.distributions, the tanh-Gaussian
log-probability against a numerical change of variables."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.nets import TanhNormal, kl_loss, kl_normal
from common.rssm import AIME_RSSM, DREAMER_RSSM, RSSM, FilteringActor, RSSMConfig

SMALL_AIME = RSSMConfig(deter=16, stoch=6, hidden=12)
SMALL_DREAMER = RSSMConfig(
    deter=16, stoch=5, hidden=12, layers=1, act="silu", layer_norm=True,
    pre_gru=True, separate_std=False, std_act="sigmoid2", min_std=0.1,
)  # fmt: skip
LAYOUTS = [pytest.param(SMALL_AIME, id="aime"), pytest.param(SMALL_DREAMER, id="dreamer")]


def make_sequence(
    T: int = 7, B: int = 3, A: int = 2, E: int = 9
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(T, B, E, generator=g), torch.rand(T, B, A, generator=g) * 2 - 1


@pytest.mark.parametrize("cfg", LAYOUTS)
def test_observe_equals_stepping_the_cell_by_hand(cfg: RSSMConfig) -> None:
    torch.manual_seed(0)
    rssm = RSSM(action_dim=2, embed_dim=9, cfg=cfg)
    embed, actions = make_sequence()
    T, B = actions.shape[:2]

    torch.manual_seed(1)
    out = rssm.observe(embed, actions)
    torch.manual_seed(1)
    noise = torch.randn(T, B, cfg.stoch)  # observe draws its noise first, all at once

    h, s = torch.zeros(B, cfg.deter), torch.zeros(B, cfg.stoch)
    for t in range(T):
        # h_t = GRU(h_{t-1}, [s_{t-1}, a_{t-1}]);  s_t ~ q(s_t | h_t, e_t);  p(s_t | h_t)
        h = rssm.gru(rssm.pre_gru(torch.cat([s, actions[t]], -1)), h)
        qm, qs = rssm.posterior(h, rssm.project_embed(embed[t]))
        s = qm + qs * noise[t]
        pm, ps = rssm.prior(h)
        torch.testing.assert_close(out.deter[t], h)
        torch.testing.assert_close(out.stoch[t], s)
        torch.testing.assert_close(out.prior_mean[t], pm)
        torch.testing.assert_close(out.prior_std[t], ps)
        torch.testing.assert_close(out.post_mean[t], qm)
        torch.testing.assert_close(out.post_std[t], qs)
    assert out.features().shape == (T, B, cfg.deter + cfg.stoch)


@pytest.mark.parametrize("cfg", LAYOUTS)
def test_split_first_layer_equals_the_mlp_on_the_concatenation(cfg: RSSMConfig) -> None:
    torch.manual_seed(0)
    rssm = RSSM(action_dim=2, embed_dim=9, cfg=cfg)
    post = rssm.posterior
    h, e = torch.randn(4, cfg.deter), torch.randn(4, 9)
    mean, std = post(h, post.project_embed(e))

    first = nn.Linear(cfg.deter + 9, post.first_h.out_features)
    assert post.first_e is not None
    with torch.no_grad():
        first.weight.copy_(torch.cat([post.first_h.weight, post.first_e.weight], dim=1))
        first.bias.copy_(post.first_h.bias)
    x = first(torch.cat([h, e], -1))
    if cfg.separate_std:  # two MLPs side by side: one for the mean, one for the std
        x_mean, x_std = x.chunk(2, -1)
        want_mean, raw_std = post.rest[0](x_mean), post.rest[1](x_std)
        want_std = torch.nn.functional.softplus(raw_std) + cfg.min_std
    else:
        want_mean, raw_std = post.rest[0](x).chunk(2, -1)
        want_std = 2 * torch.sigmoid(raw_std / 2) + cfg.min_std
    torch.testing.assert_close(mean, want_mean)
    torch.testing.assert_close(std, want_std)
    assert bool((std >= cfg.min_std).all())


def test_layouts_have_the_published_sizes() -> None:
    aime = RSSM(action_dim=6, embed_dim=24, cfg=AIME_RSSM)
    assert (aime.gru.hidden_size, aime.feature_dim) == (512, 640)
    assert aime.gru.input_size == 128 + 6  # [s, a] straight into the GRU
    # Prior: separate mean and std MLPs, 2 hidden layers of 128, ELU.
    assert aime.prior.first_h.out_features == 2 * 128 and len(aime.prior.rest) == 2
    assert sum(isinstance(m, nn.Linear) for m in aime.prior.rest[0].modules()) == 2
    assert any(isinstance(m, nn.ELU) for m in aime.prior.rest[0].modules())

    dreamer = RSSM(action_dim=6, embed_dim=1024, cfg=DREAMER_RSSM)
    assert (dreamer.gru.hidden_size, dreamer.feature_dim, dreamer.gru.input_size) == (512, 542, 512)
    assert any(isinstance(m, nn.LayerNorm) for m in dreamer.pre_gru.modules())
    assert any(isinstance(m, nn.SiLU) for m in dreamer.posterior.rest[0].modules())
    h = torch.randn(5, 512) * 100
    _, std = dreamer.prior(h)
    assert bool((std >= 0.1).all()) and bool((std <= 2.1).all())


@pytest.mark.parametrize("cfg", LAYOUTS)
def test_imagine_with_actions_and_with_a_policy(cfg: RSSMConfig) -> None:
    torch.manual_seed(0)
    rssm = RSSM(action_dim=2, embed_dim=9, cfg=cfg)
    state = (torch.randn(3, cfg.deter), torch.randn(3, cfg.stoch))
    actions = torch.rand(5, 3, 2) * 2 - 1
    rolled = rssm.imagine(state, 5, actions=actions, sample=False)
    h, s = state
    for t in range(5):
        h, s, mean, _ = rssm.img_step(h, s, actions[t], torch.zeros(3, cfg.stoch))
        torch.testing.assert_close(rolled.deter[t], h)
        torch.testing.assert_close(rolled.stoch[t], mean)

    seen: list[torch.Tensor] = []

    def policy(features: torch.Tensor) -> torch.Tensor:
        seen.append(features)
        return torch.tanh(features[:, :2])

    rolled = rssm.imagine(state, 4, policy=policy)
    torch.testing.assert_close(seen[0], torch.cat(state, -1))  # acts on the current state
    torch.testing.assert_close(seen[2], rolled.features()[1])
    torch.testing.assert_close(rolled.actions[1], torch.tanh(seen[1][:, :2]))
    with pytest.raises(ValueError, match="exactly one"):
        rssm.imagine(state, 2)


@pytest.mark.parametrize("cfg", LAYOUTS)
def test_cell_traces_into_one_graph_for_torch_compile(cfg: RSSMConfig) -> None:
    """fullgraph=True fails on any graph break (host syncs, data-dependent Python control flow)."""
    torch.manual_seed(0)
    rssm = RSSM(action_dim=2, embed_dim=9, cfg=cfg)
    embed, actions = make_sequence(T=3)
    h, s = rssm.initial(3)
    proj = rssm.project_embed(embed[0])
    noise = torch.randn(3, cfg.stoch)
    compiled_obs = torch.compile(rssm.obs_step, fullgraph=True, backend="eager")
    want = rssm.obs_step(h, s, actions[0], proj, noise)
    for got_x, want_x in zip(compiled_obs(h, s, actions[0], proj, noise), want, strict=True):
        torch.testing.assert_close(got_x, want_x)
    compiled_img = torch.compile(rssm.img_step, fullgraph=True, backend="eager")
    compiled_img(h, s, actions[0], noise)
    compiled_observe = torch.compile(rssm.observe, fullgraph=True, backend="eager")
    torch.manual_seed(3)
    got = compiled_observe(embed, actions)
    torch.manual_seed(3)
    torch.testing.assert_close(got.stoch, rssm.observe(embed, actions).stoch)


def test_kl_equals_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    qm, pm = torch.randn(4, 5, 7, generator=g), torch.randn(4, 5, 7, generator=g)
    qs, ps = torch.rand(4, 5, 7, generator=g) + 0.05, torch.rand(4, 5, 7, generator=g) + 0.05
    want = torch.distributions.kl_divergence(
        torch.distributions.Normal(qm, qs), torch.distributions.Normal(pm, ps)
    )
    torch.testing.assert_close(kl_normal(qm, qs, pm, ps), want)
    torch.testing.assert_close(kl_loss(qm, qs, pm, ps), want.sum(-1))


def test_kl_balancing_keeps_the_value_and_splits_the_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    params = [torch.randn(3, 4, generator=g).requires_grad_() for _ in range(2)]
    qm, pm = params
    qs, ps = torch.full((3, 4), 0.7), torch.full((3, 4), 1.3)
    plain = kl_loss(qm, qs, pm, ps).sum()
    balanced = kl_loss(qm, qs, pm, ps, balance=0.8).sum()
    torch.testing.assert_close(balanced, plain)
    g_plain = torch.autograd.grad(plain, params)
    g_bal = torch.autograd.grad(balanced, params)
    torch.testing.assert_close(g_bal[0], 0.2 * g_plain[0])  # posterior moves 1 - α
    torch.testing.assert_close(g_bal[1], 0.8 * g_plain[1])  # prior moves α


def test_free_nats_clip_the_kl_gradient_per_step_and_keep_its_value() -> None:
    """As the authors' loss: no gradient from a step whose KL is below the free nats, but the
    reported value is the true KL."""
    qm = torch.tensor([[0.1, 0.0], [3.0, 0.0]], requires_grad=True)
    zeros, ones = torch.zeros(2, 2), torch.ones(2, 2)
    kl = kl_loss(qm, ones, zeros, ones, free_nats=1.0)  # true KLs: 0.005 and 4.5
    torch.testing.assert_close(kl, torch.tensor([0.005, 4.5]))
    kl.sum().backward()
    assert qm.grad is not None
    torch.testing.assert_close(qm.grad, torch.tensor([[0.0, 0.0], [3.0, 0.0]]))


def test_tanh_normal_log_prob_matches_a_numerical_change_of_variables() -> None:
    mean = torch.tensor([0.3, -1.2, 1.0], dtype=torch.float64)
    std = torch.tensor([0.5, 1.5, 0.8], dtype=torch.float64)
    base = torch.distributions.Normal(mean, std)
    for a in [-0.95, -0.4, 0.0, 0.6, 0.97]:
        action = torch.full((3,), a, dtype=torch.float64)
        # p(a) = d/da P(tanh(u) <= a) = d/da Φ((atanh(a) - mean) / std), by central differences.
        d = 1e-7
        density = (base.cdf(torch.atanh(action + d)) - base.cdf(torch.atanh(action - d))) / (2 * d)
        for i in range(3):  # each dimension alone, then the joint (the sum of the log-densities)
            one = TanhNormal(mean[i : i + 1], std[i : i + 1]).log_prob(action[i : i + 1])
            torch.testing.assert_close(one, density[i].log(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            TanhNormal(mean, std).log_prob(action), density.log().sum(), rtol=1e-5, atol=1e-5
        )


def test_tanh_normal_sample_log_prob_agrees_and_is_stable() -> None:
    torch.manual_seed(0)
    dist = TanhNormal(torch.zeros(1000, 2), torch.full((1000, 2), 0.5))
    action, log_prob = dist.rsample_with_log_prob()
    assert float(action.abs().max()) < 1
    torch.testing.assert_close(log_prob, dist.log_prob(action), rtol=1e-4, atol=1e-4)
    # Far in the tails the stable log-Jacobian stays finite where log(1 - tanh(u)^2) is -inf.
    assert bool(torch.isinf(torch.log(1 - torch.tanh(torch.tensor(30.0)) ** 2)))
    _, lp = TanhNormal(torch.full((10, 1), 30.0), torch.ones(10, 1)).rsample_with_log_prob()
    assert bool(torch.isfinite(lp).all()) and float(lp.min()) > 50  # density piles up at a = 1
    assert dist.mode.shape == (1000, 2)


def test_gradients_flow_through_observe() -> None:
    torch.manual_seed(0)
    rssm = RSSM(action_dim=2, embed_dim=9, cfg=SMALL_AIME)
    embed, actions = make_sequence()
    actions.requires_grad_()
    out = rssm.observe(embed, actions)
    kl = kl_loss(out.post_mean, out.post_std, out.prior_mean, out.prior_std).sum()
    kl.backward()
    assert actions.grad is not None and float(actions.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in rssm.parameters())


def test_filtering_actor_filters_as_observe_does_and_acts_with_the_mode() -> None:
    """Called record by record, `FilteringActor` reaches the states `RSSM.observe` filters from
    the whole sequence (the posterior's std set near 0, so its noise drops out) and acts with
    tanh(mean) of the policy there; at the last record it returns zeros and draws nothing."""
    torch.manual_seed(0)
    rssm = RSSM(action_dim=2, embed_dim=9, cfg=SMALL_AIME)
    std_head = list(rssm.posterior.rest[1].children())[-1]
    assert isinstance(std_head, nn.Linear)
    nn.init.zeros_(std_head.weight), nn.init.constant_(std_head.bias, -30.0)  # std ~ 1e-6
    embed, actions = make_sequence()  # [T, B, 9], [T, B, 2]: the records' observations, a_t-1
    T, B = actions.shape[:2]
    records = [
        [{"obs": embed[t, b].numpy(), "pre_action": actions[t, b].numpy(),
          "is_last": np.array(t == T - 1)} for b in range(B)]
        for t in range(T)
    ]  # fmt: skip
    head = nn.Linear(rssm.feature_dim, 2)

    def policy(features: torch.Tensor) -> TanhNormal:
        return TanhNormal(head(features), torch.ones(len(features), 2))

    actor = FilteringActor(nn.Identity(), rssm, policy, ("obs",), torch.device("cpu"), B)
    acted = np.stack([actor(records[t]) for t in range(T - 1)])
    with torch.no_grad():
        expected = torch.tanh(head(rssm.observe(embed, actions, sample=False).features()[:-1]))
    torch.testing.assert_close(torch.as_tensor(acted), expected, atol=1e-4, rtol=0)
    before = torch.random.get_rng_state()
    assert not actor(records[-1]).any()
    assert torch.equal(torch.random.get_rng_state(), before)
