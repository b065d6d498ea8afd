"""`--precision bf16` (common/run.py::mixed_precision and autocast): on the same weights and batch
each script's losses stay within a stated tolerance of float32's, training in bf16 still lowers
the loss, float32 is left exactly as it was, and the flag reaches a run end to end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import aime
import bco0
import dreamer_collect as dc
import vmail
from common.run import autocast, mixed_precision

CPU = torch.device("cpu")
WALKER = {"orientations": 14, "height": 1, "velocity": 9}
KEYS = tuple(WALKER)
# The largest relative difference of a bf16 loss from the float32 one allowed here; measured on
# these cases (2026-12-07, CPU): 7e-6 (AIME phase 1, its layout) to 1.5e-4 (phase 2, Dreamer's).
TOLERANCE = 2e-3


def walker_batch(T: int = 20, B: int = 8, seed: int = 1) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {"pre_action": torch.rand(T, B, 6, generator=g) * 2 - 1, "reward": torch.rand(T, B)}
    for k, d in WALKER.items():
        batch[k] = torch.randn(T, B, d, generator=g)
    return batch


def both(compute: Callable[[], dict[str, Tensor]], *nets: nn.Module) -> tuple[dict, dict]:
    """`compute`'s losses in float32, then in bf16 on the same networks (no step between)."""
    fp32 = {k: v.detach() for k, v in compute().items()}
    mixed_precision("bf16", *nets)
    with autocast("bf16", CPU):
        bf16 = compute()
    return fp32, bf16


def aime_phase1(layout: aime.Layout) -> tuple[dict, dict]:
    torch.manual_seed(0)
    model, cfg = aime.WorldModel(WALKER, 6, layout, False), aime.resolve(aime.Args(obs="mdp"))
    batch = walker_batch()
    return both(lambda: {"loss": aime.phase1_step(model, batch, KEYS, cfg, sample=False)[0]}, model)


def aime_phase2(layout: aime.Layout) -> tuple[dict, dict]:
    torch.manual_seed(0)
    model, cfg = aime.WorldModel(WALKER, 6, layout, False), aime.resolve(aime.Args(obs="mdp"))
    policy, batch = aime.Policy(model.rssm.feature_dim, 6), walker_batch()
    noise = (torch.zeros(20, 8, 6), torch.zeros(20, 8, model.rssm.cfg.stoch))  # the modes

    def loss() -> dict[str, Tensor]:
        return {"loss": aime.phase2_step(model, policy, batch, KEYS, cfg, noise)[0]}

    return both(loss, model, policy)


def vmail_losses() -> tuple[dict, dict]:
    torch.manual_seed(0)
    cfg = vmail.Config(obs="mdp", deter=32, stoch=8, hidden=32, grad_penalty="none")
    model = vmail.WorldModel(24, 6, False, cfg)
    learner = vmail.make_learner(model.rssm.feature_dim, 6, True, cfg)
    batch = walker_batch()

    def losses() -> dict[str, Tensor]:  # eq. (21), then D, pi and V from the same states
        torch.manual_seed(1)  # the rollouts' draws, the same in both precisions
        loss, start, _ = vmail.elbo_loss(model, batch, KEYS, cfg.free_nats)
        feat, actions = vmail.expert_latents(model.encoder, model.rssm, batch, KEYS)
        out = vmail.policy_losses(model.rssm, learner, start, feat, actions, cfg)
        return {"model": loss, "disc": out.disc, "actor": out.actor, "value": out.value}

    return both(losses, model, learner.actor, learner.value, learner.disc)


def dreamer_loss() -> tuple[dict, dict]:
    torch.manual_seed(0)
    args = dc.resolve(dc.Args(agent="dreamer", env="walker", obs="mdp", deter=32, stoch=8,
                              hidden=32, free_nats=0.0))  # fmt: skip
    model = dc.WorldModel(24, 6, False, args)
    batch = walker_batch()

    def loss() -> dict[str, Tensor]:
        torch.manual_seed(1)
        return {"model": dc.world_model_loss(model, batch, KEYS, args)[0]}

    return both(loss, model)


def bco0_loss() -> tuple[dict, dict]:
    torch.manual_seed(0)
    idm = bco0.StackNet(24, False, 2, 6)
    batch = {k: v[:2] for k, v in walker_batch(T=2, B=64).items()}
    return both(lambda: {"idm": bco0.idm_loss(idm, batch, keys=KEYS)[0]}, idm)


