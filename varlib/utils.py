"""Small helpers shared by the notebooks, the tests and the command-line tools."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int = 0, threads: int | None = 1) -> torch.Generator:
    """Seed Python, numpy and torch, and fix the thread count; returns a seeded CPU generator.

    CPU results are bitwise reproducible for a fixed thread count, but not across thread
    counts (the reduction order changes), hence ``threads``.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)
