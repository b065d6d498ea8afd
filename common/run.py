"""Run plumbing shared by the training scripts, so that each script's `main` is its algorithm.

A run lives in `{runs_dir}/{name}/`: TensorBoard events (with a table of the flags),
`checkpoint.pt` (every network, optimiser and random stream, written atomically after each
epoch or episode) and, when it ends, `results.json`. The rules:
  - a folder that holds a run already is refused unless `--resume` is passed;
  - `--resume` continues from the checkpoint only with the flags it was written with (the flags
    that differ are named), but for those annotated `FREE_ON_RESUME`; it refuses a folder that
    does not exist (a mistyped flag would start a new run), and starts from scratch in one
    killed before its first checkpoint;
  - `--resume-or-start` continues the run where there is one and starts it where there is none
    (for a command re-run until it finishes, as quickstart.sh does);
  - a non-finite loss stops the run and keeps the last good checkpoint.
A script's training loops are `for epoch in run.epochs(stage, n, parts, samplers):`; the
iterator keeps the books of a resumable run (`Run.epochs`), so that the loops hold none. Under
`--precision bf16` a training step's forward pass runs in `run.autocast()` (or `autocast`).
The evaluation (paired episodes, normalised scores) is `common/evaluation.py`'s.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_type_hints

import numpy as np
import torch
import tyro
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from common.replay import WindowSampler, atomic_write, remove_stale_temporaries, save_torch

Stateful = Union[torch.nn.Module, torch.optim.Optimizer]
Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class AtLeast:
    """A flag's least value, in its annotation (`batch_size: Annotated[int, POSITIVE] = 16`),
    checked by `check_flags` before anything runs."""

    least: int


POSITIVE, NONNEGATIVE = AtLeast(1), AtLeast(0)


@dataclass(frozen=True)
class FreeOnResume:
    """A flag's annotation (`total_steps: Annotated[int, FREE_ON_RESUME]`) saying that a resumed
    run may set it otherwise than the run it continues: how the run is logged or how long it
    goes on. Every other flag must be the checkpoint's (`Run`)."""


FREE_ON_RESUME = FreeOnResume()


def marked(args: RunArgs, mark: object) -> Iterator[tuple[str, Any]]:
    """(flag, mark) for each flag of `args` whose annotation holds a mark equal to `mark` or, for
    a class, an instance of it."""
    for flag, hint in get_type_hints(type(args), include_extras=True).items():
        for m in getattr(hint, "__metadata__", ()):
            if m == mark or (isinstance(mark, type) and isinstance(m, mark)):
                yield flag, m


