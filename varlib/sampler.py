"""Next-scale sampling with a KV cache and classifier-free guidance, and zero-shot editing.

One step per scale: the transformer reads the current scale's input (the start token, then the
running reconstruction downsampled to the scale's side), attends to the cached keys/values of
all coarser scales, and predicts every token of the scale at once. The drawn codes are added
to the reconstruction ``f_hat`` and the next input is made from it.

Guidance (``cfg = w``) follows the official linear ramp over scales: at scale si with
``t = w * si / (S - 1)`` the logits are ``(1 + t) * cond - t * uncond``, so the first scale is
unguided and the last gets weight ``1 + w``.

Two ways to draw tokens:

* ``exact=True`` makes the same random calls as the official sampler (filter all V logits in
  place, then one ``torch.multinomial`` over the full (B * l, V) matrix), so the same seed gives
  the same images as the official code.
* the default draws from the same distribution more cheaply: it keeps only the top-k logits
  (exactly k of them, ties at the k-th value are not kept), applies top-p on those, and samples
  by inverse CDF with one uniform number per token. Same distribution, different random stream.

Shape legend: B batch, l tokens of one scale, V vocabulary, Cv latent channels, pn scale side.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .model import VAR, KVCache
from .vqvae import VQVAE


# ------------------------------------------------------------------------------ primitives
def filter_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Set filtered-out logits to -inf IN PLACE (official semantics) and return them.

    top-k keeps every entry not smaller than the k-th largest of its row (ties survive);
    top-p sorts a row ascending and removes the entries whose cumulative probability is
    <= 1 - top_p, never the largest one. top-k runs first. 0 disables a filter.
    """
    if top_k > 0:
        kth = logits_BlV.topk(top_k, dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -math.inf)
    if top_p > 0:
        sorted_logits, order = logits_BlV.sort(dim=-1, descending=False)
        drop_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        logits_BlV.masked_fill_(drop_sorted.scatter(order.ndim - 1, order, drop_sorted), -math.inf)
    return logits_BlV


def sample_top_k_top_p(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                       generator: torch.Generator | None = None, num_samples: int = 1) -> torch.Tensor:
    """Filter (in place) and draw, exactly as the official helper: (B, l, V) -> (B, l, |num_samples|).

    One ``torch.multinomial`` call on the (B * l, V) softmax; with replacement unless
    ``num_samples`` is negative.
    """
    B, l, V = logits_BlV.shape
    filter_top_k_top_p_(logits_BlV, top_k, top_p)
    probs = logits_BlV.softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs, abs(num_samples), replacement=num_samples >= 0,
                             generator=generator).view(B, l, abs(num_samples))


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, dim: int = -1,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel-softmax whose noise comes from ``generator`` (``-log`` of Exponential(1) draws).

    With ``hard=True`` the forward value is the one-hot of the argmax and gradients flow
    through the soft weights (straight-through).
    """
    gumbels = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_(
        generator=generator).log()
    y_soft = ((logits + gumbels) / tau).softmax(dim)
    if not hard:
        return y_soft
    index = y_soft.argmax(dim, keepdim=True)
    y_hard = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft


def draw_fast(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row among the top-k only: (B, l, V) -> (B, l). Does not modify the input.

    Works on k columns instead of V, and draws by inverse CDF with one uniform number per
    token instead of V exponential numbers. Same distribution as the official filter+draw
    (up to ties at the k-th value), different random stream.
    """
    B, l, V = logits_BlV.shape
    x_NV = logits_BlV.reshape(-1, V)
    if 0 < top_k < V:
        vals, ids = x_NV.topk(top_k, dim=-1, largest=True, sorted=True)         # (N, k), descending
    elif top_p > 0:
        vals, ids = x_NV.sort(dim=-1, descending=True)
    else:
        vals, ids = x_NV, None
    probs = vals.softmax(dim=-1)
    if top_p > 0:
        # drop an entry when the larger ones already hold >= top_p of the mass (the largest stays)
        larger_mass = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(larger_mass >= top_p, 0.0)
    cdf = probs.cumsum_(dim=-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    pick = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)
    idx = pick if ids is None else ids.gather(1, pick)
    return idx.view(B, l)


