"""The world-model files aime.py reads and writes: its own world_model.pt, and the AIME authors'
published checkpoints, read into aime.py's networks; vmail_obs.py reads the encoder and RSSM of
either (`read_filter`), without aime.py.

aime.py's `world_model.pt` holds the model's `state_dict` and the settings it was made with (the
ones a run that loads it must share, the embodiment dataset, every flag). A file is read from disk
once per process (`read_model_file`), although a run asks for it twice: the embodiment dataset,
which names the run, and the weights.

The authors (github argmax-ai/aime) publish each world model as a folder holding `model.pt`, the
model's `state_dict`, and `config.yaml`, the Hydra config their training script wrote beside it;
their AIME script saves the policy's `state_dict` as `policy.pt`. `read_published` reads such a
folder: the layout, setting, embodiment and sizes come from `config.yaml`, and every parameter is
renamed to aime.py's `WorldModel`. What aime.py has no place for (the probe heads, the start-state
buffers, a reward decoder) is dropped, and named in a notice.

Facts from their code (`aime/models/ssm.py`, `base.py`, `policy.py`, `configs/`):
- `world_model.name` is `rssm` (the paper's layout, aime.py's "aime") or `rssmo` (the original
  Dreamer's, aime.py's "dreamer"); `state_dim` is [deter, stoch], `hidden_size` the width of the
  transition MLPs; `min_std: null` means their global 1e-6.
- Their prior and posterior each have one first layer over their whole input ([h] or [h, e]);
  `common/rssm.py::GaussianNet` holds it split by input, with the mean and std networks' first
  layers stacked, so those weights are cut and stacked here; the layers after it are renamed.
- `environment_setup` is mdp, lpomdp or visual; `env.embodiment` the body; `env.action_repeat`
  the environment steps per action.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from torch import Tensor, nn

from common.nets import LAYOUT_WIDTH, aime_encoder
from common.replay import save_torch
from common.rssm import LAYOUT_RSSM, RSSM, RSSMConfig
from common.run import RunArgs, check_settings, load_state, read_checkpoint

LAYOUTS = {"rssm": "aime", "rssmo": "dreamer"}
# their name -> ours, for every parameter that is only renamed (the layer index is kept); the prior
# and posterior are TRANSITION's.
RENAMES = [
    (r"memory_cell\.", "rssm.gru."),
    (r"pre_memory\.net\.", "rssm.pre_gru."),
    (r"encoders\.image\.net\.", "encoder.net."),
    (r"encoders\.tabular\.net\.", "encoder."),
    (r"decoders\.image\.net\.", "decoder_mean.image.net."),
    (r"decoders\.(\w+)\.(?:mu_net|net)\.net\.", r"decoder_mean.\1."),
    (r"decoders\.(\w+)\.std_net\.net\.", r"decoder_std.\1."),
    (r"idm\.mean_net\.net\.", "idm.mean."),
    (r"idm\.std_net\.net\.", "idm.std."),
]
UNUSED = re.compile(r"probes\.|initial_memory|initial_state|decoders\.reward\.")


@dataclass
class SavedModel:
    """A world model read from a file: the settings it was made with, its sizes (None: aime.py's
    defaults), its parameters in aime.py's names, and those aime.py does not use."""

    path: Path
    settings: dict[str, Any]
    state: dict[str, Tensor]
    rssm: Optional[RSSMConfig] = None
    width: Optional[int] = None  # tabular decoders' (and the Dreamer encoder's) width
    depth: int = 32  # the conv encoder's and decoder's width
    unused: list[str] = field(default_factory=list)  # e.g. their probe heads and buffers

    def load_into(self, model: nn.Module) -> None:
        """Load the parameters; a file made for other sizes is refused in one line."""
        load_state(self.path, model, self.state)


# == aime.py's world_model.pt ======================================================================
@dataclass(frozen=True)
class ModelSettings:
    """What a world model is made for: a run that loads one must share each of these (None:
    any; a model with an IDM serves a run without one)."""

    env: str
    obs: str
    action_repeat: int
    layout: Optional[str] = None
    use_idm: Optional[bool] = None


def save_world_model(
    path: Path, model: nn.Module, settings: ModelSettings, body_data: str, args: RunArgs
) -> None:
    """world_model.pt, written atomically: the parameters, the `settings` that a run loading it
    must share, the embodiment dataset it was trained on, and every flag of `args` (a dataclass,
    for the record)."""
    recorded = {**asdict(settings), "body_data": body_data, "args": asdict(args)}
    save_torch(path, {"settings": recorded, "model": model.state_dict()})
    print(f"world model saved to {path}")


