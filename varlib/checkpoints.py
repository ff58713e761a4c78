"""Checkpoints: checking a state dict against a model before loading it.

(Released configurations, download and loading helpers are added below this part.)
"""
from __future__ import annotations

import torch.nn as nn


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