# ---------------------------------------------------------------------------------- editing
def box_mask(size: int, box, inpainting: bool) -> torch.Tensor:
    """Binary (size, size) mask on the last-scale grid: 1 = keep the reference token.

    ``box = (y0, x0, y1, x1)`` in fractions of the grid; rows ``round(y0 size) .. round(y1 size) - 1``
    (Python's round: halves go to even, as in the official demo). Out-painting keeps the box;
    in-painting keeps everything else and regenerates the box.
    """
    y0, x0, y1, x1 = box
    if not (0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1):
        raise ValueError(f"box must be (y0, x0, y1, x1) with 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1, got {box}")
    m = torch.zeros(size, size)
    m[round(y0 * size):round(y1 * size), round(x0 * size):round(x1 * size)] = 1
    return 1 - m if inpainting else m


@dataclass
class EditSpec:
    """Zero-shot editing: keep the reference tokens where ``keep_mask`` is 1, generate the rest.

    ``ref_idx``: token maps of the reference images (``VQVAE.img_to_idx``), S tensors (B, pn^2);
    ``keep_mask``: (h, w) on the last-scale grid (see :func:`box_mask`).
    """
    ref_idx: list
    keep_mask: torch.Tensor

    def scale_mask(self, pn: int) -> torch.Tensor:
        """The mask at a pn x pn scale, (1, 1, pn, pn) bool: bilinear resize, then > 0.5.

        The coarsest scales (at most 3 tokens) always keep the reference: they fix the layout.
        """
        if pn * pn <= 3:
            return torch.ones(1, 1, pn, pn, dtype=torch.bool, device=self.keep_mask.device)
        m = F.interpolate(self.keep_mask.float()[None, None], size=(pn, pn), mode="bilinear", align_corners=False)
        return m > 0.5


# ---------------------------------------------------------------------------------- sampler
@dataclass
class SampleOutput:
    labels: torch.Tensor                  # (B,) class ids of the conditional half
    idx_per_scale: list                   # S tensors (B, pn^2): the drawn tokens
    f_hat: torch.Tensor                   # (B, Cv, h, w): final accumulated latent
    images: torch.Tensor | None = None    # (B, 3, H, W) in [0, 1] (None with decode=False)
    fhat_per_scale: list = field(default_factory=list)        # return_steps: f_hat after each scale
    h_per_scale: list = field(default_factory=list)           # return_steps: embeddings added per scale
    raw_logits_per_scale: list = field(default_factory=list)  # return_steps: logits before guidance
    # (2B rows with guidance: conditional half first, then the null class; B rows without)


def _resolve_labels(var: VAR, B, labels, generator, device) -> torch.Tensor:
    nc = var.num_classes
    if labels is None:
        uniform = torch.full((1, nc), 1.0 / nc, device=device)
        return torch.multinomial(uniform, B, replacement=True, generator=generator).reshape(B)
    if isinstance(labels, int):
        if labels > nc:
            raise ValueError(f"class label {labels} is out of range: use 0..{nc - 1}, {nc} or a negative "
                             f"number for the null class")
        return torch.full((B,), nc if labels < 0 else labels, dtype=torch.long, device=device)
    labels = torch.as_tensor(labels, device=device)
    if labels.shape != (B,):
        raise ValueError(f"labels must have shape (B,) = ({B},), got {tuple(labels.shape)}")
    var.check_labels(labels)
    return labels.long()


