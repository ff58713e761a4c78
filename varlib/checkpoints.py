"""Checkpoints: the released models, checking a state dict, downloading and loading weights.

The official weights (FoundationVision/VAR on the Hugging Face hub) are one tokenizer and five
transformers::

    name                file                      model
    vae_ch160v4096z32   vae_ch160v4096z32.pth     VQVAE (serves every resolution)
    var_d16 ... d30     var_d{16,20,24,30}.pth    VAR, 256 px, per-block AdaLN
    var_d36             var_d36.pth               VAR, 512 px, shared AdaLN

Typical use::

    vae, var = load_pair("var_d16")               # downloads into ~/.cache/varlib once
    vae, var = load_pair("var_d16", vae_path="vae_ch160v4096z32.pth", var_path="var_d16.pth")

Models are first built on the ``meta`` device (shapes only, nothing allocated, no random
init), then the file's tensors are *assigned* to them: loading d36 (2.35 B parameters) needs
the memory of the checkpoint once, not twice. The expected keys and shapes of every released
file are in ``manifests/released.json``, written from the specification by
``scripts/make_manifest.py`` (not from these modules, so the tests comparing the two mean
something).
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import os
import pickle
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .model import VAR, VARConfig
from .scales import PATCH_NUMS_256, PATCH_NUMS_512, check_patch_nums
from .vqvae import VQVAE, VQVAEConfig


def _short(names, n=8):
    names = sorted(names)
    more = f", ... ({len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def check_state_dict(model: nn.Module, state_dict: dict, what: str = "model") -> None:
    """Raise a ValueError naming every key that is missing, unexpected or of the wrong shape.

    ``nn.Module.load_state_dict`` reports the same things as a RuntimeError deep inside torch;
    this names the keys first and says what most likely happened (another configuration).
    """
    own = model.state_dict()
    missing = set(own) - set(state_dict)
    unexpected = set(state_dict) - set(own)
    wrong = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
             for k in sorted(set(own) & set(state_dict))
             if hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    # a tokenizer saved with another number of scales is fine (see VQVAE.load_state_dict)
    wrong = [w for w in wrong if not w.startswith("quantize.ema_vocab_hit_SV")
             or own["quantize.ema_vocab_hit_SV"].shape[1:] == state_dict["quantize.ema_vocab_hit_SV"].shape[1:]]
    if not (missing or unexpected or wrong):
        return
    lines = [f"the checkpoint does not fit this {what} (a checkpoint of another configuration?):"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_short(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_short(unexpected)}")
    if wrong:
        lines.append(f"  keys with another shape ({len(wrong)}): " + "; ".join(wrong[:8])
                     + (f"; ... ({len(wrong) - 8} more)" if len(wrong) > 8 else ""))
    raise ValueError("\n".join(lines))


# ------------------------------------------------------------------------ released models
HF_URL = "https://huggingface.co/FoundationVision/var/resolve/main/"


@dataclass(frozen=True)
class Released:
    """One released checkpoint: its file, the configuration it fits, and where to get it."""
    name: str
    file: str
    kind: str                       # "vae" (tokenizer) or "var" (transformer)
    config: VQVAEConfig | VARConfig
    tokenizer: str | None = None    # for a transformer: the released tokenizer it works with

    @property
    def url(self) -> str:
        return HF_URL + self.file


def _var_config(depth: int, shared_aln: bool, patch_nums) -> VARConfig:
    # The official builder (spec 3.1): width 64 * depth, depth heads (64 channels each),
    # drop path 0.1 * depth / 24, cosine attention; the tokenizer fixes V = 4096, Cvae = 32.
    return VARConfig.from_depth(depth, vocab_size=4096, z_channels=32, num_classes=1000, attn_l2_norm=True,
                                cond_drop_rate=0.1, shared_aln=shared_aln, patch_nums=patch_nums)


RELEASED: dict[str, Released] = {
    # the default VQVAEConfig *is* the released tokenizer (ch 160, V 4096, Cvae 32, 4 phis)
    "vae_ch160v4096z32": Released("vae_ch160v4096z32", "vae_ch160v4096z32.pth", "vae", VQVAEConfig()),
    **{f"var_d{d}": Released(f"var_d{d}", f"var_d{d}.pth", "var", _var_config(d, False, PATCH_NUMS_256),
                             tokenizer="vae_ch160v4096z32") for d in (16, 20, 24, 30)},
    "var_d36": Released("var_d36", "var_d36.pth", "var", _var_config(36, True, PATCH_NUMS_512),
                        tokenizer="vae_ch160v4096z32"),
}


def _entry(name: str) -> Released:
    if name not in RELEASED:
        raise ValueError(f"unknown released model {name!r}; the released models are {', '.join(RELEASED)}")
    return RELEASED[name]


def released_manifest(name: str) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of the released file ``name`` (from ``manifests/released.json``)."""
    _entry(name)
    text = resources.files(__package__).joinpath("manifests", "released.json").read_text()
    return {k: tuple(shape) for k, shape in json.loads(text)[name]}