def check_flags(args: RunArgs) -> None:
    """Refuse, in one line and before anything else runs, a flag out of its range: each flag
    annotated `AtLeast(n)` (POSITIVE, NONNEGATIVE) must be at least n, every learning rate (a
    flag named `lr` or `*_lr`) positive and finite, and `--device` a device this machine has."""
    for flag, at_least in marked(args, AtLeast):
        if (value := getattr(args, flag)) is not None and value < at_least.least:
            name = flag.replace("_", "-")
            raise SystemExit(f"error: --{name} must be at least {at_least.least}, not {value}")
    for field in fields(args):
        value = getattr(args, field.name)
        if (field.name == "lr" or field.name.endswith("_lr")) and not 0 < value < math.inf:
            name, what = field.name.replace("_", "-"), "a positive finite learning rate"  # not NaN
            raise SystemExit(f"error: --{name} must be {what}, not {value}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        what = "is not a torch device (cpu, cuda, cuda:1)"
        raise SystemExit(f"error: --device {args.device} {what}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device}, but torch finds no CUDA GPU; use cpu")


def derived(default: str, metavar: str) -> Any:
    """A tyro marker for an optional flag whose default follows from other flags or the data:
    its help says the default in words and shows `metavar`, not tyro's `None` and `{None}|`."""
    return tyro.conf.arg(metavar=metavar, help_behavior_hint=f"(default: {default})")


@dataclass
class RunArgs:
    """The flags of every training script's run: where data and runs live, seed, device, resume.
    Each script's `Args` extends this class with its algorithm's flags."""

    seed: int = 1
    """seed of torch, numpy, sampling and the environments"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device (cuda where one is available, else cpu)"""
    data_dir: str = "datasets"
    """folder that holds the datasets"""
    runs_dir: Annotated[str, FREE_ON_RESUME] = "runs"  # (a run folder may move)
    """results, TensorBoard logs and checkpoints go to {runs_dir}/{run_name}/"""
    cache_dir: Annotated[
        Optional[str], derived(".cache/ in each dataset folder", "PATH"), FREE_ON_RESUME
    ] = None
    """where the datasets' memory-mapped caches go (for datasets in read-only folders)"""
    resume: Annotated[bool, FREE_ON_RESUME] = False
    """continue the run in {runs_dir}/{run_name}/ from its last checkpoint (it must exist)"""
    resume_or_start: Annotated[bool, FREE_ON_RESUME] = False
    """continue the run in {runs_dir}/{run_name}/ where it exists, else start it"""
    capture_video: Annotated[bool, FREE_ON_RESUME] = False
    """save GIFs of evaluation episodes to {runs_dir}/{run_name}/videos/"""
    track: Annotated[bool, FREE_ON_RESUME] = False
    """also log to Weights & Biases (pip install -e ".[track]"; WANDB_MODE=offline: no account)"""
    wandb_project: Annotated[str, FREE_ON_RESUME] = "aime-imitation"
    """the Weights & Biases project of --track"""
    precision: Precision = "fp32"
    """bf16: training steps compute their matrix products and convolutions in bfloat16
    (torch.autocast), everything else (states, losses, optimiser) in float32; fp32: float32 only"""


# `--precision`: bf16 computes these layers in bfloat16 under `autocast`, the rest in float32
LOWERED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.GRUCell)  # what bf16 computes in bf16


def _float32(module: nn.Module, inputs: object, output: Tensor) -> Tensor:
    return output.float()


def mixed_precision(precision: Precision, *nets: nn.Module) -> None:
    """Prepare `nets` for `precision`, once, after they are built: for `bf16`, each linear,
    convolutional and GRU layer hands its output on in float32, so that under `autocast` only
    the matrix products and convolutions run in bfloat16 while the activations, the recurrent
    state, every loss, KL and log-density, the gradients and the optimiser states stay float32.
    `fp32` changes nothing."""
    if precision == "fp32":
        return
    for net in nets:
        for m in net.modules():
            if isinstance(m, LOWERED) and _float32 not in m._forward_hooks.values():
                m.register_forward_hook(_float32)


def autocast(precision: Precision, device: torch.device) -> AbstractContextManager[object]:
    """The context of a training step's forward pass (not its backward): `torch.autocast` to
    bfloat16 for `bf16` (on nets `mixed_precision` prepared), nothing for `fp32`."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def label(dataset: str) -> str:
    """A dataset's name in a run's folder name: the folder's name where `dataset` is a path."""
    return Path(dataset).name if Path(dataset).is_dir() else dataset


def rng_state(samplers: Sequence[WindowSampler]) -> dict[str, Any]:
    """Every random stream training draws from: torch's (CPU, CUDA) and each window sampler's."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "samplers": [s.rng.bit_generator.state for s in samplers],
    }


def set_torch_rng_state(state: Mapping[str, Any]) -> None:
    """Torch's streams (CPU, CUDA) as `rng_state` saved them; the samplers' are left alone."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def set_rng_state(state: Mapping[str, Any], samplers: Sequence[WindowSampler]) -> None:
    set_torch_rng_state(state)
    for sampler, s in zip(samplers, state["samplers"], strict=True):
        sampler.rng.bit_generator.state = s


def save_gif(path: Path, frames: Union[np.ndarray, Sequence[np.ndarray]]) -> None:
    """frames [T, H, W, 3] uint8 -> an animated GIF at 25 frames/s, written atomically."""
    from PIL import Image

    images = [Image.fromarray(np.asarray(f)) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path,
        lambda tmp: images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=40, loop=0
        ),
    )


