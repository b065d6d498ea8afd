"""vmail.py computes what the V-MAIL authors' code computes, on their own weights.

tests/fixtures/authors-vmail/ holds the weights of their networks (github rmrafailov/VMAIL,
commit 8c2d2d9, `dm_control/`: their `VMAIL` learner at small sizes after a few of its own
training steps), a fixed model batch and expert batch, and what their `_train` computed on them
with its random draws given (`make_fixtures.py` made them with their unmodified TensorFlow code;
its README says how and what each array is). Here their Keras weights go into vmail.py's
networks (`WorldModel`, `make_learner`; layouts converted: Dense kernels [in, out], Conv2D HWIO,
Conv2DTranspose HWOI, the GRU's gates [z, r, h] with two biases, their features [s, h] where
ours are [h, s], their embedding flattened HWC), the same noise is given to torch's draws, and
vmail.py's own functions (`elbo_loss`, `expert_latents`, `imagine`, `policy_losses`,
`value_expansion`) are compared with their arrays at float32 tolerance, one case per group.

The batches go through vmail.py's own pipeline (`replay.to_torch_batch`: uint8 images / 255,
which the encoder centres as their `preprocess` does), so the comparisons cover their image
convention too. The last cases check what no array shows: the RSSM's width at another --deter,
the fresh networks' initialisation against their statistics, and the demonstrations read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import vmail
from common import replay
from common.nets import kl_normal

FIXTURES = Path(__file__).parent / "fixtures" / "authors-vmail"
META: dict[str, Any] = json.loads((FIXTURES / "meta.json").read_text())
SIZES = META["sizes"]
T, B, K, A, N = (SIZES[k] for k in ("T", "B", "K", "A", "N"))
H, S, E = SIZES["H"], SIZES["S"], SIZES["E"]
DEPTH = META["config"]["cnn_depth"]


@cache
def arrays(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz") as f:
        return {k: f[k] for k in f.files}


def theirs(name: str) -> np.ndarray:
    return arrays("outputs")[name]


# ---------------------------------------------------------------------------------------------
# Their layouts -> ours
# ---------------------------------------------------------------------------------------------
# Imagination: their N start states are the model batch's posterior states [B, T - 1] flattened
# batch-major, ours [T - 1, B] time-major; ours[n] = theirs[START_ORDER[n]].
START_ORDER = np.array([b * (T - 1) + t for t in range(T - 1) for b in range(B)])
# The encoder's embedding: theirs flattens [2, 2, 8d] (HWC), ours [8d, 2, 2] (CHW).
EMBED_ORDER = np.arange(E).reshape(2, 2, E // 4).transpose(2, 0, 1).ravel()


def features(x: np.ndarray) -> np.ndarray:
    """Their features [..., s, h] -> ours [..., h, s]."""
    return np.concatenate([x[..., S : S + H], x[..., :S], x[..., S + H :]], -1)


def time_major(x: np.ndarray) -> np.ndarray:
    """Their batch-major [B, T, ...] -> ours [T, B, ...]."""
    return np.swapaxes(x, 0, 1)


def starts(x: np.ndarray) -> np.ndarray:
    """Their imagination arrays [..., N, ...] (axis 1) in our order of start states."""
    return x[:, START_ORDER]


def gru_gates(x: np.ndarray) -> np.ndarray:
    """Keras' gate blocks [z, r, h] along the last axis -> torch's [r, z, n] along the first."""
    z, r, h = np.split(x, 3, -1)
    return np.concatenate([r, z, h], -1).T


def convert(name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """One of their variables (`{network}/{layer}/{variable}`, the names of their tools.Module)
    -> the parameters of vmail.py's networks it becomes (a weight of theirs or its gradient:
    the conversions are permutations and transpositions)."""
    net, layer, var = name.split("/")
    dense = {  # their Dense layers -> our nn.Linear (weight [out, in] = kernel^T)
        ("rssm", "img1"): "model.rssm.pre_gru.0",
        ("rssm", "img2"): "model.rssm.prior.first_h",
        ("rssm", "img3"): "model.rssm.prior.rest.0.1",
        ("rssm", "obs2"): "model.rssm.posterior.rest.0.1",
        ("decoder", "h1"): "model.decoder.net.0",
        **{("actor", f"h{i}"): f"actor.net.{2 * i}" for i in range(4)},
        ("actor", "hout"): "actor.net.8",
        **{("value", f"h{i}"): f"value.{2 * i}" for i in range(3)},
        ("value", "hout"): "value.6",
        **{("discriminator", f"h{i}"): f"disc.{2 * i}" for i in range(2)},
        ("discriminator", "hout"): "disc.4",
    }
    convs = {f"h{i}": f"model.encoder.net.{2 * (i - 1)}" for i in range(1, 5)}
    deconvs = {f"h{i}": f"model.decoder.net.{2 * (i - 1)}" for i in range(2, 6)}
    if (net, layer) in dense:
        to = dense[net, layer]
        if var == "bias":
            return {f"{to}.bias": x}
        reads_features = layer == "h0" or (net, layer) == ("decoder", "h1")  # [s, h, ...] rows
        return {f"{to}.weight": (features(x.T).T if reads_features else x).T}
    if net == "rssm" and layer == "obs1":  # [h, e] -> first_h (h, with the bias), first_e (e)
        if var == "bias":
            return {"model.rssm.posterior.first_h.bias": x}
        return {
            "model.rssm.posterior.first_h.weight": x[:H].T,
            "model.rssm.posterior.first_e.weight": x[H:][EMBED_ORDER].T,
        }
    if net == "rssm" and layer == "cell":
        if var == "bias":  # [2, 3u]: the input's and the recurrent part's biases
            return {
                "model.rssm.gru.bias_ih": gru_gates(x[0]),
                "model.rssm.gru.bias_hh": gru_gates(x[1]),
            }
        return {
            f"model.rssm.gru.weight_{'hh' if var == 'recurrent_kernel' else 'ih'}": gru_gates(x)
        }
    if net == "encoder":  # Conv2D kernel HWIO -> OIHW
        return {f"{convs[layer]}.{var}": x.transpose(3, 2, 0, 1) if var == "kernel" else x}
    if net == "decoder":  # Conv2DTranspose kernel [h, w, out, in] -> [in, out, h, w]
        return {f"{deconvs[layer]}.{var}": x.transpose(3, 2, 0, 1) if var == "kernel" else x}
    raise KeyError(name)


def converted(named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, x in named.items():
        for k, v in convert(name, x).items():
            assert k not in out, f"{name}: {k} twice"
            out[k.replace(".kernel", ".weight")] = v
    return out


# ---------------------------------------------------------------------------------------------
# vmail.py's networks with their weights
# ---------------------------------------------------------------------------------------------
def config() -> vmail.Config:
    c = META["config"]
    return vmail.Config(
        deter=H, stoch=S, hidden=c["num_units"], imag_horizon=K, gamma=c["discount"],
        gp_weight=c["alpha"], free_nats=c["free_nats"], device="cpu",
    )  # fmt: skip


class Nets:
    """vmail.py's world model (at their convolution depth, a config value of theirs; vmail.py
    builds 32) and learner at the fixture's sizes, with their weights (load: False leaves
    vmail.py's own initialisation)."""

    def __init__(self, load: bool = True) -> None:
        cfg = config()
        with torch.random.fork_rng():  # the initial weights drawn here leave torch's stream be
            torch.manual_seed(0)
            self.model = vmail.WorldModel(0, A, True, cfg, depth=DEPTH)
            self.learner = vmail.make_learner(H + S, A, True, cfg)
        self.cfg = cfg
        if not load:
            return
        state = converted(arrays("weights"))
        for k, v in state.items():
            self.params()[k].data.copy_(torch.from_numpy(np.ascontiguousarray(v)))
        assert set(state) == set(self.params()), set(state) ^ set(self.params())

    def params(self) -> dict[str, nn.Parameter]:
        nets = {"model": self.model, "actor": self.learner.actor, "value": self.learner.value,
                "disc": self.learner.disc}  # fmt: skip
        return {f"{n}.{k}": p for n, net in nets.items() for k, p in net.named_parameters()}