class _LinspaceOnCPU(TorchFunctionMode):
    """Used inside ``torch.device("meta")``: keep ``torch.linspace`` on the CPU.

    VAR turns its drop-path schedule (a linspace) into a Python list, which a meta tensor
    cannot do; parameters and buffers are still created on the meta device.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.linspace and kwargs.get("device") is None:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


def build_released(name: str, device="meta", patch_nums=None) -> nn.Module:
    """The model of a released configuration, with fresh weights (none at all on ``meta``).

    ``patch_nums`` is for the tokenizer only: the same weights serve any pyramid, e.g.
    ``PATCH_NUMS_512`` for ``var_d36``. A transformer's scales are fixed by its checkpoint
    (``pos_1LC``, ``lvl_embed``, the mask), so for it only its own ``patch_nums`` is accepted.
    """
    entry = _entry(name)
    cfg = dataclasses.replace(entry.config)   # a copy: callers may edit it
    if patch_nums is not None:
        pns = check_patch_nums(patch_nums)
        if entry.kind == "var" and pns != cfg.patch_nums:
            raise ValueError(f"{name} was trained with patch_nums {cfg.patch_nums} (its checkpoint fixes the "
                             f"scales), got {pns}; only the tokenizer accepts other scales")
        cfg = dataclasses.replace(cfg, patch_nums=pns)
    cls = VQVAE if entry.kind == "vae" else VAR
    with torch.device(device), _LinspaceOnCPU():
        return cls(cfg)


# ----------------------------------------------------------------------------- downloading
def default_cache_dir() -> Path:
    """``$VARLIB_CACHE`` if set, else ``~/.cache/varlib``."""
    env = os.environ.get("VARLIB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "varlib"


class _Progress:
    """A byte counter shown with tqdm if it is installed, else as one line on stderr."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.enabled, self.done, self.shown, self.bar = total, desc, enabled, 0, -1, None
        if enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total or None, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            # rewrite the line at most once per percent (or per 10 MiB when the size is unknown)
            step = self.done * 100 // self.total if self.total else self.done >> 23
            if step != self.shown:
                self.shown = step
                of = f" / {self.total / 2**20:.1f} MiB ({step}%)" if self.total else " MiB"
                print(f"\r{self.desc}: {self.done / 2**20:.1f}{of}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


# what a failing connection raises (URLError also covers HTTP errors and missing file:// paths)
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def download(name: str, cache_dir=None, url: str | None = None, progress: bool = True) -> Path:
    """Download a released file into the cache folder (once) and return its path.

    ``cache_dir`` defaults to :func:`default_cache_dir`; ``url`` overrides the official one
    (a mirror, or a ``file://`` URL). An existing file is returned without touching the network.
    The bytes go to a temporary file in the same folder that is renamed into place only when
    complete, so an interrupted download never leaves a broken file under the final name.
    """
    entry = _entry(name)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = folder / entry.file
    if final.exists():
        return final
    url = url or entry.url
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{entry.file}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    total = int(response.headers.get("Content-Length") or 0)
                    bar = _Progress(total, entry.file, progress)
                    try:
                        while chunk := response.read(1 << 20):
                            out.write(chunk)
                            bar.update(len(chunk))
                    finally:
                        bar.close()
            except _NETWORK_ERRORS as e:
                raise ConnectionError(
                    f"could not download {name} from {url}: {e}. Without network access, download that file by "
                    f"hand (e.g. on another machine) and pass its path: load_released({name!r}, "
                    f"path='.../{entry.file}'), or load_pair(..., vae_path=..., var_path=...)") from e
            if total and bar.done != total:
                raise ConnectionError(f"the download of {url} stopped after {bar.done} of {total} bytes; "
                                      f"run it again (nothing was saved under {final})")
        os.replace(tmp, final)   # atomic within one folder
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


# -------------------------------------------------------------------------------- loading
def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def load_state_dict_file(path, which: str = "var") -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth`` file, on the CPU, without running pickled code.

    Accepts a plain state dict (the released files) or an official training checkpoint
    (``{"trainer": {"var_wo_ddp": ..., "vae_local": ...}, ...}``), from which ``which``
    ("var" or "vae") picks the transformer or the tokenizer.
    """
    entries = {"var": "var_wo_ddp", "vae": "vae_local"}
    if which not in entries:
        raise ValueError(f"which must be 'var' or 'vae', got {which!r}")
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} holds Python objects that safe loading (weights_only=True) refuses: {e}. If "
                         f"you trust the file, torch.load it with weights_only=False and pass the state dict "
                         f"to model.load_state_dict") from e
    if _is_state_dict(obj):
        return obj
    trainer = obj.get("trainer") if isinstance(obj, dict) else None
    if isinstance(trainer, dict) and _is_state_dict(trainer.get(entries[which])):
        return trainer[entries[which]]
    found = f"top-level keys {sorted(map(str, obj))[:20]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    raise ValueError(f"{path} holds neither a state dict nor a training checkpoint with "
                     f"trainer -> {entries[which]!r}: found {found}")


def _assign_weights(model: nn.Module, state_dict: dict) -> nn.Module:
    """Load ``state_dict`` into a model built on ``meta`` by assigning its tensors (strict).

    A wrong configuration raises the ValueError of :func:`check_state_dict`.
    """
    own = model.state_dict()
    # the official code copies into float32 modules; cast a half-precision file the same way
    state_dict = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() and own[k].is_floating_point() else v
                  for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    # What the file did not provide is still on meta: only the tokenizer's usage statistics,
    # when the file was saved with another number of scales. A fresh model has zeros there.
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            module, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module), attr, torch.zeros(buf.shape, dtype=buf.dtype))
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise ValueError(f"parameters not provided by the checkpoint: {_short(left)}")
    return model


def load_released(name: str, path=None, device="cpu", patch_nums=None, cache_dir=None) -> nn.Module:
    """A released model with its weights, in eval mode (``strict=True`` loading).

    ``path``: the downloaded ``.pth`` (plain or training checkpoint); without it the file is
    fetched with :func:`download` into ``cache_dir``. ``patch_nums``: tokenizer only, see
    :func:`build_released`. The tokenizer also gets ``requires_grad=False``: it is frozen in VAR.
    """
    entry = _entry(name)
    path = download(name, cache_dir=cache_dir) if path is None else path
    model = build_released(name, "meta", patch_nums)
    _assign_weights(model, load_state_dict_file(path, which=entry.kind))
    model = model.to(device).eval()
    if entry.kind == "vae":
        model.requires_grad_(False)
    return model


def load_pair(var_name: str, vae_path=None, var_path=None, device="cpu", cache_dir=None) -> tuple[VQVAE, VAR]:
    """``(tokenizer, transformer)`` of a released VAR, the tokenizer set to the transformer's scales."""
    entry = _entry(var_name)
    if entry.kind != "var":
        raise ValueError(f"load_pair needs a transformer name, one of "
                         f"{', '.join(n for n, e in RELEASED.items() if e.kind == 'var')}; got {var_name!r}")
    var = load_released(var_name, var_path, device, cache_dir=cache_dir)
    vae = load_released(entry.tokenizer, vae_path, device, patch_nums=var.cfg.patch_nums, cache_dir=cache_dir)
    return vae, var


# ------------------------------------------------------------------- training checkpoints
# Written by varlib.train and varlib.shipped: a dict with the model configuration, weights and
# (for training) optimiser and RNG state, readable with weights_only=True.
CHECKPOINT_FORMAT = 1


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """Write atomically: a temporary file in the same folder, flushed, then renamed over ``path``.

    A run killed half-way through a save leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:    # not a torch file, truncated, or holding more than tensors and containers
        raise ValueError(f"{path} is not a varlib training checkpoint: {type(e).__name__}: {str(e)[:200]}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt:
        raise ValueError(f"{path} is not a varlib training checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def model_from_checkpoint(path_or_ckpt, device="cpu"):
    """Rebuild the model a checkpoint describes and load its weights: VQVAE or VAR, eval mode."""
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    cls, cfg_cls = (VQVAE, VQVAEConfig) if ckpt["kind"] == "tokenizer" else (VAR, VARConfig)
    model = cls(cfg_cls(**ckpt["model_config"]))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()})
    return model.to(device).eval()
