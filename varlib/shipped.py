"""The book's trained models, shipped with the package: export, load, describe.

A *shipping file* is a training checkpoint (``varlib.train``) without what only training needs
(optimiser state, RNG state, history): the weights in float16 (integer buffers as they are),
the configurations, and how the file was made::

    {"format": 1, "shipped": 1, "kind": "tokenizer" | "var", "model": {name: tensor},
     "model_config": {...}, "train_config": {...}, "command": "python -m varlib.train ...",
     "seed": int, "step": int, "metrics": {...}, "classes": [names] | None}

It loads with ``torch.load(path, weights_only=True)``, and ``varlib.train.load_checkpoint`` /
``model_from_checkpoint`` accept it too (so a shipped tokenizer can serve as ``--tokenizer`` of a
VAR run). A pair is two files in ``varlib/pretrained_models/``: ``{name}_tokenizer.pt`` and
``{name}_var.pt``; the class names live in the VAR file.

Typical use::

    from varlib.shipped import pretrained, pretrained_info
    vae, var = pretrained("emoji32")          # float32, eval mode, tokenizer frozen
    pretrained_info("emoji32")["var"]["command"]
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .model import VAR
from .checkpoints import load_checkpoint, model_from_checkpoint, save_checkpoint
from .vqvae import VQVAE

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained_models"
SHIP_FORMAT = 1
PARTS = ("tokenizer", "var")


# ----------------------------------------------------------------------------------- export
def export(checkpoint_path: str | os.PathLike, dest_path: str | os.PathLike, command: str,
           metrics: dict | None = None, classes: list[str] | None = None) -> Path:
    """Write the shipping file of a training checkpoint to ``dest_path`` (atomically).

    command: the exact command line that trained it (with the seed it used, recorded too).
    metrics: held-out figures to ship with it (JSON-like: numbers, strings, lists, dicts).
    classes: the class names, label order (a VAR: one per class of the model).
    Returns ``dest_path`` as a Path.
    """
    ckpt = load_checkpoint(checkpoint_path)
    if not isinstance(command, str) or not command.strip():
        raise ValueError(f"command must be the non-empty command line that trained {checkpoint_path}, got {command!r}")
    if metrics is not None:
        if not isinstance(metrics, dict):
            raise ValueError(f"metrics must be a dict or None, got {type(metrics).__name__}")
        try:   # plain Python types only, so that weights_only loading accepts them
            metrics = json.loads(json.dumps(metrics))
        except (TypeError, ValueError) as e:
            raise ValueError(f"metrics must hold only numbers, strings, lists and dicts: {e}") from None
    if classes is not None:
        classes = [str(c) for c in classes]
        n = ckpt["model_config"].get("num_classes")
        if ckpt["kind"] == "var" and len(classes) != n:
            raise ValueError(f"classes has {len(classes)} names but the VAR in {checkpoint_path} has {n} classes")
    weights = {}
    for k, v in ckpt["model"].items():
        if v.is_floating_point():
            half = v.to(torch.float16)
            overflow = torch.isinf(half) & torch.isfinite(v)
            if overflow.any():
                raise ValueError(f"{k} does not fit in float16: {overflow.sum().item()} values beyond "
                                 f"+-65504 (largest {v[overflow].abs().max().item():.4g})")
            weights[k] = half
        else:
            weights[k] = v.clone()
    obj = {"format": ckpt["format"], "shipped": SHIP_FORMAT, "kind": ckpt["kind"], "model": weights,
           "model_config": ckpt["model_config"], "train_config": ckpt["train_config"], "command": command,
           "seed": ckpt["train_config"]["seed"], "step": ckpt["step"], "metrics": metrics or {}, "classes": classes}
    save_checkpoint(obj, dest_path)
    return Path(dest_path)


# ----------------------------------------------------------------------------------- loading
def available(root: str | os.PathLike | None = None) -> list[str]:
    """Names of the complete pairs (tokenizer and VAR file) in ``root`` (default: the package's)."""
    root = Path(root or PRETRAINED_DIR)
    suffix = "_tokenizer.pt"
    names = [p.name[:-len(suffix)] for p in root.glob(f"*{suffix}")]
    return sorted(n for n in names if (root / f"{n}_var.pt").is_file())


def pair_paths(name: str = "emoji32", root: str | os.PathLike | None = None) -> dict[str, Path]:
    """``{"tokenizer": Path, "var": Path}`` of a shipped pair; FileNotFoundError if one is missing."""
    if not isinstance(name, str) or not name or "/" in name or os.sep in name:
        raise ValueError(f"name must be a pretrained model name such as 'emoji32', got {name!r}")
    root = Path(root or PRETRAINED_DIR)
    paths = {part: root / f"{name}_{part}.pt" for part in PARTS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        names = available(root)
        have = f"available: {names}" if names else f"none is shipped in {root} yet"
        raise FileNotFoundError(f"no pretrained model {name!r}: missing {', '.join(missing)}; {have}")
    return paths


def load_shipped(path: str | os.PathLike, kind: str, device="cpu"):
    """A model from a shipping file or a training checkpoint of ``kind``: float32, eval mode.

    Returns ``(model, ckpt)``, ckpt being the file's dict (weights included).
    """
    ckpt = load_checkpoint(path)
    if ckpt["kind"] != kind:
        raise ValueError(f"{path} holds a {ckpt['kind']} model, expected a {kind} model")
    return model_from_checkpoint(ckpt, device=device), ckpt


def load_models(tokenizer_path, var_path, device="cpu") -> tuple[VQVAE, VAR]:
    """The (tokenizer, VAR) of two files (shipping files or training checkpoints), checked to fit.

    Both in eval mode and float32; the tokenizer is frozen (``requires_grad`` False).
    """
    vae, _ = load_shipped(tokenizer_path, "tokenizer", device)
    var, _ = load_shipped(var_path, "var", device)
    for p in vae.parameters():
        p.requires_grad_(False)
    t, v = vae.cfg, var.cfg
    if (t.vocab_size, t.z_channels, t.patch_nums) != (v.vocab_size, v.z_channels, v.patch_nums):
        raise ValueError(f"{var_path} (V={v.vocab_size}, Cvae={v.z_channels}, scales {v.patch_nums}) was not "
                         f"trained on {tokenizer_path} (V={t.vocab_size}, Cvae={t.z_channels}, scales {t.patch_nums})")
    return vae, var


def pretrained(name: str = "emoji32", device="cpu", root: str | os.PathLike | None = None) -> tuple[VQVAE, VAR]:
    """The shipped (tokenizer, VAR) pair ``name``: float32, eval mode, tokenizer frozen.

    root: the folder of the files (default ``varlib/pretrained_models``).
    """
    paths = pair_paths(name, root)
    return load_models(paths["tokenizer"], paths["var"], device)


def pretrained_info(name: str = "emoji32", root: str | os.PathLike | None = None) -> dict:
    """What a shipped pair records, without building the models.

    ``{"name", "classes", "tokenizer": {...}, "var": {...}}``; each part holds ``path``,
    ``file_bytes`` and the file's metadata (``command``, ``seed``, ``step``, ``metrics``,
    ``model_config``, ``train_config``, ``classes``, ...): everything but the weights.
    """
    info = {"name": name}
    for part, path in pair_paths(name, root).items():
        ckpt = load_checkpoint(path)
        meta = {k: v for k, v in ckpt.items() if k != "model"}
        info[part] = {"path": str(path), "file_bytes": path.stat().st_size, **meta}
    info["classes"] = info["var"].get("classes")
    return info