@contextmanager
def given(**queues: list[np.ndarray]) -> Iterator[None]:
    """torch.randn, torch.randn_like and torch.rand return the next given array (shapes checked,
    every array used): the noise their code drew, in our layout."""
    old = {k: getattr(torch, k) for k in queues}
    left = {k: list(v) for k, v in queues.items()}

    def draw(kind: str) -> Callable[..., Tensor]:
        def next_array(*args: Any, **kwargs: Any) -> Tensor:
            shape = args[0].shape if kind == "randn_like" else torch.Size(args)
            x = torch.from_numpy(np.ascontiguousarray(left[kind].pop(0)))
            assert x.shape == shape, (kind, tuple(x.shape), tuple(shape))
            return x

        return next_array

    for k in queues:
        setattr(torch, k, draw(k))
    try:
        yield
    finally:
        for k, fn in old.items():
            setattr(torch, k, fn)
    assert not any(left.values()), {k: len(v) for k, v in left.items()}


def their_batch(tag: str) -> dict[str, Tensor]:
    """Their batch as vmail.py's training makes batches (`replay.to_torch_batch`: time-major,
    images [T, B, 3, 64, 64] as uint8 / 255)."""
    raw = arrays("batch")
    return replay.to_torch_batch(
        {"image": time_major(raw[f"{tag}.image"]), "pre_action": time_major(raw[f"{tag}.action"])},
        "cpu",
    )


