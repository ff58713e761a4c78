"""The token pyramid: scale sizes, token ranges, scale ids and the scale-causal mask.

VAR turns an image into S square token maps of sides ``patch_nums = (pn_0, ..., pn_{S-1})``
(for 256 px: 1, 2, 3, 4, 5, 6, 8, 10, 13, 16). Flattened row-major and concatenated, they
form one sequence of ``L = sum(pn_k ** 2)`` tokens (680 for 256 px). Everything about
*where* a token sits in that sequence lives here, so the quantizer, the transformer and the
sampler agree on it.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
PATCH_NUMS_1024 = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)


def check_patch_nums(patch_nums, latent_size: int | None = None) -> tuple[int, ...]:
    """Validate a list of scale sides and return it as a tuple of ints.

    The sides must be positive integers in strictly increasing order; if ``latent_size``
    is given, the last side must equal it (the finest token map *is* the latent grid).
    """
    try:
        pns = tuple(int(p) for p in patch_nums)
    except (TypeError, ValueError):
        raise ValueError(f"patch_nums must be a sequence of positive integers, got {patch_nums!r}") from None
    if len(pns) == 0 or any(p != q for p, q in zip(pns, patch_nums)):
        raise ValueError(f"patch_nums must be a non-empty sequence of integers, got {patch_nums!r}")
    if pns[0] < 1:
        raise ValueError(f"patch_nums must be positive, got {pns}")
    if any(b <= a for a, b in zip(pns, pns[1:])):
        raise ValueError(f"patch_nums must be strictly increasing, got {pns}")
    if latent_size is not None and pns[-1] != latent_size:
        raise ValueError(
            f"the last scale of patch_nums {pns} must equal the latent size {latent_size} "
            f"(image side / downsampling factor)")
    return pns


def token_counts(patch_nums) -> list[int]:
    """Tokens per scale, ``[pn_k ** 2]``."""
    return [p * p for p in patch_nums]


def begin_ends(patch_nums) -> list[tuple[int, int]]:
    """``[(begin_k, end_k)]``: the slice of the flat sequence that holds scale k."""
    out, start = [], 0
    for n in token_counts(patch_nums):
        out.append((start, start + n))
        start += n
    return out


def scale_ids(patch_nums) -> torch.Tensor:
    """The scale index of every token, shape ``(L,)``, int64: 0 for the first token, ..."""
    return torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(token_counts(patch_nums))])


def scale_causal_mask(patch_nums) -> torch.Tensor:
    """Boolean ``(L, L)`` mask, True where query token i may attend to key token j.

    A token sees every token of its own scale and of all coarser scales, and nothing finer:
    ``allowed[i, j] = scale(i) >= scale(j)``. Within a scale there is no causal order,
    because all tokens of a scale are predicted at once.
    """
    d = scale_ids(patch_nums)
    return d[:, None] >= d[None, :]


def scale_causal_bias(patch_nums) -> torch.Tensor:
    """The same mask as an additive attention bias, ``(1, 1, L, L)`` float32, 0 or -inf."""
    allowed = scale_causal_mask(patch_nums)
    bias = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, float("-inf"))
    return bias[None, None]


@lru_cache(maxsize=None)
def phi_indices(num_scales: int, num_phis: int) -> tuple[int, ...]:
    """Which of ``num_phis`` refiner convolutions each of ``num_scales`` scales uses.

    Scale si sits at position ``si / (S - 1)`` in [0, 1]; the K refiners sit at evenly spread
    "ticks" and each scale takes the nearest one. The official code computes this in float64
    with numpy, and for S = 10, K = 4 two scales lie exactly half-way between two ticks: only
    the same float64 arithmetic picks the same refiner, so we do exactly that here.
    """
    if num_scales < 2:
        # one scale: position si / (S - 1) is undefined; the only sensible refiner is the first
        return (0,) * num_scales
    k = num_phis
    margin = 1 / (3 * k) if k == 4 else 1 / (2 * k)  # the official K == 4 special case
    ticks = np.linspace(margin, 1 - margin, k)
    return tuple(int(np.argmin(np.abs(ticks - si / (num_scales - 1)))) for si in range(num_scales))
