"""The VAR transformer: a GPT-like stack of AdaLN blocks that predicts a whole scale at once.

Input sequence (length L = sum of pn_k^2 over the scales):

* scale 0: the start token(s), ``class_emb(label) + pos_start``;
* scale k > 0: ``word_embed`` of the *continuous* running reconstruction after scale k - 1,
  area-downsampled to side pn_k (see ``MultiScaleQuantizer.idx_to_var_input``);

plus a position embedding per token (``pos_1LC``) and a level embedding per scale
(``lvl_embed``). Attention is scale-causal (``scales.scale_causal_mask``): token i of scale k
sees scales 0..k and predicts token i of scale k; there is no one-token shift.

The class embedding also conditions every block through adaptive LayerNorm (AdaLN): six
vectors per block, ``gamma1, gamma2, scale1, scale2, shift1, shift2`` in that order, modulate
the pre-norm residual branches. Parameter names follow the official checkpoints.

Shape legend: B batch, L tokens, C width, H heads, c = C / H head dim, V vocabulary,
Cv = Cvae latent channels, l tokens of one scale.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .scales import PATCH_NUMS_256, begin_ends, check_patch_nums, scale_causal_bias, scale_ids


@dataclass
class VARConfig:
    vocab_size: int = 4096        # V: codebook size of the tokenizer
    z_channels: int = 32          # Cvae: channels of the tokenizer latent (input of word_embed)
    num_classes: int = 1000       # class id num_classes is the null ("unconditional") class
    depth: int = 16               # number of blocks
    width: int = 1024             # C
    num_heads: int = 16           # H
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0        # dropout after attention / FFN projections
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0   # stochastic depth, rising linearly to this over the blocks
    norm_eps: float = 1e-6
    shared_aln: bool = False      # one AdaLN linear for all blocks plus a learned offset per block
    cond_drop_rate: float = 0.1   # training only: replace the label by the null class this often
    attn_l2_norm: bool = True     # cosine attention with a learned, clamped temperature per head
    patch_nums: tuple = PATCH_NUMS_256

    def __post_init__(self):
        self.patch_nums = check_patch_nums(self.patch_nums)
        for name in ("vocab_size", "z_channels", "num_classes", "depth", "width", "num_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"VARConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.width % self.num_heads:
            raise ValueError(f"VARConfig.width ({self.width}) must be divisible by num_heads ({self.num_heads})")
        if not 0.0 <= self.cond_drop_rate <= 1.0:
            raise ValueError(f"VARConfig.cond_drop_rate must be in [0, 1], got {self.cond_drop_rate}")

    @classmethod
    def from_depth(cls, depth: int, **overrides) -> "VARConfig":
        """The official family: width 64 * depth, one 64-wide head per 64 channels, drop path 0.1 * depth / 24."""
        kw = dict(depth=depth, width=64 * depth, num_heads=depth, drop_path_rate=0.1 * depth / 24)
        kw.update(overrides)
        return cls(**kw)

    @property
    def num_tokens(self) -> int:
        return sum(p * p for p in self.patch_nums)

    def to_dict(self) -> dict:
        return asdict(self)


def next_scale_loss(logits_BLV: torch.Tensor, gt_BL: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The official training loss: cross-entropy of every token, each weighted 1/L, summed over
    the sequence and averaged over the batch (= the mean over all B * L tokens)."""
    B, L, V = logits_BLV.shape
    ce_BL = F.cross_entropy(logits_BLV.reshape(-1, V), gt_BL.reshape(-1), label_smoothing=label_smoothing,
                            reduction="none").view(B, L)
    return ce_BL.mul(1.0 / L).sum(dim=1).mean()