def imagination_noise() -> list[np.ndarray]:
    """Per step the action's noise, then the state's, in our order of start states."""
    act, state = starts(theirs("noise.imag_action")), starts(theirs("noise.imag_state"))
    return [e for k in range(K) for e in (act[k], state[k])]


def start_states() -> tuple[Tensor, Tensor]:
    """Their model batch's posterior states as vmail.py's losses take them: [T, B, .]."""
    h, s = (
        torch.from_numpy(time_major(theirs(f"model.post_{k}")).copy()) for k in ("deter", "stoch")
    )
    return h, s


def grads_of(loss: Tensor, params: dict[str, nn.Parameter], prefix: str) -> dict[str, Tensor]:
    named = {k: p for k, p in params.items() if k.startswith(prefix)}
    got = torch.autograd.grad(loss, list(named.values()), retain_graph=True)
    return dict(zip(named, got, strict=True))


# ---------------------------------------------------------------------------------------------
# Every comparison, by group: name -> (ours, theirs in our layout)
# ---------------------------------------------------------------------------------------------
Pairs = dict[str, tuple[np.ndarray, np.ndarray]]


@cache
def comparisons() -> dict[str, Pairs]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fixtures were computed: one thread
    try:
        return compare()
    finally:
        torch.set_num_threads(threads)


