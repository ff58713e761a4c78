"""The multi-scale VQ-VAE tokenizer: a convolutional encoder and decoder around the quantizer.

The encoder maps an image in [-1, 1] (B, 3, H, W) to a latent (B, Cvae, H/f, W/f) with
``f = 2 ** (len(ch_mult) - 1)``; the quantizer (``quant.py``) turns that latent into token maps
of every scale; the decoder maps a (quantized) latent back to an image.

Module names follow the official checkpoints (``encoder.down.{i}.block.{j}.conv1``, ...), so
``vae_ch160v4096z32.pth`` loads with ``strict=True``. The default :class:`VQVAEConfig` *is*
that checkpoint's configuration; a tiny 32x32 tokenizer is another setting of the same class.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quant import MultiScaleQuantizer
from .scales import PATCH_NUMS_256, check_patch_nums


@dataclass
class VQVAEConfig:
    vocab_size: int = 4096          # V: codebook entries
    z_channels: int = 32            # Cvae: latent channels = codebook dimension
    ch: int = 160                   # base width of the conv nets
    ch_mult: tuple = (1, 1, 2, 2, 4)  # width multiplier per level; len - 1 halvings of the side
    num_res_blocks: int = 2         # residual blocks per encoder level (the decoder uses one more)
    level_attn: bool = True         # self-attention after each block of the lowest-resolution level
    mid_attn: bool = True           # self-attention in the middle block
    norm_groups: int = 32           # GroupNorm groups: every width must be a multiple of it
    dropout: float = 0.0
    beta: float = 0.25              # commitment weight of the VQ loss
    using_znorm: bool = False       # cosine-similarity code lookup
    quant_resi: float = 0.5         # refiner mix ratio r in (1 - r) x + r conv(x)
    share_quant_resi: int = 4       # 0: a refiner per scale, 1: one shared, K: K shared
    patch_nums: tuple = PATCH_NUMS_256

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.patch_nums = check_patch_nums(self.patch_nums)
        for name in ("vocab_size", "z_channels", "ch", "num_res_blocks", "norm_groups"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"VQVAEConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"VQVAEConfig.ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult}")
        widths = sorted({self.ch * m for m in self.ch_mult})
        bad = [w for w in widths if w % self.norm_groups]
        if bad:
            raise ValueError(f"GroupNorm with {self.norm_groups} groups needs every width to be a multiple of "
                             f"{self.norm_groups}; ch={self.ch} with ch_mult={self.ch_mult} gives widths {bad}")

    @property
    def downsample(self) -> int:
        """Image side / latent side."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        """The image side whose latent grid is the finest token map."""
        return self.patch_nums[-1] * self.downsample

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------- blocks
class ResnetBlock(nn.Module):
    """``shortcut(x) + conv(SiLU(GN(conv(SiLU(GN(x))))))``; a 1x1 shortcut only if widths change."""

    def __init__(self, c_in: int, c_out: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=1e-6)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=1e-6)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions, with ONE fused 1x1 qkv conv."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, 3, C, H * W).transpose(2, 3).unbind(1)  # each (B, HW, C)
        o = F.scaled_dot_product_attention(q, k, v)          # scale 1/sqrt(C), one head
        return x + self.proj_out(o.transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Stride-2 conv after padding one column on the right and one row at the bottom."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: residual blocks, optional attention after each, optional resampler."""

    def __init__(self, c_in, c_out, n_blocks, attn, groups, dropout, resample=None):
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(c_in if j == 0 else c_out, c_out, groups, dropout)
                                    for j in range(n_blocks)])
        self.attn = nn.ModuleList([AttnBlock(c_out, groups) for _ in range(n_blocks)] if attn else [])
        if resample == "down":
            self.downsample = Downsample(c_out)
        elif resample == "up":
            self.upsample = Upsample(c_out)

    def forward(self, x):
        for j, blk in enumerate(self.block):
            x = blk(x)
            if self.attn:
                x = self.attn[j](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


class Middle(nn.Module):
    def __init__(self, c, attn, groups, dropout):
        super().__init__()
        self.block_1 = ResnetBlock(c, c, groups, dropout)
        self.attn_1 = AttnBlock(c, groups) if attn else nn.Identity()
        self.block_2 = ResnetBlock(c, c, groups, dropout)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> latent (B, Cvae, H/f, W/f)."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, mult, g, n = cfg.ch, cfg.ch_mult, cfg.norm_groups, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        widths_in = (ch,) + tuple(ch * m for m in mult[:-1])
        self.down = nn.ModuleList([
            Level(widths_in[i], ch * mult[i], cfg.num_res_blocks, cfg.level_attn and i == n - 1, g, cfg.dropout,
                  resample="down" if i < n - 1 else None)
            for i in range(n)])
        top = ch * mult[-1]
        self.mid = Middle(top, cfg.mid_attn, g, cfg.dropout)
        self.norm_out = nn.GroupNorm(g, top, eps=1e-6)
        self.conv_out = nn.Conv2d(top, cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Latent (B, Cvae, h, w) -> image (B, 3, h*f, w*f), unclamped."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, mult, g, n = cfg.ch, cfg.ch_mult, cfg.norm_groups, len(cfg.ch_mult)
        top = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, top, 3, padding=1)
        self.mid = Middle(top, cfg.mid_attn, g, cfg.dropout)
        # Stored by resolution level (up[0] is the finest) but run from the coarsest one.
        widths_in = tuple(ch * m for m in mult[1:]) + (top,)
        self.up = nn.ModuleList([
            Level(widths_in[i], ch * mult[i], cfg.num_res_blocks + 1, cfg.level_attn and i == n - 1, g,
                  cfg.dropout, resample="up" if i > 0 else None)
            for i in range(n)])
        self.norm_out = nn.GroupNorm(g, ch * mult[0], eps=1e-6)
        self.conv_out = nn.Conv2d(ch * mult[0], 3, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# -------------------------------------------------------------------------------- the VQ-VAE
class VQVAE(nn.Module):
    """Encoder + multi-scale quantizer + decoder. Images live in [-1, 1]."""

    def __init__(self, cfg: VQVAEConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or VQVAEConfig(**overrides)
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg.vocab_size, cfg.z_channels, cfg.patch_nums, beta=cfg.beta,
                                            using_znorm=cfg.using_znorm, quant_resi=cfg.quant_resi,
                                            share_quant_resi=cfg.share_quant_resi)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, padding=1)

    @property
    def patch_nums(self):
        return self.cfg.patch_nums

    def check_images(self, img: torch.Tensor, patch_nums=None) -> None:
        """Raise a ValueError unless ``img`` is a (B, 3, H, H) float batch in [-1, 1] that fits the scales."""
        if not torch.is_tensor(img) or img.dim() != 4:
            raise ValueError(f"images must be a 4-D tensor (B, 3, H, W), got "
                             f"{tuple(img.shape) if torch.is_tensor(img) else type(img).__name__}")
        if not img.is_floating_point():
            raise ValueError(f"images must be floating point in [-1, 1], got dtype {img.dtype}")
        if img.shape[1] != 3:
            raise ValueError(f"images must have 3 channels (RGB), got {img.shape[1]} (shape {tuple(img.shape)})")
        lo, hi = img.min().item(), img.max().item()
        if lo < -1 - 1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"images must be in [-1, 1] (map [0, 1] with 2x - 1), got values in [{lo:.3f}, {hi:.3f}]")
        H, W = img.shape[-2:]
        pns = self.cfg.patch_nums if patch_nums is None else tuple(patch_nums)
        f = self.cfg.downsample
        if H != W or H % f or H // f != pns[-1]:
            raise ValueError(f"image size {H}x{W} does not fit the scales {pns}: with downsampling x{f} the "
                             f"images must be {pns[-1] * f}x{pns[-1] * f}")

    # --- image <-> latent -----------------------------------------------------------------
    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> continuous latent f (B, Cvae, h, w)."""
        return self.quant_conv(self.encoder(img))

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent (B, Cvae, h, w) -> image (B, 3, H, W), clamped to [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    # --- image <-> tokens -----------------------------------------------------------------
    @torch.no_grad()
    def img_to_idx(self, img: torch.Tensor, patch_nums=None) -> list[torch.Tensor]:
        """Image -> token maps of every scale: S tensors (B, pn_k^2) int64."""
        self.check_images(img, patch_nums)
        return self.quantize.f_to_idx(self.encode(img), patch_nums)

    @torch.no_grad()
    def idx_to_img(self, idx_list) -> torch.Tensor:
        """Token maps of every scale -> image (B, 3, H, W) in [-1, 1]."""
        return self.decode(self.quantize.idx_to_fhat_per_scale(idx_list)[-1])

    @torch.no_grad()
    def img_to_recon_per_scale(self, img: torch.Tensor, patch_nums=None) -> list[torch.Tensor]:
        """The reconstruction after each scale (coarse-to-fine pictures): S images in [-1, 1]."""
        self.check_images(img, patch_nums)
        return [self.decode(f_hat) for f_hat in self.quantize.f_to_fhat_per_scale(self.encode(img), patch_nums)]

    @torch.no_grad()
    def img_to_var_input(self, img: torch.Tensor):
        """Image -> (token maps, teacher-forcing input of the transformer (B, L - l_0, Cvae))."""
        idx_list = self.img_to_idx(img)
        return idx_list, self.quantize.idx_to_var_input(idx_list)

    # --- training ------------------------------------------------------------------------
    def forward(self, img: torch.Tensor):
        """Training forward: ``(reconstruction (unclamped), vq_loss, usage_SV)``."""
        f_hat, vq_loss, usage_SV = self.quantize(self.encode(img))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss, usage_SV

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, but a usage buffer with another number of scales is not an error.

        The released tokenizer was saved with 10 scales; the same weights serve any pyramid, so
        its ``quantize.ema_vocab_hit_SV`` is replaced by this model's own buffer when the shapes differ.
        """
        key = "quantize.ema_vocab_hit_SV"
        own = self.quantize.ema_vocab_hit_SV
        if key in state_dict and state_dict[key].shape != own.shape and state_dict[key].shape[1:] == own.shape[1:]:
            state_dict = dict(state_dict)
            state_dict[key] = own.clone()
        if strict:
            from .checkpoints import check_state_dict
            check_state_dict(self, state_dict, what="VQVAE")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