# ------------------------------------------------------------------------------ the pieces
class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample, rescale the kept ones."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class KVCache:
    """Keys and values of every token seen so far by one attention layer, (B, H, L, c) each.

    Sampling appends one whole scale per step, so no mask is needed: every cached token belongs
    to the current or a coarser scale. The buffers are allocated once for the full sequence.
    """

    def __init__(self):
        self.k = self.v = None
        self.n = 0

    def append(self, k_BHlc, v_BHlc, max_len: int):
        B, H, l, c = k_BHlc.shape
        if self.k is None:
            self.k = k_BHlc.new_empty(B, H, max_len, c)
            self.v = v_BHlc.new_empty(B, H, max_len, c)
        self.k[:, :, self.n:self.n + l] = k_BHlc
        self.v[:, :, self.n:self.n + l] = v_BHlc
        self.n += l
        return self.k[:, :, :self.n], self.v[:, :, :self.n]


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fixed zero key bias and, optionally, L2-normalised q/k."""

    def __init__(self, C: int, H: int, attn_drop: float, proj_drop: float, l2_norm: bool, max_len: int):
        super().__init__()
        self.num_heads, self.head_dim, self.l2_norm, self.max_len = H, C // H, l2_norm, max_len
        if l2_norm:
            # scores are cosine similarities times a learned per-head temperature exp(s) <= 100
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), math.log(4.0)))
            self.max_scale_mul = math.log(100.0)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)   # the official constant (not 1/sqrt(c))
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))   # keys get no bias (BEiT style)
        self.proj = nn.Linear(C, C)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop

    def forward(self, x_BLC, attn_bias=None, cache: KVCache | None = None):
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x_BLC, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                   # each (B, H, L, c)
        if self.l2_norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp())
            k = F.normalize(k, dim=-1)
        if cache is not None:
            k, v = cache.append(k, v, self.max_len)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, L, C)))


class FFN(nn.Module):
    def __init__(self, C: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(C, hidden)
        self.fc2 = nn.Linear(hidden, C)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x):
        return self.drop(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose LayerNorms are modulated by the class condition."""

    def __init__(self, cfg: VARConfig, drop_path: float):
        super().__init__()
        C = cfg.width
        self.C, self.shared_aln = C, cfg.shared_aln
        self.ln = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.attn = SelfAttention(C, cfg.num_heads, cfg.attn_drop_rate, cfg.drop_rate, cfg.attn_l2_norm,
                                  cfg.num_tokens)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio), cfg.drop_rate)
        self.drop_path = DropPath(drop_path)
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C ** 0.5)   # per-block offset
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def modulation(self, cond):
        """The six (B, 1, C) vectors gamma1, gamma2, scale1, scale2, shift1, shift2.

        ``cond`` is the class embedding (B, C), or with shared AdaLN the shared linear's
        output (B, 1, 6, C).
        """
        if self.shared_aln:
            return (self.ada_gss + cond).unbind(2)
        return self.ada_lin(cond).view(-1, 1, 6, self.C).unbind(2)

    def forward(self, x_BLC, mod, attn_bias=None, cache: KVCache | None = None):
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod
        # x + gamma * branch(LN(x) * (1 + scale) + shift); the official order of operations is
        # kept (fused multiply-adds would round differently and move sampled tokens near ties)
        h = self.attn(self.ln(x_BLC).mul_(scale1 + 1).add_(shift1), attn_bias, cache)
        x_BLC = x_BLC + self.drop_path(h.mul_(gamma1))
        h = self.ffn(self.ln(x_BLC).mul_(scale2 + 1).add_(shift2))
        return x_BLC + self.drop_path(h.mul_(gamma2))