def compare() -> dict[str, Pairs]:
    """Runs vmail.py's functions on their weights, batch and noise."""
    nets = Nets()
    model, learner, cfg, params = nets.model, nets.learner, nets.cfg, nets.params()
    groups: dict[str, Pairs] = {}
    keys = ("image",)
    batch, expert = their_batch("model"), their_batch("expert")

    def pair(group: str, name: str, mine: Tensor | float, their: np.ndarray) -> None:
        ours = mine.detach().numpy() if isinstance(mine, Tensor) else np.asarray(mine)
        groups.setdefault(group, {})[name] = (ours, np.asarray(their))

    # encoder: their images through our encoder (which centres them as their `preprocess`)
    with torch.no_grad():
        for tag, data in (("model", batch), ("expert", expert)):
            embed = model.encoder(data["image"])
            pair(
                "encoder",
                f"{tag}.embed",
                embed,
                time_major(theirs(f"{tag}.embed"))[..., EMBED_ORDER],
            )

    # states: RSSM.observe from their embedding with their posterior noise
    embed = torch.from_numpy(time_major(theirs("model.embed"))[..., EMBED_ORDER].copy())
    eps = time_major(theirs("noise.post_model"))
    with torch.no_grad(), given(randn=[eps]):
        post = model.rssm.observe(embed, batch["pre_action"])
    names = {"deter": "post_deter", "stoch": "post_stoch", **{k: k for k in (
        "post_mean", "post_std", "prior_mean", "prior_std")}}  # fmt: skip
    for ours_name, their_name in names.items():
        pair(
            "states",
            f"model.{their_name}",
            getattr(post, ours_name),
            time_major(theirs(f"model.{their_name}")),
        )
    kl = kl_normal(post.post_mean, post.post_std, post.prior_mean, post.prior_std).sum(-1)
    pair("states", "model.kl", kl, time_major(theirs("model.kl")))
    pair("states", "model.feat", post.features(), time_major(features(theirs("model.feat"))))

    # decoder: their features through our decoder: their Normal's mean
    feat = torch.from_numpy(time_major(features(theirs("model.feat"))).copy())
    with torch.no_grad():
        pair("decoder", "model.image_mean", model.decoder(feat),
             time_major(theirs("model.image_mean")).transpose(0, 1, 4, 2, 3))  # fmt: skip

    # world-model loss: elbo_loss end to end (their images, their noise), the Gaussian's
    # constant 0.5 log(2 pi) per pixel included on both sides
    with given(randn=[eps]):
        loss, _, metrics = vmail.elbo_loss(model, batch, keys, cfg.free_nats)
    pair("model_loss", "loss.image_log_prob", metrics["rec_term"], theirs("loss.image_log_prob"))
    pair("model_loss", "metric.kl", metrics["kl"], theirs("metric.kl"))
    pair("model_loss", "loss.div", metrics["kl"].clamp(min=cfg.free_nats), theirs("loss.div"))
    pair("model_loss", "loss.model", loss, theirs("loss.model"))
    their_grads = converted({k.split(".", 2)[2]: v for k, v in arrays("grads").items()
                             if k.startswith("grad.model.")})  # fmt: skip
    mine = grads_of(loss, params, "model.")
    for k, g in mine.items():
        pair("model_grads", k, g, their_grads[k])
    pair("model_grads", "norm.model", torch.stack([g.norm() for g in mine.values()]).norm(),
         theirs("norm.model"))  # fmt: skip

    # expert latents: expert_latents on their expert batch with their noise
    with given(randn=[time_major(theirs("noise.post_expert"))]):
        expert_feat, expert_actions = vmail.expert_latents(model.encoder, model.rssm, expert, keys)
    pair("expert", "expert.feat", expert_feat, time_major(features(theirs("expert.feat"))))
    expert_in = torch.cat([expert_feat[:-1], expert_actions], -1).flatten(0, 1)
    their_in = time_major(features(theirs("disc.expert_input"))).reshape(N, -1)
    pair("expert", "disc.expert_input", expert_in, their_in)

    # imagination: imagine from their posterior states with their action and state noise
    h, s = (x[:-1].flatten(0, 1) for x in start_states())
    with given(randn_like=imagination_noise()):
        imag = vmail.imagine(model.rssm, learner.actor, h, s, K)
    pair("imagination", "imag.feat", imag.features, starts(features(theirs("imag.feat"))))
    pair("imagination", "imag.action", imag.actions, starts(theirs("imag.action")))
    with torch.no_grad():
        pi = learner.actor(imag.features[:-1])
    pair("imagination", "imag.action_mean", pi.mean, starts(theirs("imag.action_mean")))
    pair("imagination", "imag.action_std", pi.std, starts(theirs("imag.action_std")))

    # discriminator, policy and value: policy_losses end to end with their noise
    alpha = starts(theirs("noise.alpha"))[..., None]
    with given(randn_like=imagination_noise(), rand=[alpha]):
        disc_loss, actor_loss, value_loss, m = vmail.policy_losses(
            model.rssm, learner, start_states(), expert_feat, expert_actions, cfg
        )
    policy_in = torch.cat([imag.features[:-1], imag.actions], -1).detach()
    with torch.no_grad():
        logit_e = learner.disc(expert_in).squeeze(-1)
        logit_p = learner.disc(policy_in).squeeze(-1)
    their_e = time_major(theirs("disc.expert_logit")).reshape(N)
    pair("discriminator", "disc.expert_logit", logit_e, their_e)
    pair("discriminator", "disc.expert_prob", torch.sigmoid(logit_e),
         time_major(theirs("disc.expert_prob")).reshape(N))  # fmt: skip
    pair(
        "discriminator",
        "disc.policy_input",
        policy_in,
        starts(features(theirs("disc.policy_input"))),
    )
    pair("discriminator", "disc.policy_logit", logit_p, starts(theirs("disc.policy_logit")))
    pair("discriminator", "metric.expert_d", m["expert_d"], theirs("metric.expert_d"))
    pair("discriminator", "metric.policy_d", m["policy_d"], theirs("metric.policy_d"))
    pair("discriminator", "loss.expert + loss.policy", -m["disc_loss"],
         theirs("loss.expert") + theirs("loss.policy"))  # fmt: skip
    pair("discriminator", "loss.grad_penalty", m["grad_penalty"], theirs("loss.grad_penalty"))
    pair("discriminator", "loss.discriminator", disc_loss, theirs("loss.discriminator"))

    reward = torch.sigmoid(logit_p)  # the reward D (vmail.py's default, their policy_d.mean())
    pair("policy", "disc.policy_prob (reward)", reward, starts(theirs("disc.policy_prob")))
    pair("policy", "metric.reward", m["imagined_reward"], theirs("metric.reward"))
    returns = vmail.value_expansion(reward[:-1], None, cfg.gamma)
    pair("policy", "returns", returns, starts(theirs("returns")))
    with torch.no_grad():
        value = learner.value(imag.features[1:]).squeeze(-1)
    pair("policy", "value.mean", value, starts(theirs("value.mean")))
    pair("policy", "loss.actor", actor_loss, theirs("loss.actor"))
    # the value loss: -log N(return; V, 1) weighted by the discount, on both sides
    pair("policy", "loss.value", value_loss, theirs("loss.value"))

    their_grads = converted({k.split(".", 2)[2]: v for k, v in arrays("grads").items()
                             if not k.startswith("grad.model.")})  # fmt: skip
    for net, loss_, name in (("disc", disc_loss, "discriminator"), ("actor", actor_loss, "actor"),
                             ("value", value_loss, "value")):  # fmt: skip
        mine = grads_of(loss_, params, f"{net}.")
        for k, g in mine.items():
            pair("learner_grads", k, g, their_grads[k])
        norm = torch.stack([g.norm() for g in mine.values()]).norm()
        pair("learner_grads", f"norm.{name}", norm, theirs(f"norm.{name}"))
    return groups