def read_model_file(path: Path) -> dict[str, Any]:
    """A world_model.pt, read from disk once per process (a file rewritten since is read again)."""
    stat = path.stat() if path.is_file() else None
    return _read_model_file(path.resolve(), stat and (stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=1)
def _read_model_file(path: Path, version: Optional[tuple[int, int]]) -> dict[str, Any]:
    return read_checkpoint(path, "--world-model", "a world model (world_model.pt)", ["model"])


def trained_on(path: Path, env: str) -> Optional[str]:
    """The embodiment dataset a --world-model was trained on: the `--body-data` aime.py recorded
    in its world_model.pt, or the authors' config.yaml (walker-mix -> mix); None if unknown."""
    if is_published_form(path):
        return (published_setting(path, "embodiment_dataset_name") or "").removeprefix(
            f"{env}-"
        ) or None
    return recorded_setting(path, "body_data")


def layout_of(path: Path) -> Optional[str]:
    """The layout a --world-model was made in: the one aime.py recorded in its world_model.pt, or
    the authors' config.yaml (`world_model.name`: rssm -> aime, rssmo -> dreamer); None if
    unknown."""
    if is_published_form(path):
        return LAYOUTS.get(published_setting(path, "world_model.name") or "")
    return recorded_setting(path, "layout")


def recorded_setting(path: Path, key: str) -> Optional[str]:
    """A setting aime.py recorded in a world_model.pt; None where the file is missing (the
    reader says what is wrong with it) or records none."""
    if not path.is_file():
        return None
    value = read_model_file(path).get("settings", {}).get(key)
    return str(value) if value else None


def read_world_model(path: Path, wanted: ModelSettings) -> SavedModel:
    """The world model of --world-model, a world_model.pt or a published folder; refused in one
    line where it was made with settings other than `wanted`'s (those not None). A model with an
    IDM serves plain AIME too (where `wanted.use_idm` is not true, the IDM is dropped)."""
    check_folder_form(path)
    published = is_published_form(path)
    if published:
        saved = read_published(path)
    else:
        ckpt = read_model_file(path)  # files saved without action_repeat used 2
        saved = SavedModel(path, {"action_repeat": 2, **ckpt.get("settings", {})}, ckpt["model"])
    if not wanted.use_idm and saved.settings.get("use_idm"):
        saved.settings["use_idm"] = False
        saved.unused += [k for k in saved.state if k.startswith("idm.")]
    ours = {k: v for k, v in asdict(wanted).items() if v is not None}
    check_settings(path, saved.settings, ours)
    if saved.unused and published:
        groups = sorted({k.split(".")[0] + (".*" if "." in k else "") for k in saved.unused})
        print(f"notice: {path}: not used here, dropped: {', '.join(groups)}")
    saved.state = {k: v for k, v in saved.state.items() if k not in saved.unused}
    return saved


class Filter(nn.Module):
    """The part of a world model that filters observations into states: the encoder f(o_t) and
    the RSSM (what `vmail_obs.py` learns in; it neither decodes nor trains them)."""

    def __init__(self, encoder: nn.Module, rssm: RSSM) -> None:
        super().__init__()
        self.encoder, self.rssm = encoder, rssm


def read_filter(path: Path, wanted: ModelSettings, dims: dict[str, int], action_dim: int) -> Filter:
    """The encoder and RSSM of the world model of --world-model (`read_world_model`: refused if
    made for other settings than `wanted`), built in the layout and sizes the file holds (aime.py's
    defaults where it records none) and loaded from it. `dims`: the observation's sizes."""
    saved = read_world_model(path, wanted)
    layout = saved.settings["layout"]
    width = saved.width or LAYOUT_WIDTH[layout]
    encoder, embed_dim = aime_encoder(dims, layout, width, saved.depth)
    model = Filter(encoder, RSSM(action_dim, embed_dim, saved.rssm or LAYOUT_RSSM[layout]))
    part = {k: v for k, v in saved.state.items() if k.startswith(("encoder.", "rssm."))}
    load_state(path, model, part)
    return model


# == The authors' published form ===================================================================
def is_published_form(path: Path) -> bool:
    """A folder holding `model.pt` and `config.yaml`."""
    return (path / "model.pt").is_file() and (path / "config.yaml").is_file()


def check_folder_form(path: Path) -> None:
    """Refuse, in one line, a --world-model folder that is not in the published form."""
    if path.is_dir() and not is_published_form(path):
        raise SystemExit(f"error: --world-model {path} holds no model.pt and config.yaml; "
                         "give a world_model.pt or the authors' model folder")  # fmt: skip


def published_setting(folder: Path, dotted: str) -> Optional[str]:
    """A value of a published model's config.yaml (`embodiment_dataset_name`,
    `world_model.name`); None where it holds none or cannot be read."""
    try:
        node: Any = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return str(node) if node else None


# A prior/posterior parameter: (prior|posterior)_(mean|std|net).net.<layer>.<param>. Layer 0 is
# the first layer, cut and stacked below; the later ones go to `GaussianNet.rest`, which starts
# after the first layer, so their index moves down by one.
TRANSITION = re.compile(r"(prior|posterior)_(mean|std|net)\.net\.(\d+)\.(\w+)$")


def map_state_dict(theirs: dict[str, Tensor], deter: int) -> tuple[dict[str, Tensor], list[str]]:
    """Their world model's state_dict in aime.py's names, and the keys left unused."""
    ours: dict[str, Tensor] = {}
    first: dict[tuple[str, str], dict[str, Tensor]] = {}  # ("prior", "weight") -> {"mean": W, ...}
    unused = []
    for key, value in theirs.items():
        if UNUSED.match(key):
            unused.append(key)
            continue
        m = TRANSITION.match(key)
        if m is not None:
            which, net, layer, param = m.groups()
            if layer == "0":
                first.setdefault((which, param), {})[net] = value
            else:
                ours[f"rssm.{which}.rest.{int(net == 'std')}.{int(layer) - 1}.{param}"] = value
            continue
        for pattern, replacement in RENAMES:
            if re.match(pattern, key):
                ours[re.sub(pattern, replacement, key, count=1)] = value
                break
        else:
            unused.append(key)
    for (which, param), nets in first.items():  # first layers: mean and std stacked, cut h | e
        stacked = torch.cat([nets[n] for n in ("mean", "std", "net") if n in nets])
        ours[f"rssm.{which}.first_h.{param}"] = stacked[:, :deter] if param == "weight" else stacked
        if param == "weight" and stacked.shape[1] > deter:
            ours[f"rssm.{which}.first_e.weight"] = stacked[:, deter:]
    return ours, unused


def policy_parameter(name: str) -> str:
    """Their `TanhGaussianPolicy`'s parameter name in aime.py's `Policy` (mean_net.net.0.weight ->
    mean.0.weight)."""
    return re.sub(r"^(mean|std)_net\.net\.", r"\1.", name)


def load_policy(path: Path, policy: nn.Module) -> None:
    """Load their `TanhGaussianPolicy` state_dict (a policy.pt) into aime.py's `Policy`."""
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    policy.load_state_dict({policy_parameter(k): v for k, v in theirs.items()})


def _get(config: dict[str, Any], path: str, where: Path) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SystemExit(f"error: {where} has no `{path}`; is it the authors' config.yaml?")
        node = node[part]
    return node


def read_published(folder: Path) -> SavedModel:
    """Read a published world model folder (model.pt + config.yaml) into aime.py's form (their
    models all hold an IDM)."""
    config_path = folder / "config.yaml"
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as e:
        raise SystemExit(f"error: {config_path} is not valid YAML: {e}") from e
    name = _get(config, "world_model.name", config_path)
    if name not in LAYOUTS:
        raise SystemExit(f"error: {config_path}: world model `{name}`; aime.py reads rssm, rssmo")
    deter, stoch = _get(config, "world_model.state_dim", config_path)
    wm = config["world_model"]
    base = LAYOUT_RSSM[LAYOUTS[name]]
    rssm = replace(
        base,
        deter=int(deter),
        stoch=int(stoch),
        hidden=int(wm["hidden_size"]),
        layers=int(wm["hidden_layers"]) if name == "rssm" else base.layers,
        min_std=float(wm.get("min_std") or 1e-6),  # null: their global MIN_STD = 1e-6
    )
    width = int(_get(config, "world_model.decoders.tabular.hidden_size", config_path))
    encoder = wm.get("encoders", {}).get("tabular", {})
    if name == "rssmo" and int(encoder.get("hidden_size", width)) != width:
        raise SystemExit(f"error: {config_path}: encoder and decoder widths differ; unsupported")
    depth = int(wm.get("encoders", {}).get("visual", {}).get("width", 32))
    try:
        theirs = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, no traceback
        raise SystemExit(f"error: {folder / 'model.pt'} is not a readable state_dict: {e}") from e
    state, unused = map_state_dict(theirs, rssm.deter)
    settings = {
        "env": str(_get(config, "env.embodiment", config_path)),
        "obs": str(_get(config, "environment_setup", config_path)),
        "layout": LAYOUTS[name],
        "use_idm": True,
        "action_repeat": int(_get(config, "env.action_repeat", config_path)),
    }
    return SavedModel(folder, settings, state, rssm, width, depth, unused)