class AdaLNBeforeHead(nn.Module):
    """Final LayerNorm modulated by the class embedding (scale, shift) before the output head."""

    def __init__(self, C: int, eps: float):
        super().__init__()
        self.C = C
        self.ln = nn.LayerNorm(C, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def modulation(self, cond_BC):
        return self.ada_lin(cond_BC).view(-1, 1, 2, self.C).unbind(2)

    def forward(self, x_BLC, mod):
        scale, shift = mod
        return self.ln(x_BLC).mul_(scale + 1).add_(shift)


class SharedAdaLin(nn.Linear):
    """The shared AdaLN linear (C -> 6C), output viewed as (B, 1, 6, C)."""

    def forward(self, cond_BC):
        return super().forward(cond_BC).view(-1, 1, 6, self.out_features // 6)


# --------------------------------------------------------------------------------- the model
class VAR(nn.Module):
    """The next-scale prediction transformer (the tokenizer is kept outside, as in the official code)."""

    def __init__(self, cfg: VARConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or VARConfig(**overrides)
        self.cfg = cfg
        C, pns = cfg.width, cfg.patch_nums
        self.num_classes, self.first_l, self.L = cfg.num_classes, pns[0] ** 2, cfg.num_tokens
        self.begin_ends = begin_ends(pns)
        init_std = math.sqrt(1 / C / 3)

        self.word_embed = nn.Linear(cfg.z_channels, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)          # last row: the null class
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, C))
        self.lvl_embed = nn.Embedding(len(pns), C)
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, mean=0, std=init_std)
        if cfg.shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C))
        dpr = [cfg.drop_path_rate * i / (cfg.depth - 1) if cfg.depth > 1 else 0.0 for i in range(cfg.depth)]
        self.blocks = nn.ModuleList([AdaLNBlock(cfg, dpr[i]) for i in range(cfg.depth)])
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab_size)
        # persistent buffers: the official checkpoints carry them
        self.register_buffer("lvl_1L", scale_ids(pns)[None])
        self.register_buffer("attn_bias_for_masking", scale_causal_bias(pns))
        self.init_weights()

    # ------------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_weights(self, init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1.0):
        """The official initialisation: every residual branch starts almost closed.

        Linear and embedding weights ~ N(0, init_std) (``init_std < 0``: sqrt(1 / 3C)), biases 0;
        the head is scaled by ``init_head``; AdaLN scales/shifts by ``init_adaln`` and the gates
        gamma by ``init_adaln_gamma``; output projections by 1/sqrt(2 depth).
        """
        C, depth = self.cfg.width, self.cfg.depth
        std = math.sqrt(1 / C / 3) if init_std < 0 else init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        self.head.weight.mul_(init_head)
        self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        for blk in self.blocks:
            blk.attn.proj.weight.div_(math.sqrt(2 * depth))
            blk.ffn.fc2.weight.div_(math.sqrt(2 * depth))
            if blk.shared_aln:
                blk.ada_gss[:, :, 2:].mul_(init_adaln)
                blk.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                w = blk.ada_lin[-1].weight
                w[2 * C:].mul_(init_adaln)
                w[:2 * C].mul_(init_adaln_gamma)
                blk.ada_lin[-1].bias.zero_()

    # ------------------------------------------------------------------------ building blocks
    def check_labels(self, label_B: torch.Tensor) -> None:
        if label_B.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
            raise ValueError(f"class labels must be integers, got dtype {label_B.dtype}")
        if label_B.numel() and (label_B.min() < 0 or label_B.max() > self.num_classes):
            raise ValueError(f"class labels must be in [0, {self.num_classes}] ({self.num_classes} is the null "
                             f"class), got values in [{label_B.min().item()}, {label_B.max().item()}]")

    def modulations(self, cond_BC: torch.Tensor):
        """AdaLN vectors of every block and of the head for a batch of class embeddings (B, C)."""
        block_cond = self.shared_ada_lin(cond_BC) if self.cfg.shared_aln else cond_BC
        return [blk.modulation(block_cond) for blk in self.blocks], self.head_nm.modulation(cond_BC)

    def lvl_pos(self, begin: int, end: int) -> torch.Tensor:
        """Level + position embeddings of tokens [begin, end): (1, end - begin, C)."""
        return self.lvl_embed(self.lvl_1L[:, begin:end]) + self.pos_1LC[:, begin:end]

    def start_tokens(self, cond_BC: torch.Tensor) -> torch.Tensor:
        """The first scale's input: class embedding + pos_start + level/position, (B, first_l, C)."""
        B = cond_BC.shape[0]
        sos = cond_BC.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, -1, -1)
        return sos + self.lvl_pos(0, self.first_l)

    def run_blocks(self, x_BLC, mods, attn_bias=None, caches=None) -> torch.Tensor:
        """Blocks + the head's AdaLN: inputs (B, l, C) -> head inputs (B, l, C) in float32.

        ``self.head`` of the result gives the logits. The two are apart because the head is
        linear: guidance can mix the conditional and unconditional halves *before* it and pay
        for one head instead of two (see ``sampler.sample``).
        """
        block_mods, head_mod = mods
        for i, blk in enumerate(self.blocks):
            x_BLC = blk(x_BLC, block_mods[i], attn_bias, None if caches is None else caches[i])
        return self.head_nm(x_BLC.float(), head_mod).float()

    def logits(self, h_BLC: torch.Tensor) -> torch.Tensor:
        """Head inputs (B, l, C) -> logits (B, l, V), float32."""
        return self.head(h_BLC).float()

    # ------------------------------------------------------------------------ teacher forcing
    def forward(self, label_B: torch.Tensor, x_BLCv: torch.Tensor,
                cond_drop_B: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits of every token: (B,), (B, L' - first_l, Cv) -> (B, L', V).

        ``x_BLCv`` is ``MultiScaleQuantizer.idx_to_var_input`` of the target tokens, or a prefix
        of it that ends at a scale boundary (progressive training, or a partial pyramid): then
        the logits of that prefix come back, equal to the first rows of the full forward
        because the mask is scale-causal. In training mode each label is replaced by the null
        class with probability ``cond_drop_rate`` (global RNG); in eval mode never (the
        official code also drops labels in eval mode, a quirk we do not copy). A trainer that
        wants to decide itself passes ``cond_drop_B`` (B,) bool: True = use the null class.
        """
        B = label_B.shape[0]
        self.check_labels(label_B)
        ed = self.first_l + x_BLCv.shape[1]
        if x_BLCv.dim() != 3 or x_BLCv.shape[0] != B or x_BLCv.shape[2] != self.cfg.z_channels:
            raise ValueError(f"x_BLCv must be (B={B}, L - first_l, Cvae={self.cfg.z_channels}), "
                             f"got {tuple(x_BLCv.shape)}")
        if ed not in [e for _, e in self.begin_ends]:
            raise ValueError(f"x_BLCv holds {x_BLCv.shape[1]} tokens; it must end at a scale boundary, i.e. be "
                             f"one of {[e - self.first_l for _, e in self.begin_ends]}")
        if cond_drop_B is None and self.training and self.cfg.cond_drop_rate > 0:
            cond_drop_B = torch.rand(B, device=label_B.device) < self.cfg.cond_drop_rate
        if cond_drop_B is not None:
            label_B = torch.where(cond_drop_B, self.num_classes, label_B)
        cond_BC = self.class_emb(label_B)
        sos = cond_BC.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, -1, -1)
        x_BLC = torch.cat((sos, self.word_embed(x_BLCv.float())), dim=1)
        x_BLC = x_BLC + self.lvl_pos(0, ed)
        h_BLC = self.run_blocks(x_BLC, self.modulations(cond_BC), self.attn_bias_for_masking[:, :, :ed, :ed])
        return self.logits(h_BLC)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """nn.Module's loader, with a ValueError that names every key that does not fit."""
        if strict:
            from .checkpoints import check_state_dict
            check_state_dict(self, state_dict, what="VAR")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
