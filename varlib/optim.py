"""The official VAR optimisation recipe: parameter groups and learning-rate / weight-decay schedules.

* Weight decay only for matrices: every 1-D tensor, every bias and the embeddings of positions,
  levels and temperatures are exempt (``param_groups``).
* Learning rate: linear warm-up from ``wp0 * peak``, then one of several decays to ``wpe * peak``
  (``lr_factor``); weight decay follows a half cosine from ``wd`` to ``wd_end`` over the whole run
  (``wd_at``). ``training.pt`` in the parity fixtures tabulates the official values.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

# Names whose parameters never get weight decay (besides 1-D tensors and biases).
NO_WD_KEYS = ("cls_token", "start_token", "task_token", "cfg_uncond", "pos_embed", "pos_1LC", "pos_start",
              "start_pos", "lvl_embed", "gamma", "beta", "ada_gss", "moe_bias", "scale_mul")


def param_groups(model: nn.Module, no_wd_keys=NO_WD_KEYS) -> list[dict]:
    """Two AdamW groups: ``wd_sc = 0`` (no decay) and ``wd_sc = 1``; each dict also holds ``names``."""
    groups = {0.0: {"params": [], "names": [], "wd_sc": 0.0, "lr_sc": 1.0},
              1.0: {"params": [], "names": [], "wd_sc": 1.0, "lr_sc": 1.0}}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim == 1 or name.endswith("bias") or any(k in name for k in no_wd_keys)
        g = groups[0.0 if exempt else 1.0]
        g["params"].append(p)
        g["names"].append(name)
    return [g for g in groups.values() if g["params"]]


def lr_factor(sche: str, it: int, wp_it: float, max_it: int, wp0: float = 0.005, wpe: float = 0.01) -> float:
    """Learning rate at iteration ``it`` as a fraction of the peak.

    Warm-up: ``wp0 -> 1`` linearly over ``wp_it`` iterations. Then, with progress ``p`` from 0 to 1
    over the remaining iterations: ``cos`` (half cosine to wpe), ``lin`` / ``lin0`` (flat for the
    first 15% / 5%, then linear to wpe), ``lin00`` (linear from the start), ``linT`` for a float T
    (linear to a mid value over [0, T), then linear to wpe), ``exp`` (flat 15%, then exponential).
    """
    wp_it = round(wp_it)
    if it < wp_it:
        return wp0 + (1 - wp0) * it / wp_it
    p = (it - wp_it) / max(max_it - 1 - wp_it, 1)    # max: a run whose decay phase is a single step
    rest = 1 - p
    if sche == "cos":
        return wpe + (1 - wpe) * (0.5 + 0.5 * math.cos(math.pi * p))
    if sche in ("lin", "lin0", "exp"):
        flat = 0.05 if sche == "lin0" else 0.15
        if p < flat:
            return 1.0
        if sche == "exp":
            return math.exp((p - flat) / (1 - flat) * math.log(wpe))
        return wpe + (1 - wpe) * rest / (1 - flat)
    if sche == "lin00":
        return wpe + (1 - wpe) * rest
    if sche.startswith("lin"):
        T = float(sche[3:])
        mid = (1 + wpe + (1 - wpe) * (1 - T)) / 2     # half-way between 1 and where 'lin00' would be at T
        if p < T:
            return 1 + (mid - 1) * p / T
        return wpe + (mid - wpe) * rest / (1 - T)
    raise ValueError(f"unknown schedule {sche!r}: use cos, lin, lin0, lin00, linT (T a float, e.g. lin0.8) or exp")


def wd_at(it: int, max_it: int, wd: float, wd_end: float) -> float:
    """Weight decay at iteration ``it``: half cosine from ``wd`` to ``wd_end``."""
    return wd_end + (wd - wd_end) * (0.5 + 0.5 * math.cos(math.pi * it / max(max_it - 1, 1)))


def apply_schedule(opt: torch.optim.Optimizer, it: int, *, peak_lr: float, wd: float, wd_end: float,
                   wp_it: float, max_it: int, sche: str = "lin0", wp0: float = 0.005, wpe: float = 0.01):
    """Write this iteration's lr and weight decay into every group (scaled by its lr_sc / wd_sc)."""
    lr = peak_lr * lr_factor(sche, it, wp_it, max_it, wp0, wpe)
    w = wd_at(it, max_it, wd, wd_end)
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_sc", 1.0)
        g["weight_decay"] = w * g.get("wd_sc", 1.0)
    return lr, w