def read_checkpoint(
    path: Path, flag: str, what: str, holds: Sequence[str], run: bool = False
) -> dict[str, Any]:
    """The checkpoint a flag names: a run's checkpoint (`run`, as agent.pt) or a file of one
    network (`what`, as world_model.pt), holding the entries `holds` the caller reads; refused
    in one line where it is missing, unreadable, the other kind, or lacks one of them."""
    if not path.is_file():
        problem = "is a folder" if path.exists() else "does not exist"
        raise SystemExit(f"error: {flag} {path} {problem}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which, no traceback
        raise SystemExit(f"error: {flag} {path} is not a checkpoint torch can read ({e})") from e
    is_run = isinstance(ckpt, dict) and "rng" in ckpt and "args" in ckpt
    if is_run != run or not isinstance(ckpt, dict) or any(k not in ckpt for k in holds):
        kind = "a run's checkpoint" if is_run else "something else"
        raise SystemExit(f"error: {flag} {path} is {kind}, not {what}")
    return ckpt


def check_settings(path: Path, saved: Mapping[str, Any], ours: Mapping[str, Any]) -> None:
    """Refuse a saved model made with other settings than this run's `ours`, naming each that
    differs."""
    clashes = {k: (saved.get(k), v) for k, v in ours.items() if saved.get(k) != v}
    if clashes:
        raise SystemExit(
            f"error: {path} was trained with other settings (checkpoint, this run): {clashes}"
        )


def load_state(path: Path, module: Stateful, state: dict[str, Any]) -> None:
    """`module.load_state_dict(state)`; a file made for other sizes is refused in one line."""
    try:
        module.load_state_dict(state)  # ValueError: an optimiser of other sizes
    except (RuntimeError, ValueError) as e:  # other sizes: the first mismatch, no traceback
        first = [line.strip() for line in str(e).splitlines()[1:]] or [str(e)]
        raise SystemExit(f"error: {path} does not fit this run's model: {first[0]}") from e


class Run:
    """The folder, TensorBoard writer and checkpoint of one run (module docstring).

    `resumed` holds the checkpoint a `--resume` continues from (None for a fresh run). Scripts
    whose training is epochs read none of it: `epochs` restores what each stage needs.
    `stages` lists the stages entered (the last is the one the last checkpoint was written in),
    `wall` the seconds spent in each.
    """

    def __init__(
        self,
        runs_dir: Union[str, Path],
        name: str,
        args: RunArgs,
        resume: bool = False,
        checkpoint_name: str = "checkpoint.pt",
    ) -> None:
        """`args` is the script's (resolved) flags dataclass: a resumed run must share every
        flag with the checkpoint but those marked `FREE_ON_RESUME`. A true
        `args.resume_or_start` acts as `resume` where the folder exists."""
        self.dir = Path(runs_dir) / name
        self.ckpt_path = self.dir / checkpoint_name
        self.args = asdict(args)
        if resume and not self.dir.is_dir():
            raise SystemExit(
                f"error: --resume: {self.dir} does not exist; check the flags that name the run, "
                "or drop --resume to start it"
            )
        resume = resume or bool(self.args.get("resume_or_start"))
        if (self.ckpt_path.exists() or (self.dir / "results.json").exists()) and not resume:
            other = ", or another --exp-name" if "exp_name" in self.args else ""
            raise SystemExit(
                f"error: {self.dir} holds a run already; pass --resume to continue it{other}"
            )
        self.resumed: Optional[dict[str, Any]] = None
        self.stages: list[str] = []
        self.wall: dict[str, float] = {}
        self.bar: Optional[tqdm] = None  # the progress bar of the stage under way
        if resume and self.ckpt_path.exists():
            ckpt = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
            free = {flag for flag, _ in marked(args, FREE_ON_RESUME)}
            shared = {*ckpt["args"], *self.args} - free
            theirs = {k: v for k, v in ckpt["args"].items() if k in shared}
            ours = {k: v for k, v in self.args.items() if k in shared}
            if theirs != ours:
                differ = sorted(k for k in {*theirs, *ours} if theirs.get(k) != ours.get(k))
                flags = ", ".join(
                    f"--{k.replace('_', '-')} {theirs.get(k)!r} (now {ours.get(k)!r})"
                    for k in differ
                )
                raise SystemExit(
                    f"error: {self.ckpt_path} was written with other flags: {flags}; "
                    "resume with the same flags"
                )
            self.resumed = ckpt
            state = ckpt.get("state")
            if isinstance(state, dict) and "stages" in state:  # written by `epochs`
                self.stages, self.wall = list(state["stages"]), dict(state["wall"])
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.dir)  # checkpoints whose write a kill cut short
        self.wandb: Any = None
        if self.args.get("track"):  # TensorBoard's scalars mirrored to W&B (CleanRL's --track)
            try:
                import wandb
            except ImportError:
                need = 'pip install -e ".[track]"'
                raise SystemExit(f"error: --track needs wandb, not installed: {need}") from None
            self.wandb = wandb.init(
                project=self.args.get("wandb_project"), name=name, config=self.args,
                dir=str(self.dir), sync_tensorboard=True, resume="allow", id=name,
            )  # fmt: skip
        self.writer = SummaryWriter(str(self.dir))
        self.writer.add_text(
            "hyperparameters",
            "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in self.args.items()),
        )

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint(
        self, state: dict[str, Any], samplers: Sequence[WindowSampler], **parts: Stateful
    ) -> None:
        """Write checkpoint.pt atomically: the flags, the progress `state`, every random stream
        (torch's and `samplers`') and the state dict of each of `parts`."""
        payload = {
            "args": self.args,
            "state": state,
            "rng": rng_state(samplers),
            **{k: p.state_dict() for k, p in parts.items()},
        }
        save_torch(self.ckpt_path, payload)

    def restore(self, **parts: Stateful) -> None:
        """Load each of `parts` from the resumed checkpoint (where it holds one)."""
        assert self.resumed is not None
        for k, p in parts.items():
            if self.resumed.get(k) is not None:
                p.load_state_dict(self.resumed[k])

    def epochs(
        self,
        stage: str,
        total: int,
        parts: Mapping[str, Stateful],
        samplers: Sequence[WindowSampler],
        desc: str = "",
        counters: Any = None,
    ) -> Iterator[int]:
        """The epochs 0 .. `total` - 1 of `stage`, each followed by a checkpoint of `parts`, every
        random stream (torch's and `samplers'`) and the loop's own `counters` (a dataclass
        instance, e.g. an early stop's best loss), with a progress bar (`self.bar`, `desc`) and
        the stage's wall time (`self.wall`). A loop that breaks ends its stage there. Under
        `--precision bf16` the networks among `parts` are prepared for `self.autocast`.

        On a resumed run: a stage the checkpoint had reached gets its `parts` back; the stage it
        was written in also gets its random streams and `counters` back and goes on from the
        next epoch; an earlier stage yields nothing. Code between two stages therefore runs
        again on a resumed run: what it changes in the later stage's `parts` is put back when
        that stage begins."""
        resumed, first = self.resumed, 0
        nets = [p for p in parts.values() if isinstance(p, nn.Module)]
        mixed_precision(self.args["precision"], *nets)  # bf16: ready for `self.autocast`
        if resumed is not None and not self.stages:  # a checkpoint of no stage: not `epochs`'
            raise SystemExit(
                f"error: {self.ckpt_path} records no training stage (an older checkpoint layout); "
                "start the run again in another folder (--exp-name) or remove it"
            )
        if resumed is not None and stage in self.stages:
            self.restore(**parts)
            if self.stages[-1] == stage:  # the stage the checkpoint was written in
                set_rng_state(resumed["rng"], samplers)
                for k, v in resumed["state"].get("counters", {}).items():
                    setattr(counters, k, v)
                first = resumed["state"]["epoch"]
                print(f"resuming {self.dir} at {stage}, epoch {first}")
            else:
                first = total  # finished before the checkpoint was written
        else:
            self.stages.append(stage)
        self.bar = tqdm(range(first, total), desc or stage, initial=first, total=total,
                        disable=first >= total)  # fmt: skip
        try:
            for epoch in self.bar:
                start = time.time()
                yield epoch
                self.wall[stage] = self.wall.get(stage, 0.0) + time.time() - start
                state = {"stages": self.stages, "epoch": epoch + 1, "wall": self.wall,
                         "counters": asdict(counters) if counters is not None else {}}  # fmt: skip
                self.checkpoint(state, samplers, **parts)
        finally:
            self.bar.close()

    def autocast(self) -> AbstractContextManager[object]:
        """The context of a training step's forward pass under the run's `--precision`."""
        return autocast(self.args["precision"], torch.device(self.args["device"]))

    def show(self, **values: object) -> None:
        """Show `values` beside the progress bar of the stage under way."""
        if self.bar is not None:
            self.bar.set_postfix(values)

    # -- training ----------------------------------------------------------------------------
    def check_finite(
        self, values: Union[Tensor, Mapping[str, float]], where: str, first_step: int = 0
    ) -> None:
        """Stop at a non-finite loss, keeping the last good checkpoint.

        `values` is either the loss of every gradient step of an epoch [N], the first of them
        step `first_step` of `where` (one host sync; the first bad step is named), or a mapping
        of metric means (the bad ones are named)."""
        if isinstance(values, Tensor):
            finite = torch.isfinite(values)
            if bool(finite.all()):
                return
            what = f"loss at {where} gradient step {first_step + int((~finite).nonzero()[0, 0])}"
        else:
            bad = sorted(k for k, v in values.items() if not math.isfinite(v))
            if not bad:
                return
            what = f"{', '.join(bad)} {where}"
        if self.ckpt_path.exists():
            kept = f"the last good checkpoint {self.ckpt_path} is kept"
        else:
            kept = "no checkpoint yet"
        raise SystemExit(f"error: non-finite {what}; {kept}")

    def video(self, name: str) -> Optional[Path]:
        """Where an evaluation's GIF `name` goes with --capture-video (None without it)."""
        return self.dir / "videos" / f"{name}.gif" if self.args.get("capture_video") else None

    def log_returns(self, returns: Sequence[float], step: int, expert: float = 0.0) -> None:
        """An evaluation's mean return, and with the `expert`'s return its normalised score."""
        self.writer.add_scalar("eval/return", np.mean(returns), step)
        if expert:
            self.writer.add_scalar("eval/normalised_score", 100 * np.mean(returns) / expert, step)

    def log(self, prefix: str, sums: Mapping[str, Tensor], n: int, step: int) -> dict[str, float]:
        """Average metrics summed over `n` steps (one host sync), write them to TensorBoard."""
        means = {k: float(v) / n for k, v in sums.items()}
        for k, v in means.items():
            self.writer.add_scalar(f"{prefix}/{k}", v, step)
        return means

    # -- the end -----------------------------------------------------------------------------
    def finish(self, results: dict[str, Any], step: int = 0) -> dict[str, Any]:
        """Write results.json atomically, log the final score, print it, close the writer."""
        results = {**results, "args": self.args}
        text = json.dumps(results, indent=2)
        atomic_write(self.dir / "results.json", lambda tmp: tmp.write_text(text))
        if "normalised_score" in results:
            self.writer.add_scalar("eval/final_normalised_score", results["normalised_score"], step)
            print(
                f"return {results['mean_return']:.1f} +- {results['std_return']:.1f} over "
                f"{len(results['returns'])} episodes; results in {self.dir}"
            )
            print(f"normalised score: {results['normalised_score']:.2f}")
        self.close()
        return results

    def close(self) -> None:
        """Flush and close the TensorBoard writer (and the W&B run of --track)."""
        self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def add_to(sums: dict[str, Tensor], metrics: Mapping[str, Tensor]) -> None:
    """Accumulate an iteration's metrics on the device (no host synchronisation)."""
    for k, v in metrics.items():
        sums[k] = v + sums[k] if k in sums else v