def _check_args(var: VAR, B, cfg, top_k, top_p):
    if not isinstance(B, int) or B < 1:
        raise ValueError(f"batch size B must be a positive integer, got {B!r}")
    if not (isinstance(cfg, (int, float)) and math.isfinite(cfg) and cfg >= 0):
        raise ValueError(f"cfg (guidance strength) must be a finite number >= 0, got {cfg!r}")
    V = var.cfg.vocab_size
    if not isinstance(top_k, int) or not 0 <= top_k <= V:
        raise ValueError(f"top_k must be an integer in [0, {V}] (0 = off), got {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0 <= top_p < 1):
        raise ValueError(f"top_p must be in [0, 1) (0 = off), got {top_p!r}")


@torch.no_grad()  # not inference_mode: its tensors could not be used later in autograd code
def sample(var: VAR, vae: VQVAE, B: int, labels=None, cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0,
           more_smooth: bool = False, seed: int | None = None, generator: torch.Generator | None = None,
           exact: bool = False, use_cache: bool = True, decode: bool = True, return_steps: bool = False,
           edit: EditSpec | None = None, uncond_half: bool | None = None) -> SampleOutput:
    """Generate B images, one scale per step.

    Args:
        labels: a (B,) tensor of class ids, an int (a negative one means the null class, i.e.
            unconditional), or None to draw labels uniformly from the generator.
        cfg: guidance strength w >= 0 (ramped linearly over scales, see the module docstring).
            With ``cfg == 0`` the unconditional half is not run at all.
        top_k, top_p: filters (0 = off). more_smooth: use a Gumbel-softmax weighted mix of codes
            instead of the drawn code (sharper at coarse scales, smoother at fine ones).
        seed / generator: a seed for a fresh generator, or a generator; neither = global RNG.
        exact: reproduce the official random stream (see module docstring). ``more_smooth``
            always uses the official draw, since it needs the fully filtered logits anyway.
        use_cache: False runs the whole prefix through the masked forward at every scale (slow
            reference path; same result).
        decode: False returns only tokens and f_hat (no tokenizer decoder).
        return_steps: also return f_hat, embeddings and raw logits of every scale.
        edit: zero-shot in-/out-painting (:class:`EditSpec`).
        uncond_half: run the null-class half of the batch. None (default): only when cfg > 0.
            True forces it even at cfg = 0, as the official sampler always does (for comparisons).
    """
    _check_args(var, B, cfg, top_k, top_p)
    if var.cfg.vocab_size != vae.cfg.vocab_size or var.cfg.z_channels != vae.cfg.z_channels:
        raise ValueError(f"transformer (V={var.cfg.vocab_size}, Cvae={var.cfg.z_channels}) and tokenizer "
                         f"(V={vae.cfg.vocab_size}, Cvae={vae.cfg.z_channels}) do not belong together")
    device = var.pos_1LC.device
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    labels = _resolve_labels(var, B, labels, generator, device)

    pns, quant = var.cfg.patch_nums, vae.quantize
    S, H, Cv = len(pns), pns[-1], var.cfg.z_channels
    E_VC = quant.embedding.weight
    guided = cfg > 0 if uncond_half is None else bool(uncond_half)
    both = torch.cat((labels, torch.full_like(labels, var.num_classes))) if guided else labels
    cond_BC = var.class_emb(both)
    mods = var.modulations(cond_BC)                 # AdaLN vectors: the same at every scale
    x = var.start_tokens(cond_BC)
    caches = [KVCache() for _ in var.blocks] if use_cache else None
    prefix = []                                     # uncached path: every input so far
    f_hat = E_VC.new_zeros(B, Cv, H, H)
    out = SampleOutput(labels=labels, idx_per_scale=[], f_hat=f_hat)

    for si, pn in enumerate(pns):
        ratio = si / (S - 1) if S > 1 else 0.0
        if use_cache:
            h = var.run_blocks(x, mods, None, caches)
        else:
            prefix.append(x)
            X = torch.cat(prefix, dim=1)
            h = var.run_blocks(X, mods, var.attn_bias_for_masking[:, :, :X.shape[1], :X.shape[1]])[:, -pn * pn:]
        t = cfg * ratio
        if exact or return_steps or not guided:
            logits = var.logits(h)
            if return_steps:
                out.raw_logits_per_scale.append(logits.clone())
            if guided:
                logits = (1 + t) * logits[:B] - t * logits[B:]      # the official formula
        else:
            # the head is linear, so guiding its inputs gives the same logits for half the work
            logits = var.logits(torch.lerp(h[B:], h[:B], 1 + t))

        if exact or more_smooth:
            idx_Bl = sample_top_k_top_p(logits, top_k, top_p, generator)[:, :, 0]   # filters in place
        else:
            idx_Bl = draw_fast(logits, top_k, top_p, generator)
        if more_smooth:
            tau = max(0.27 * (1 - 0.95 * ratio), 0.005)
            h_BlC = gumbel_softmax(logits.mul(1 + ratio), tau=tau, generator=generator) @ E_VC
        else:
            h_BlC = E_VC[idx_Bl]
        h_BCpp = h_BlC.transpose(1, 2).reshape(B, Cv, pn, pn)
        if edit is not None:
            h_BCpp = torch.where(edit.scale_mask(pn), quant.lookup(edit.ref_idx[si], pn), h_BCpp)

        f_hat, nxt = quant.next_input(si, f_hat, h_BCpp, pns)
        out.idx_per_scale.append(idx_Bl)
        if return_steps:
            out.fhat_per_scale.append(f_hat.clone())
            out.h_per_scale.append(h_BCpp)
        if si < S - 1:
            b, e = var.begin_ends[si + 1]
            x = var.word_embed(nxt.flatten(2).transpose(1, 2)) + var.lvl_pos(b, e)
            if guided:
                x = x.repeat(2, 1, 1)

    if decode:
        out.images = vae.decode(f_hat).add_(1).mul_(0.5)
    return out
