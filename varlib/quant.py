"""The multi-scale residual quantizer: one codebook, S scales, coarse to fine.

Given the continuous latent ``f`` (B, Cvae, h, w) of the VQ-VAE encoder, scale k quantizes what
the coarser scales have not explained yet::

    f_rest = f, f_hat = 0
    for each scale k with side pn_k:
        idx_k  = nearest codebook entry of area_resize(f_rest, pn_k)       (B, pn_k * pn_k)
        e_k    = phi_k(bicubic_resize(E[idx_k], h))                        (B, Cvae, h, w)
        f_hat += e_k ;  f_rest -= e_k

``phi_k`` is a small "refiner" convolution ``(1 - r) x + r conv(x)`` that repairs the blur of
up-sampling; the S scales share K of them (the official tokenizer: K = 4).

Shape legend: B batch, C = Cvae codebook dimension, V vocabulary, h = w latent side, pn side
of a scale, l = pn * pn tokens of one scale.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .scales import check_patch_nums, phi_indices


def area_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Down-sample by averaging (adaptive average pooling; windows overlap when sizes don't divide)."""
    return F.interpolate(x, size=(size, size), mode="area")


def bicubic_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Up-sample with PyTorch's bicubic kernel (a = -0.75, edge-clamped, no antialias)."""
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


class Phi(nn.Conv2d):
    """Residual refiner ``phi(x) = (1 - r) x + r conv3x3(x)``, with ``r = |quant_resi|``."""

    def __init__(self, dim: int, quant_resi: float):
        super().__init__(dim, dim, kernel_size=3, padding=1)
        self.r = abs(quant_resi)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return x_BChw.mul(1 - self.r) + super().forward(x_BChw).mul_(self.r)