GROUPS = ["encoder", "states", "decoder", "model_loss", "model_grads", "expert", "imagination",
          "discriminator", "policy", "learner_grads"]  # fmt: skip


def assert_close(name: str, mine: np.ndarray, expected: np.ndarray, rtol: float = 1e-5) -> None:
    """To 1e-5, absolute for arrays, relative for a scalar (the image log-likelihood is a sum of
    12,288 terms per record, about -1.2e4)."""
    expected = expected.astype(np.float64)
    assert mine.shape == expected.shape, f"{name}: shape {mine.shape}, theirs {expected.shape}"
    atol = rtol * max(1.0, abs(float(expected))) if expected.ndim == 0 else 1e-5
    np.testing.assert_allclose(
        mine.astype(np.float64), expected, rtol=rtol, atol=atol, err_msg=name
    )


@pytest.mark.parametrize("group", GROUPS)
def test_matches_the_authors_code(group: str) -> None:
    pairs = comparisons()[group]
    assert pairs, group
    for name, (mine, expected) in sorted(pairs.items()):
        assert_close(name, mine, expected)


def test_their_weights_fill_every_parameter_once() -> None:
    """Every array of weights.npz becomes parameters of vmail.py's networks and every parameter
    is filled (`Nets` checks both), with the shapes their conversions give."""
    nets = Nets()
    state = converted(arrays("weights"))
    for k, p in nets.params().items():
        assert tuple(p.shape) == state[k].shape, k
    assert sorted(arrays("weights")) == sorted(META["init_stats"])


