"""aime.py computes what the AIME authors' code computes, on their own weights.

Each folder under tests/fixtures/authors-aime/ (and each folder listed in the environment
variable AIME_PARITY_DIRS, separated by os.pathsep, in the same form) holds a world model and a
policy as the authors' code saves them (`model.pt` + `config.yaml`, `policy.pt`), a fixed batch
(`batch.npz`, time-major, T = 8, B = 3) and what their code computed on it with every sample
replaced by its mean (`outputs.npz`). The folders were made by running their unmodified code
(github argmax-ai/aime, commit 3d2cd90) at small sizes; `meta.json` records how. Here the same
batch goes through aime.py's loader (`load_world_model`, with `common/model_files.py`'s
`load_policy`) and its own functions (`phase1_step`, `RSSM.observe`, `WorldModel.decode`,
`RSSM.imagine`, `Policy`), and every array is compared at float32 tolerance, one test case per
folder and group of arrays.

Phase 2 (`phase2.npz`): their `filter_with_policy` with the model frozen, as their train_aime.py
runs it with their config's defaults, in four variants (plain, kl_only, use_idm, and a sampled
pass whose noise is given). Their config keeps the model's KL balancing (cheetah: 0.8) in phase 2,
which aime.py does with `--phase2-kl-balance` (its default drops it, as their README's phase-2
command does). The same batch goes through `aime.phase2_step` and `aime.infer_actions` with the
same noise (zeros for the deterministic variants: the policy's mode and the posterior's mean), and
the actions, states, loss terms and every policy parameter's gradient are compared, one case per
folder, variant and group.

Their losses also train probe heads (detached, in LPOMDP and Visual) that aime.py does not have:
their `reconstruction_loss` and `total_loss` are compared less those probe terms.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import aime
from common.model_files import load_policy, policy_parameter
from common.nets import kl_normal

FIXTURES = Path(__file__).parent / "fixtures" / "authors-aime"
FOLDERS = sorted(p for p in FIXTURES.iterdir() if p.is_dir()) + [
    Path(p) for p in os.environ.get("AIME_PARITY_DIRS", "").split(os.pathsep) if p
]
GROUPS = ["states", "decoders", "loss", "idm", "policy", "openloop"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One thread, as the fixtures were computed; the process's own count is put back after, so
    that later tests run as they would alone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def decoded_keys(config: dict[str, Any]) -> tuple[str, ...]:
    """The keys the model reads and decodes: MDP every tabular sensor, LPOMDP the first-order
    ones, Visual the image (their config's `env.sensors`, in its order)."""
    sensors = config["env"]["sensors"]
    setting = config["environment_setup"]
    if setting == "visual":
        return ("image",)
    tabular = [k for k, v in sensors.items() if v["modility"] == "tabular"]
    if setting == "lpomdp":
        return tuple(k for k in tabular if sensors[k]["order"] == "first")
    return tuple(tabular)


def per_key(
    x: torch.Tensor, keys: tuple[str, ...], dims: dict[str, int]
) -> dict[str, torch.Tensor]:
    """Decoder outputs concatenated in sensor order, cut back into keys (the image is one)."""
    if keys == ("image",):
        return {"image": x}
    return dict(zip(keys, x.split([dims[k] for k in keys], -1), strict=True))


def load(folder: Path, **flags: Any) -> tuple[dict[str, torch.Tensor], tuple[str, ...], dict[
    str, int], aime.Config, aime.WorldModel, aime.Policy]:  # fmt: skip
    """The folder's batch, the keys the model reads and their sizes, the settings its config.yaml
    implies (and `flags`), and its world model and policy, loaded by aime.py's loaders."""
    config = yaml.safe_load((folder / "config.yaml").read_text())
    raw = np.load(folder / "batch.npz")
    batch = {k: torch.from_numpy(raw[k]) for k in raw.files if k != "image_uint8_hwc"}
    keys = decoded_keys(config)
    dims = {k: math.prod(batch[k].shape[2:]) for k in keys}
    wm = config["world_model"]
    cfg = aime.Config(**{
        "env": config["env"]["embodiment"], "obs": config["environment_setup"], "use_idm": True,
        "layout": "aime" if wm["name"] == "rssm" else "dreamer", "action_repeat": 2,
        "kl_scale": float(wm["kl_scale"]), "free_nats": float(wm["free_nats"]),
        "kl_balance": wm["kl_rebalance"], **flags,
    })  # fmt: skip
    model = aime.load_world_model(folder, dims, 6, cfg)
    policy = aime.Policy(model.rssm.feature_dim, 6)
    load_policy(folder / "policy.pt", policy)
    return batch, keys, dims, cfg, model, policy


def key_terms(
    model: aime.WorldModel, feat: torch.Tensor, batch: dict[str, torch.Tensor],
    keys: tuple[str, ...], dims: dict[str, int],
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Each key's decoder mean and std at `feat`, its log-density, and its loss terms."""
    out: dict[str, torch.Tensor] = {}
    mean, std = model.decode(feat)
    means = per_key(mean, keys, dims)
    stds = {k: torch.ones(()) for k in keys} if std is None else per_key(std, keys, dims)
    for k in keys:
        m, sd = means[k], stds[k]
        ll = torch.distributions.Normal(m, sd).log_prob(batch[k])
        out[f"dec_mean.{k}"], out[f"dec_std.{k}"] = m, sd
        out[f"rec_ll.{k}"] = ll.flatten(2).sum(-1)
        out[f"rec_ll_weighted.{k}"] = (ll * sd).flatten(2).sum(-1)
        out[f"loss.{k}_rec_term"] = ll.flatten(2).sum(-1).sum(0).mean()
        out[f"loss.{k}_reconstruction_loss"] = -(ll * sd).flatten(2).sum(-1).sum(0).mean()
    return out


def ours(folder: Path) -> dict[str, np.ndarray]:
    """Every array of outputs.npz, computed by aime.py's code from the folder's checkpoints."""
    batch, keys, dims, cfg, model, policy = load(folder)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        total, metrics = aime.phase1_step(model, batch, keys, cfg, sample=False)
        obs, actions = aime.observation(batch, keys), batch["pre_action"]
        emb = model.encoder(obs)
        st = model.rssm.observe(emb, actions, sample=False)
        feat = st.features()
        kl_per_dim = kl_normal(st.post_mean, st.post_std, st.prior_mean, st.prior_std)
        out.update(
            h=st.deter, s=st.stoch, feat=feat, prior_mean=st.prior_mean, prior_std=st.prior_std,
            post_mean=st.post_mean, post_std=st.post_std, kl_per_dim=kl_per_dim,
            kl=kl_per_dim.sum(-1), emb=emb,
        )  # fmt: skip
        out.update(key_terms(model, feat, batch, keys, dims))
        out["loss.rec_term"], out["loss.kl_term"] = metrics["rec_term"], metrics["kl_term"]
        out["loss.elbo"], out["loss.kl_loss"] = metrics["elbo"], metrics["kl_loss"]
        out["loss.reconstruction_loss"] = metrics["rec_loss"]
        out["loss.idm_loss"] = metrics["idm_loss"]
        out["loss.total_loss"] = total
        assert model.idm is not None
        idm = model.idm(torch.cat([feat[:-1], emb[1:]], -1))
        out.update(idm_mean=idm.mean, idm_std=idm.std, idm_ll=idm.log_prob(actions[1:]))
        pi = policy(feat)
        out.update(policy_mean=pi.mean, policy_std=pi.std, policy_mode=pi.mode)
        out["policy_ll"] = policy(feat[:-1]).log_prob(actions[1:])
        pi0 = policy(torch.zeros(feat.shape[1], feat.shape[2]))
        out.update(policy_mean_init=pi0.mean, policy_std_init=pi0.std)
        rollout = model.rssm.imagine(
            (st.deter[3], st.stoch[3]), 4, actions=actions[4:], sample=False
        )
        out.update({"openloop.h": rollout.deter, "openloop.s": rollout.stoch})
        if "image" not in keys:
            open_mean, _ = model.decode(rollout.features())
            for k, m in per_key(open_mean, keys, dims).items():
                out[f"openloop.dec_mean.{k}"] = m
    return {k: v.numpy() for k, v in out.items()}


def group_of(name: str) -> str | None:
    if name.startswith(("grad_norm.", "stoch_loss.")) or "probe_" in name:
        return None  # gradients per their parameter, the sampling pass, the probe heads
    if name.startswith("loss."):
        return "loss" if not name.endswith("_mse") else None
    if name.startswith(("dec_", "rec_ll")):
        return "decoders"
    if name.startswith("idm_"):
        return "idm"
    if name.startswith("policy_"):
        return "policy"
    if name.startswith("openloop."):
        return "openloop"
    return "states"


CACHE: dict[Path, dict[str, np.ndarray]] = {}


def assert_close(folder: Path, name: str, mine: np.ndarray | None, theirs: np.ndarray) -> None:
    """Ours equals theirs to 1e-5, absolute for arrays, relative for a loss scalar (image
    log-likelihoods are sums of 12288 terms); the message names the folder and the array."""
    assert mine is not None, f"{folder.name}: {name} is not computed here"
    expected = theirs.astype(np.float64)
    atol = 1e-5 * max(1.0, abs(float(expected))) if expected.ndim == 0 else 1e-5
    np.testing.assert_allclose(
        mine.astype(np.float64), expected, rtol=1e-5, atol=atol, err_msg=f"{folder.name}: {name}"
    )


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_matches_the_authors_code(folder: Path, group: str) -> None:
    theirs = dict(np.load(folder / "outputs.npz"))
    probes = sum(float(v) for k, v in theirs.items() if k.startswith("loss.") and "_probe_" in k
                 and k.endswith("_reconstruction_loss"))  # fmt: skip
    theirs["loss.reconstruction_loss"] = theirs["loss.reconstruction_loss"] - probes
    theirs["loss.total_loss"] = theirs["loss.total_loss"] - probes
    if folder not in CACHE:
        CACHE[folder] = ours(folder)
    mine = CACHE[folder]
    names = sorted(k for k in theirs if group_of(k) == group)
    assert names, f"{folder.name} has no arrays of group {group}"
    for name in names:
        assert_close(folder, name, mine.get(name), theirs[name])


# ---------------------------------------------------------------------------------------------
# Phase 2: their filter_with_policy with the model frozen (phase2.npz)
# ---------------------------------------------------------------------------------------------
VARIANTS = {  # the array prefix -> aime.py's flags
    "phase2": {},
    "phase2_kl_only": {"kl_only": True},
    "phase2_idm": {"use_idm": True},
    "phase2_noise": {},
}
PHASE2_GROUPS = ["action", "states", "loss", "grad"]
# their phase-2 metric -> aime.phase2_step's (the per-key terms are computed as in phase 1)
PHASE2_METRICS = {
    "rec_term": "rec_term", "kl_term": "kl_term", "elbo": "elbo", "model_kl_loss": "kl_loss",
    "reconstruction_loss": "rec_loss", "action_kl_loss": "action_kl", "total_loss": "loss",
}  # fmt: skip


def ours_phase2(folder: Path, variant: str) -> dict[str, np.ndarray]:
    """Every array of phase2.npz under the prefix `variant`, computed by aime.py's phase 2 (the
    model frozen, as aime.py's main freezes it) with their noise (zeros: deterministic)."""
    batch, keys, dims, cfg, model, policy = load(
        folder,
        **{"use_idm": False, "kl_scale": 1.0, "phase2_kl_balance": True, **VARIANTS[variant]},
    )
    model.requires_grad_(False)
    theirs = np.load(folder / "phase2.npz")
    T, B, A = batch["pre_action"].shape
    if variant == "phase2_noise":
        noise = tuple(torch.from_numpy(theirs[f"{variant}.eps_{x}"]) for x in ("action", "state"))
    else:
        noise = (torch.zeros(T, B, A), torch.zeros(T, B, model.rssm.cfg.stoch))
    loss, metrics = aime.phase2_step(model, policy, batch, keys, cfg, noise)  # type: ignore[arg-type]
    loss.backward()
    out: dict[str, torch.Tensor] = {f"loss.{k}": metrics[m] for k, m in PHASE2_METRICS.items()
                                    if m in metrics}  # fmt: skip
    out["loss.total_loss"] = loss.detach()
    out.update({f"grad.{name}": p.grad for name, p in policy.named_parameters()})  # type: ignore[misc]
    with torch.no_grad():
        embed = model.encoder(aime.observation(batch, keys))
        states, actions, _ = aime.infer_actions(model, policy, embed, noise)  # type: ignore[arg-type]
        out.update(action=actions, h=states.deter, s=states.stoch)
        terms = key_terms(model, states.features(), batch, keys, dims)
        out.update({k: v for k, v in terms.items() if k.startswith("loss.")})
    return {f"{variant}.{k}": v.detach().numpy() for k, v in out.items()}


def phase2_group(name: str) -> str | None:
    """The group of a phase2.npz array (after its variant's prefix); None: not compared (the
    noise given, the probe heads, the mean squared errors)."""
    rest = name.split(".", 1)[1]
    if rest.startswith("eps_") or "probe_" in rest or rest.endswith("_mse"):
        return None
    if rest in ("h", "s"):
        return "states"
    return rest.split(".")[0]


PHASE2_CACHE: dict[tuple[Path, str], dict[str, np.ndarray]] = {}


@pytest.mark.parametrize("group", PHASE2_GROUPS)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_phase2_matches_the_authors_code(folder: Path, variant: str, group: str) -> None:
    theirs = {
        k: v for k, v in np.load(folder / "phase2.npz").items() if k.startswith(f"{variant}.")
    }
    assert theirs, f"{folder.name}: phase2.npz has no variant {variant}"
    probes = sum(float(v) for k, v in theirs.items()
                 if "_probe_" in k and k.endswith("_reconstruction_loss"))  # fmt: skip
    theirs[f"{variant}.loss.reconstruction_loss"] -= probes
    if variant != "phase2_kl_only":  # the kl_only loss holds no reconstruction, nor probes
        theirs[f"{variant}.loss.total_loss"] -= probes
    if (folder, variant) not in PHASE2_CACHE:
        PHASE2_CACHE[folder, variant] = ours_phase2(folder, variant)
    mine = PHASE2_CACHE[folder, variant]
    names = sorted(k for k in theirs if phase2_group(k) == group)
    assert names, f"{folder.name} has no {variant} arrays of group {group}"
    for name in names:
        ours_name = name
        if group == "grad":
            prefix, param = name.split(".grad.")
            ours_name = f"{prefix}.grad.{policy_parameter(param)}"
        assert_close(folder, name, mine.get(ours_name), theirs[name])


def test_phase2_balancing_moves_the_gradient_not_the_loss() -> None:
    """On the cheetah fixture (KL balancing 0.8) aime.py's default phase 2 (the true KL, their
    README's command) has the loss their config computes, and a policy gradient that differs."""
    folder = FIXTURES / "cheetah-mdp-small"
    batch, keys, _, cfg, model, policy = load(folder, use_idm=False, kl_scale=1.0)
    assert cfg.kl_balance == 0.8 and not cfg.phase2_kl_balance
    model.requires_grad_(False)
    T, B, A = batch["pre_action"].shape
    noise = (torch.zeros(T, B, A), torch.zeros(T, B, model.rssm.cfg.stoch))
    loss, _ = aime.phase2_step(model, policy, batch, keys, cfg, noise)
    loss.backward()
    theirs = np.load(folder / "phase2.npz")
    np.testing.assert_allclose(loss.item(), float(theirs["phase2.loss.total_loss"]), rtol=1e-5)
    grad = dict(policy.named_parameters())["mean.0.weight"].grad
    expected = theirs["phase2.grad.mean_net.net.0.weight"]
    assert grad is not None
    relative = float(np.abs(grad.numpy() - expected).max() / np.abs(expected).max())
    assert relative > 0.1, relative


# ---------------------------------------------------------------------------------------------
# The published form through the command line: phase 2 on their model, refusals
# ---------------------------------------------------------------------------------------------
def tiny_run(data_dir: Path, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        env="walker", task="walk", demo=str(data_dir / "walker-random"), obs="mdp",
        data_dir=str(data_dir), runs_dir=str(tmp_path), phase2_epochs=1, steps_per_epoch=2,
        batch_size=2, horizon=5, eval_episodes=1, eval_every=0, num_demos=2,
        world_model=str(FIXTURES / "walker-mdp-small"),
    )  # fmt: skip
    return aime.main(aime.Args(**{**args, **kw}))


def test_phase2_runs_on_a_published_world_model(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tiny_run(data_dir, tmp_path)
    assert results["world_model"].endswith("walker-mdp-small")
    assert results["wall_time_s"]["phase1"] == 0 and len(results["returns"]) == 1
    out = capsys.readouterr().out  # the start-state buffers, and the IDM without --use-idm
    assert "not used here, dropped: idm.*, initial_memory, initial_state" in out


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"obs": "lpomdp"}, r"'obs': \('mdp', 'lpomdp'\)"),
        ({"world_model": str(FIXTURES / "cheetah-mdp-small")}, r"'env': \('cheetah', 'walker'\)"),
        ({"layout": "dreamer"}, r"'layout': \('aime', 'dreamer'\)"),
    ],
)
def test_a_published_model_of_other_settings_is_refused(
    data_dir: Path, tmp_path: Path, flags: dict[str, Any], named: str
) -> None:
    with pytest.raises(SystemExit, match=named):
        tiny_run(data_dir, tmp_path, **flags)
    assert not list(tmp_path.glob("*/checkpoint.pt"))