CASES: dict[str, Callable[[], tuple[dict, dict]]] = {
    "aime-phase1-aime": lambda: aime_phase1("aime"),
    "aime-phase1-dreamer": lambda: aime_phase1("dreamer"),
    "aime-phase2-aime": lambda: aime_phase2("aime"),
    "aime-phase2-dreamer": lambda: aime_phase2("dreamer"),
    "vmail": vmail_losses,
    "dreamer": dreamer_loss,
    "bco0-idm": bco0_loss,
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bf16_loss_is_within_tolerance_of_the_fp32_loss(case: str) -> None:
    fp32, bf16 = CASES[case]()
    for name, value in bf16.items():
        assert value.dtype == torch.float32, f"{name}: the loss left float32"
        error = abs(value.item() - fp32[name].item()) / max(abs(fp32[name].item()), 1e-3)
        assert error < TOLERANCE, f"{name}: bf16 {value.item()}, fp32 {fp32[name].item()}"


def test_bf16_runs_the_matrix_products_in_bfloat16_and_hands_on_float32() -> None:
    layer, seen = nn.Linear(8, 8), []
    mixed_precision("bf16", layer)
    mixed_precision("bf16", layer)  # once only: a second call adds no hook
    assert len(layer._forward_hooks) == 1
    x = torch.randn(4, 8)
    with autocast("bf16", CPU):
        out = layer(x)
        seen.append(torch.mm(x, layer.weight.T).dtype)  # what autocast makes of a product
    assert out.dtype == torch.float32 and seen == [torch.bfloat16]
    torch.testing.assert_close(out, layer(x), rtol=2e-2, atol=2e-2)
    assert not torch.equal(out, layer(x)), "the product did not run in bfloat16"


def test_training_in_bf16_lowers_the_loss_as_fp32_does() -> None:
    """AIME's phase 1 on a fixed batch, 150 Adam steps in each precision: the loss falls by a
    fifth in both, and they end within 1 % of each other."""
    ends = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model, cfg = aime.WorldModel(WALKER, 6, "aime", False), aime.resolve(aime.Args(obs="mdp"))
        mixed_precision(precision, model)
        opt, batch, losses = torch.optim.Adam(model.parameters(), 1e-3), walker_batch(), []
        for _ in range(150):
            with autocast(precision, CPU):
                loss, _ = aime.phase1_step(model, batch, KEYS, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert all(q.grad is not None and q.grad.dtype == torch.float32 for q in model.parameters())
        assert losses[-1] < 0.8 * losses[0], f"{precision}: {losses[0]:.1f} -> {losses[-1]:.1f}"
        ends[precision] = losses[-1]
    assert abs(ends["bf16"] - ends["fp32"]) < 0.01 * abs(ends["fp32"]), ends


def test_fp32_changes_nothing() -> None:
    torch.manual_seed(0)
    model, cfg = aime.WorldModel(WALKER, 6, "aime", False), aime.resolve(aime.Args(obs="mdp"))
    batch = walker_batch()
    before, _ = aime.phase1_step(model, batch, KEYS, cfg, sample=False)
    mixed_precision("fp32", model)
    assert not any(m._forward_hooks for m in model.modules())
    with autocast("fp32", CPU):
        after, _ = aime.phase1_step(model, batch, KEYS, cfg, sample=False)
    assert torch.equal(before, after)


def test_a_bf16_run_ends_and_resumes_only_in_bf16(data_dir: Path, tmp_path: Path) -> None:
    args: dict[str, Any] = dict(
        env="walker", task="walk", body_data="random", demo=str(data_dir / "walker-random"),
        obs="mdp", data_dir=str(data_dir), runs_dir=str(tmp_path), phase1_epochs=1,
        phase2_epochs=1, steps_per_epoch=2, batch_size=2, horizon=5, eval_episodes=1,
        eval_every=0, num_demos=2, precision="bf16",
    )  # fmt: skip
    results = aime.main(aime.Args(**args))
    assert results["args"]["precision"] == "bf16" and len(results["returns"]) == 1
    with pytest.raises(SystemExit, match=r"--precision 'bf16' \(now 'fp32'\)"):
        aime.main(aime.Args(**{**args, "precision": "fp32", "resume": True}))