# ---------------------------------------------------------------------------------------------
# What the groups do not show
# ---------------------------------------------------------------------------------------------
def test_images_enter_the_encoder_as_theirs() -> None:
    """vmail.py's batches hold uint8 / 255; its encoder's first convolution sees uint8 / 255 -
    0.5, their `preprocess`."""
    model, seen = Nets().model, []
    hook = model.encoder.get_submodule("net.0").register_forward_hook(
        lambda m, x, y: seen.append(x[0])
    )
    with torch.no_grad():
        model.encoder(their_batch("model")["image"])
    hook.remove()
    raw = arrays("batch")["model.image"].astype(np.float32) / np.float32(255) - np.float32(0.5)
    expected = time_major(raw).transpose(0, 1, 4, 2, 3).reshape(-1, 3, 64, 64)
    assert_close("first convolution's input", seen[0].numpy(), expected)


def test_the_rssm_hidden_width_follows_deter() -> None:
    model = vmail.WorldModel(0, A, True, config())
    assert model.rssm.cfg.hidden == H, f"--deter {H}: hidden width {model.rssm.cfg.hidden}"


def test_fresh_networks_are_initialised_as_theirs() -> None:
    """vmail.py's fresh networks against their initial statistics (meta.json, `init_stats`):
    zero biases, a kernel's largest |w| within 10% of theirs, an orthogonal recurrent kernel."""
    params = Nets(load=False).params()
    biases, ratios, orthogonality = [], [], []
    for name, stats in sorted(META["init_stats"].items()):
        for k in convert(name, np.zeros(stats["shape"], np.float32)):
            fresh = params[k.replace(".kernel", ".weight")].detach().numpy().astype(np.float64)
            if name.endswith("bias"):
                assert stats["max_abs"] == 0, name  # theirs: zeros
                biases.append(np.abs(fresh).max() == 0)
            elif name.endswith("recurrent_kernel"):  # theirs U [u, 3u] with U U^T = I
                assert stats["orthogonality_error"] < 1e-5, name
                orthogonality.append(np.abs(fresh.T @ fresh - np.eye(H)).max())
            else:
                ratios.append(np.abs(fresh).max() / stats["max_abs"])
    zero, near = sum(biases), sum(abs(r - 1) < 0.1 for r in ratios)
    assert zero == len(biases) and near == len(ratios) and max(orthogonality) < 1e-5, (
        f"zero biases: {zero} of {len(biases)}; kernels with the largest |w| within 10% of "
        f"theirs: {near} of {len(ratios)} ({min(ratios):.2f}x to {max(ratios):.2f}x); "
        f"recurrent kernel |U U^T - I| up to {max(orthogonality):.2f}"
    )


@pytest.mark.parametrize("num_demos", [0, 10])
def test_demonstrations_read(tmp_path: Path, num_demos: int) -> None:
    """A folder of 12 demonstrations, as vmail.py's main opens it: --num-demos 0 reads every file,
    as their loader did (it drew from all 12: `demos.episodes_read`); the default, the paper's
    10 demonstrations (their folder held those), the first 10."""
    files = int(theirs("demos.files"))
    assert int(theirs("demos.episodes_read")) == files
    folder = tmp_path / "walker-walk-expert"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(files):
        replay.save_trajectory(folder / f"{i}.npz", {
            "image": rng.integers(0, 255, (T + 2, 64, 64, 3), dtype=np.uint8),
            "pre_action": rng.uniform(-1, 1, (T + 2, A)).astype(np.float32),
            "reward": np.zeros(T + 2, np.float32),
            "is_first": np.eye(T + 2, 1, dtype=bool)[:, 0], "is_last": np.zeros(T + 2, bool),
            "is_terminal": np.zeros(T + 2, bool),
        })  # fmt: skip
    assert vmail.Args().num_demos == 10
    cfg = vmail.Config(env="walker", task="walk", demo="walk", num_demos=num_demos,
                       data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))  # fmt: skip
    shapes = {"image": (64, 64, 3), "pre_action": (A,)}
    opened = vmail.open_demonstrations(cfg, ("image",), shapes)["walk"]
    assert len(opened.files) == (num_demos or files)