def _make_phi(dim: int, quant_resi: float) -> nn.Module:
    return Phi(dim, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()


# The three ways of sharing refiners. Their attribute names are those of the official state
# dicts (``quant_resi.qresi``, ``quant_resi.qresi_ls.{i}``, ``quant_resi.{i}``).
class SharedPhi(nn.Module):
    """One refiner for every scale (``share_quant_resi = 1``)."""

    def __init__(self, dim, quant_resi):
        super().__init__()
        self.qresi = _make_phi(dim, quant_resi)
        self.num_phis = 1

    def pick(self, si: int, num_scales: int) -> nn.Module:
        return self.qresi


class PartiallySharedPhi(nn.Module):
    """K refiners shared by nearby scales (``share_quant_resi = K >= 2``; official K = 4)."""

    def __init__(self, dim, quant_resi, k):
        super().__init__()
        self.qresi_ls = nn.ModuleList([_make_phi(dim, quant_resi) for _ in range(k)])
        self.num_phis = k

    def pick(self, si: int, num_scales: int) -> nn.Module:
        return self.qresi_ls[phi_indices(num_scales, self.num_phis)[si]]


class PerScalePhi(nn.ModuleList):
    """One refiner per scale (``share_quant_resi = 0``), picked with the same tick rule."""

    def __init__(self, dim, quant_resi, k):
        super().__init__([_make_phi(dim, quant_resi) for _ in range(k)])
        self.num_phis = k

    def pick(self, si: int, num_scales: int) -> nn.Module:
        return self[phi_indices(num_scales, self.num_phis)[si]]


class MultiScaleQuantizer(nn.Module):
    """Residual quantizer over a pyramid of scales with one shared codebook.

    Args:
        vocab_size: V, number of codebook entries.
        dim: Cvae, channels of the latent and of every code.
        patch_nums: sides of the token maps, coarse to fine; the last one is the latent side.
        beta: weight of the commitment term of the VQ loss.
        using_znorm: pick codes by cosine similarity instead of Euclidean distance.
        quant_resi: mixing ratio r of the refiners; ``|r| <= 1e-6`` means no refiner.
        share_quant_resi: 0 = one refiner per scale, 1 = one for all, K >= 2 = K shared ones.
    """

    def __init__(self, vocab_size: int, dim: int, patch_nums, beta: float = 0.25,
                 using_znorm: bool = False, quant_resi: float = 0.5, share_quant_resi: int = 4):
        super().__init__()
        self.vocab_size, self.dim, self.beta, self.using_znorm = vocab_size, dim, beta, using_znorm
        self.patch_nums = check_patch_nums(patch_nums)
        if share_quant_resi < 0:
            raise ValueError(f"share_quant_resi must be 0 (one refiner per scale), 1 (shared) or K >= 2, "
                             f"got {share_quant_resi}")
        if share_quant_resi == 0:
            self.quant_resi = PerScalePhi(dim, quant_resi, len(self.patch_nums))
        elif share_quant_resi == 1:
            self.quant_resi = SharedPhi(dim, quant_resi)
        else:
            self.quant_resi = PartiallySharedPhi(dim, quant_resi, share_quant_resi)
        self.embedding = nn.Embedding(vocab_size, dim)
        # How often each code was picked at each scale (kept for checkpoint compatibility and
        # filled by ``update_usage``). Official checkpoints store it; its row count follows S.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))

    # ----------------------------------------------------------------------------- helpers
    def phi(self, si: int, num_scales: int | None = None) -> nn.Module:
        """The refiner used at scale ``si`` of a pyramid of ``num_scales`` scales."""
        return self.quant_resi.pick(si, num_scales or len(self.patch_nums))

    def _pyramid(self, patch_nums, latent_size: int) -> tuple[int, ...]:
        return check_patch_nums(self.patch_nums if patch_nums is None else patch_nums, latent_size)

    def nearest_code(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry for each row of ``z_NC`` (N, C) -> (N,) int64.

        Euclidean: ``argmin |z|^2 + |e|^2 - 2 z.e``, in that float32 form (other formulas,
        ``cdist`` for instance, can flip near-ties). Cosine: ``argmax`` of normalised dot products.
        """
        E_VC = self.embedding.weight
        if self.using_znorm:
            return (F.normalize(z_NC, dim=1) @ F.normalize(E_VC, dim=1).T).argmax(dim=1)
        d_NV = (z_NC.square().sum(1, keepdim=True) + E_VC.square().sum(1)).addmm_(z_NC, E_VC.T, alpha=-2)
        return d_NV.argmin(dim=1)

    def lookup(self, idx_Bl: torch.Tensor, pn: int) -> torch.Tensor:
        """Codebook vectors of a token map: (B, pn*pn) -> (B, C, pn, pn)."""
        B = idx_Bl.shape[0]
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.dim, pn, pn)

    def add_scale(self, si: int, f_hat: torch.Tensor, h_BCpp: torch.Tensor, num_scales: int) -> torch.Tensor:
        """``phi_si(bicubic_up(h))``: the contribution of scale ``si`` to f_hat, at full latent size."""
        H = f_hat.shape[-1]
        up = h_BCpp if h_BCpp.shape[-1] == H else bicubic_resize(h_BCpp, H)
        return self.phi(si, num_scales)(up)

    # --------------------------------------------------------------------------- tokenizing
    @torch.no_grad()
    def f_to_idx(self, f_BChw: torch.Tensor, patch_nums=None) -> list[torch.Tensor]:
        """Quantize a latent into token maps: (B, C, h, w) -> S tensors (B, pn_k^2) int64."""
        return self._quantize(f_BChw, patch_nums)[0]

    @torch.no_grad()
    def f_to_fhat_per_scale(self, f_BChw: torch.Tensor, patch_nums=None) -> list[torch.Tensor]:
        """The cumulative reconstruction after each scale: S tensors (B, C, h, w)."""
        return self._quantize(f_BChw, patch_nums)[1]

    @torch.no_grad()
    def residuals_per_scale(self, f_BChw: torch.Tensor, patch_nums=None) -> list[torch.Tensor]:
        """What each scale quantizes: the area-downsampled residual, S tensors (B * pn_k^2, C).

        (The trainer re-seeds dead codes from these vectors.)
        """
        return self._quantize(f_BChw, patch_nums)[2]

    def _quantize(self, f_BChw, patch_nums):
        B, C, H, W = f_BChw.shape
        if H != W:
            raise ValueError(f"the latent must be square, got {H}x{W}")
        pns = self._pyramid(patch_nums, H)
        f_rest, f_hat = f_BChw.detach().clone(), torch.zeros_like(f_BChw)
        idx_list, fhat_list, z_list = [], [], []
        for si, pn in enumerate(pns):
            z_BCpp = f_rest if pn == H else area_resize(f_rest, pn)
            z_NC = z_BCpp.permute(0, 2, 3, 1).reshape(-1, C)
            idx_Bl = self.nearest_code(z_NC).view(B, pn * pn)
            z_list.append(z_NC.clone())   # f_rest is updated in place below
            e = self.add_scale(si, f_hat, self.lookup(idx_Bl, pn), len(pns))
            f_hat.add_(e)
            f_rest.sub_(e)
            idx_list.append(idx_Bl)
            fhat_list.append(f_hat.clone())
        return idx_list, fhat_list, z_list

    # ------------------------------------------------------------------------ de-tokenizing
    def idx_to_fhat_per_scale(self, idx_list, latent_size: int | None = None,
                              at_own_resolution: bool = False) -> list[torch.Tensor]:
        """Cumulative f_hat after each scale, from token maps (the inverse of ``f_to_idx``).

        With ``at_own_resolution=True`` f_hat is instead kept at each scale's own size and
        bicubically carried up from scale to scale, the refiner applied at low resolution (an
        experimental variant of the official code, not used by training or sampling).
        """
        pns = self._pns_from_idx(idx_list)
        H = latent_size or pns[-1]
        B = idx_list[0].shape[0]
        out = []
        if at_own_resolution:
            f_hat = None
            for si, (idx_Bl, pn) in enumerate(zip(idx_list, pns)):
                h = self.lookup(idx_Bl, pn)
                f_hat = h.new_zeros(B, self.dim, pn, pn) if f_hat is None else bicubic_resize(f_hat, pn)
                f_hat = f_hat + self.phi(si, len(pns))(h)
                out.append(f_hat)
            return out
        f_hat = self.embedding.weight.new_zeros(B, self.dim, H, H)
        for si, (idx_Bl, pn) in enumerate(zip(idx_list, pns)):
            f_hat = f_hat + self.add_scale(si, f_hat, self.lookup(idx_Bl, pn), len(pns))
            out.append(f_hat)
        return out

    def idx_to_var_input(self, idx_list) -> torch.Tensor:
        """Teacher-forcing input of the transformer: (B, L - l_0, C), float32.

        For scale k + 1 the transformer sees the running reconstruction after scale k,
        area-downsampled to side pn_{k+1} and flattened row-major. (Tokens of scale k+1 are
        predicted from that continuous map, not from the ids of scale k.)
        """
        pns = self._pns_from_idx(idx_list)
        B, H = idx_list[0].shape[0], pns[-1]
        f_hat = self.embedding.weight.new_zeros(B, self.dim, H, H)
        nxt = []
        for si in range(len(pns) - 1):
            f_hat = f_hat + self.add_scale(si, f_hat, self.lookup(idx_list[si], pns[si]), len(pns))
            nxt.append(area_resize(f_hat, pns[si + 1]).flatten(2).transpose(1, 2))
        if not nxt:
            return self.embedding.weight.new_zeros(B, 0, self.dim)
        return torch.cat(nxt, dim=1)

    def next_input(self, si: int, f_hat: torch.Tensor, h_BCpp: torch.Tensor, patch_nums):
        """One sampling step: add scale ``si`` to f_hat IN PLACE and return the next input.

        Returns ``(f_hat, x)`` where x (B, C, pn_{si+1}, pn_{si+1}) is f_hat area-downsampled
        to the next scale (or f_hat itself after the last scale).
        """
        f_hat.add_(self.add_scale(si, f_hat, h_BCpp, len(patch_nums)))
        if si == len(patch_nums) - 1:
            return f_hat, f_hat
        return f_hat, area_resize(f_hat, patch_nums[si + 1])

    def _pns_from_idx(self, idx_list) -> tuple[int, ...]:
        pns = []
        for t in idx_list:
            pn = round(t.shape[1] ** 0.5)
            if pn * pn != t.shape[1]:
                raise ValueError(f"a token map must hold a square number of tokens, got {t.shape[1]}")
            pns.append(pn)
        return check_patch_nums(pns)

    # ----------------------------------------------------------------------------- training
    def forward(self, f_BChw: torch.Tensor, patch_nums=None):
        """Training forward. Returns ``(f_hat_st, vq_loss, usage_SV)``.

        ``f_hat_st`` equals f_hat in value but passes gradients straight through to ``f``;
        ``vq_loss`` is the mean over scales of ``beta * |sg(f_hat_k) - f|^2 + |f_hat_k - sg(f)|^2``
        (the first term trains the encoder, the second the codebook and refiners) with f_hat_k
        the cumulative reconstruction after scale k; ``usage_SV`` counts how often every code was
        picked at every scale in this batch (S, V), int64.
        """
        dtype = f_BChw.dtype
        f = f_BChw.float()
        B, C, H, W = f.shape
        pns = self._pyramid(patch_nums, H)
        with torch.autocast(device_type=f.device.type, enabled=False):
            f_rest, f_hat = f.detach().clone(), torch.zeros_like(f)
            vq_loss = f.new_zeros(())
            usage_SV = torch.zeros(len(pns), self.vocab_size, dtype=torch.long, device=f.device)
            for si, pn in enumerate(pns):
                z = f_rest if pn == H else area_resize(f_rest, pn)
                with torch.no_grad():
                    idx_N = self.nearest_code(z.permute(0, 2, 3, 1).reshape(-1, C))
                usage_SV[si] = torch.bincount(idx_N, minlength=self.vocab_size)
                e = self.add_scale(si, f_hat, self.lookup(idx_N.view(B, -1), pn), len(pns))
                f_hat = f_hat + e
                f_rest = f_rest - e.detach()
                vq_loss = vq_loss + self.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f.detach())
            vq_loss = vq_loss / len(pns)
            f_hat_st = (f_hat.detach() - f.detach()).add_(f)
        return f_hat_st.to(dtype), vq_loss, usage_SV
