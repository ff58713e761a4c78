"""Training the tokenizer and VAR, on a laptop CPU or on many GPUs.

    python -m varlib.train tokenizer --preset emoji32 --out runs/tok
    python -m varlib.train var --preset emoji32 --tokenizer runs/tok/last.pt --out runs/var
    torchrun --nproc_per_node 4 -m varlib.train var ...        (DistributedDataParallel)

The official repository never released its tokenizer trainer; ``train_tokenizer`` is ours:
reconstruction MSE plus the multi-scale VQ loss, AdamW with warm-up and cosine decay, and
*dead-code restarts*: every ``restart_every`` steps, each code nobody picked in the window is
moved onto a residual vector of the current batch, drawn evenly over the scales; and, with
``scale_floor > 0``, a *floor per scale*: a scale whose expected coverage (the share of the codes
it could use that ``usage_ref`` held-out images would pick, estimated from the window's counts)
is below the floor takes some of the least-used codes, placed on its own residuals. Together they
keep every scale (the coarse ones first) from collapsing onto a handful of codes.

``train_var`` follows the official recipe (``optim.py``: parameter groups, ``lin0`` schedule,
AdamW 0.9/0.95, clipping at 2, label dropout 0.1, CE over all tokens) with one change of
engineering: the frozen tokenizer encodes the data set once, for every augmentation variant,
instead of every batch (the official trainer spends most of a small CPU step re-encoding).

Reproducibility: the batch of step s (its images, shifts and dropped labels) is a function of
(seed, s) only, and checkpoints hold the model, the optimiser, the global RNG state and the
history. A run stopped and resumed with ``--resume`` therefore ends with the same weights, bit
for bit (same machine, same thread count), as one that never stopped. With N processes each
takes a slice of the same global batch, so N processes and 1 process follow the same path (up
to float summation order).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .checkpoints import CHECKPOINT_FORMAT, load_checkpoint, model_from_checkpoint, save_checkpoint
from .model import VAR, VARConfig, next_scale_loss
from .optim import apply_schedule, param_groups
from .vqvae import VQVAE, VQVAEConfig


# ------------------------------------------------------------------------------ configuration
@dataclass
class TrainConfig:
    kind: str                          # "tokenizer" or "var"
    preset: str = "custom"
    data: str = "emoji32"              # "emoji32", "shapes" or "folder:PATH" (class sub-folders)
    model: dict = field(default_factory=dict)   # VQVAEConfig / VARConfig arguments
    steps: int = 1000
    batch_size: int = 64               # global batch (split over processes)
    lr: float = 3e-4                   # peak learning rate
    wd: float = 0.05
    wd_end: float = 0.05
    warmup: int = 100                  # warm-up iterations
    sche: str = "lin0"                 # see optim.lr_factor
    wp0: float = 0.005
    wpe: float = 0.01
    betas: tuple = (0.9, 0.95)
    clip: float = 2.0                  # global gradient-norm clipping (0 = off)
    max_shift: int = 1                 # augmentation: random shifts of up to this many pixels
    label_smoothing: float = 0.0       # var
    restart_every: int = 100           # tokenizer: dead-code restart period (0 = off)
    scale_floor: float = 0.0           # tokenizer: least coverage per scale kept by restarts (0 = off)
    usage_ref: int = 200               # tokenizer: images the coverage is expected over (a held-out set)
    tokenizer: str = ""                # var: checkpoint of the frozen tokenizer
    token_cache: bool = True           # var: tokenize the data set once
    bf16: bool = False                 # autocast to bfloat16 for the forward pass
    seed: int = 0
    save_every: int = 500
    log_every: int = 10

    def __post_init__(self):
        if self.kind not in ("tokenizer", "var"):
            raise ValueError(f"kind must be 'tokenizer' or 'var', got {self.kind!r}")
        self.betas = tuple(self.betas)
        for name in ("steps", "batch_size", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _tok(**kw):
    return dict(kind="tokenizer", sche="cos", wd=0.0, wd_end=0.0, wp0=0.01, wpe=0.05, **kw)


PRESETS = {
    # seconds on a laptop CPU: for tests and CI
    ("tokenizer", "tiny"): _tok(data="shapes", steps=40, batch_size=16, lr=2e-3, warmup=5, restart_every=10,
                                save_every=20, log_every=5,
                                model=dict(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                           level_attn=False, mid_attn=False, patch_nums=(1, 2, 4, 8))),
    ("var", "tiny"): dict(kind="var", data="shapes", steps=40, batch_size=16, lr=2e-3, warmup=5, save_every=20,
                          log_every=5, model=dict(depth=2, width=64, num_heads=2)),
    # the book's emoji models
    # (sized for a 2-core CPU: about 47 and 20 minutes)
    ("tokenizer", "emoji32"): _tok(data="emoji32", steps=7000, batch_size=32, lr=2e-3, warmup=100, bf16=True,
                                   restart_every=100, scale_floor=0.3, save_every=100, log_every=25,
                                   model=dict(vocab_size=512, z_channels=32, ch=64, ch_mult=(1, 1, 2),
                                              num_res_blocks=1, patch_nums=(1, 2, 3, 4, 6, 8))),
    ("var", "emoji32"): dict(kind="var", data="emoji32", steps=3000, batch_size=32, lr=1e-3, warmup=100,
                             save_every=100, log_every=25, wpe=0.05,
                             model=dict(depth=4, width=192, num_heads=3, drop_path_rate=0.0)),
}


def preset(kind: str, name: str, **overrides) -> TrainConfig:
    key = (kind, name)
    if key not in PRESETS:
        names = sorted(n for k, n in PRESETS if k == kind)
        raise ValueError(f"unknown {kind} preset {name!r}: use one of {names}")
    kw = dict(PRESETS[key])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(preset=name, **kw)


# ------------------------------------------------------------------------------------- data
@dataclass
class ImageData:
    train: torch.Tensor        # (N, 3, H, W) float in [-1, 1]
    train_labels: torch.Tensor
    heldout: torch.Tensor
    heldout_labels: torch.Tensor
    classes: list


def load_data(spec: str) -> ImageData:
    """The train / held-out images of a data set name (see ``TrainConfig.data``)."""
    from . import data as D
    if spec == "emoji32":
        tr, ho = D.EmojiDataset("train"), D.EmojiDataset("heldout")
        return ImageData(tr.images, torch.tensor(tr.targets), ho.images, torch.tensor(ho.targets), tr.classes)
    if spec == "shapes":
        tr, ho = D.ShapesDataset(512, size=16, seed=0), D.ShapesDataset(64, size=16, seed=1)
        return ImageData(*_stack(tr), *_stack(ho), list(D.SHAPES))
    if spec.startswith("folder:"):
        ds = D.image_folder_dataset(spec[len("folder:"):])
        images, labels = _stack(ds)
        train, held = D.stratified_split(labels)
        return ImageData(images[train], labels[train], images[held], labels[held], list(ds.classes))
    raise ValueError(f"unknown data {spec!r}: use 'emoji32', 'shapes' or 'folder:PATH'")


def _stack(ds):
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys)


def shift(images: torch.Tensor, dy: int, dx: int, fill: float = 1.0) -> torch.Tensor:
    """Translate a batch (B, C, H, W) by (dy, dx) pixels, uncovered pixels set to ``fill``."""
    if dy == 0 and dx == 0:
        return images
    H, W = images.shape[-2:]
    s = max(abs(dy), abs(dx))
    padded = F.pad(images, (s, s, s, s), value=fill)
    return padded[..., s - dy:s - dy + H, s - dx:s - dx + W]


def shift_offsets(max_shift: int) -> list[tuple[int, int]]:
    r = range(-max_shift, max_shift + 1)
    return [(dy, dx) for dy in r for dx in r]


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, step, stream): the randomness of one batch."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + stream)


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """Items of the global batch of ``step``: epochs are seeded permutations, read in order."""
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in torch.unique(pos // n).tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        sel = pos // n == epoch
        out[sel] = perm[pos[sel] % n]
    return out


# ------------------------------------------------------------------------------ distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self):
        return self.rank == 0


def setup_distributed() -> Dist:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs); else one process."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return Dist(rank, world, device)


def local_slice(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if x.shape[0] % d.world:
        raise ValueError(f"the global batch ({x.shape[0]}) must be divisible by the number of processes ({d.world})")
    n = x.shape[0] // d.world
    return x[d.rank * n:(d.rank + 1) * n]


# ---------------------------------------------------------------------------------- metrics
@torch.no_grad()
def tokenizer_metrics(vae: VQVAE, images: torch.Tensor, batch: int = 128) -> dict:
    """Held-out figures: PSNR, codebook usage overall and per scale (of the codes it could use)."""
    V, pns = vae.cfg.vocab_size, vae.cfg.patch_nums
    se, n = 0.0, 0
    used = torch.zeros(len(pns), V, dtype=torch.bool)
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        idx = vae.img_to_idx(x)
        rec = vae.idx_to_img(idx)
        se += ((rec - x) / 2).square().sum().item()
        n += x.numel()
        for si, t in enumerate(idx):
            used[si, t.flatten()] = True
    possible = [min(V, len(images) * p * p) for p in pns]
    return {
        "tokenizer_psnr_db": 10 * math.log10(1 / (se / n)),
        "codebook_usage": used.any(0).float().mean().item(),
        "codebook_usage_per_scale": [used[si].sum().item() / possible[si] for si in range(len(pns))],
    }


@torch.no_grad()
def var_metrics(var: VAR, vae: VQVAE, images: torch.Tensor, labels: torch.Tensor, batch: int = 128) -> dict:
    """Held-out CE and per-scale accuracy of the teacher-forced transformer (labels never dropped)."""
    losses, correct, counts = [], torch.zeros(len(var.begin_ends)), torch.zeros(len(var.begin_ends))
    for i in range(0, len(images), batch):
        idx, x = vae.img_to_var_input(images[i:i + batch])
        gt = torch.cat(idx, 1)
        logits = var(labels[i:i + batch], x)
        losses.append(next_scale_loss(logits, gt).item() * len(gt))
        hit = logits.argmax(-1) == gt
        for si, (b, e) in enumerate(var.begin_ends):
            correct[si] += hit[:, b:e].sum().item()
            counts[si] += hit[:, b:e].numel()
    return {"var_val_loss": sum(losses) / len(images), "var_val_acc_per_scale": (correct / counts).tolist()}


# --------------------------------------------------------------------------------- trainers
class Trainer:
    """What both trainings share: optimiser, schedule, checkpoints, logging, the loop."""

    def __init__(self, cfg: TrainConfig, out: str | os.PathLike, resume: bool = False, progress: bool = True,
                 data: ImageData | None = None):
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.d = setup_distributed()
        torch.manual_seed(cfg.seed)
        self.data = data or load_data(cfg.data)
        self.model = self.build_model().to(self.d.device)
        self.opt = torch.optim.AdamW(self.optim_groups(), lr=0.0, betas=cfg.betas, eps=1e-8, weight_decay=0.0)
        self.step, self.history = 0, []
        last = self.out / "last.pt"
        if resume and last.exists():
            self.restore(load_checkpoint(last))
        elif resume and self.d.main:
            print(f"--resume: no {last} yet, starting from scratch", file=sys.stderr)
        self.ddp = self.model
        if self.d.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model)

    # --- to be filled in by the two trainers
    def build_model(self):
        raise NotImplementedError

    def train_step(self, step: int) -> dict:
        raise NotImplementedError

    def evaluate(self) -> dict:
        raise NotImplementedError

    def optim_groups(self):
        return param_groups(self.model)

    # --- checkpoints
    def state(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "kind": self.cfg.kind, "model_config": asdict(self.model.cfg),
                "train_config": asdict(self.cfg), "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "rng": torch.get_rng_state(), "history": self.history,
                **self.extra_state()}

    def extra_state(self) -> dict:
        return {}

    def restore(self, ckpt: dict):
        if ckpt["kind"] != self.cfg.kind:
            raise ValueError(f"{self.out / 'last.pt'} holds a {ckpt['kind']} run, not a {self.cfg.kind} run")
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"])
        self.step, self.history = ckpt["step"], list(ckpt["history"])
        self.restore_extra(ckpt)

    def restore_extra(self, ckpt: dict):
        pass

    def save(self):
        if not self.d.main:
            return
        save_checkpoint(self.state(), self.out / "last.pt")
        tmp = self.out / ".log.jsonl.tmp"
        tmp.write_text("".join(json.dumps(h) + "\n" for h in self.history))
        os.replace(tmp, self.out / "log.jsonl")
        self.plot()

    def plot(self):
        """loss.png: every logged loss over the steps (a Figure without pyplot, so a notebook's
        backend is left alone)."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            return
        if not self.history:
            return
        keys = [k for k in self.history[-1] if k.startswith("loss")]
        fig = Figure(figsize=(6, 3.5))
        ax = fig.subplots()
        steps = [h["step"] for h in self.history]
        for k in keys:
            ax.plot(steps, [h.get(k, float("nan")) for h in self.history], label=k)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.set_title(f"{self.cfg.kind} ({self.cfg.preset})")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(self.out / "loss.png", dpi=100)

    # --- the loop
    def run(self) -> dict:
        cfg = self.cfg
        if self.d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        bar = None
        if self.progress and self.d.main:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"{cfg.kind} {cfg.preset}", dynamic_ncols=True)
        t0, seen = time.perf_counter(), 0
        while self.step < cfg.steps:
            self.model.train()
            apply_schedule(self.opt, self.step, peak_lr=cfg.lr, wd=cfg.wd, wd_end=cfg.wd_end, wp_it=cfg.warmup,
                           max_it=cfg.steps, sche=cfg.sche, wp0=cfg.wp0, wpe=cfg.wpe)
            with torch.autocast(self.d.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss, metrics, n_items = self.train_step(self.step)
            loss.backward()
            if cfg.clip > 0:
                metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip).item()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.after_step(self.step)
            self.step += 1
            seen += n_items
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                rate = seen / (time.perf_counter() - t0)
                entry = {"step": self.step, "lr": self.opt.param_groups[0]["lr"], **metrics,
                         f"{self.unit}_per_s": rate}
                self.history.append(entry)
                if bar is not None:
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", **{f"{self.unit}/s": f"{rate:.0f}"})
            if bar is not None:
                bar.update(1)
            if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                self.save()
        if bar is not None:
            bar.close()
        self.model.eval()
        return self.evaluate() if self.d.main else {}

    def after_step(self, step: int):
        pass


class TokenizerTrainer(Trainer):
    unit = "img"

    def build_model(self):
        return VQVAE(VQVAEConfig(**self.cfg.model))

    def optim_groups(self):
        # no decay on biases, norms and the codebook (decay would pull codes towards 0)
        return param_groups(self.model, no_wd_keys=("embedding", "norm"))

    def __init__(self, *args, **kwargs):
        self.usage_SV, self.window_usage = None, {}
        super().__init__(*args, **kwargs)
        if self.usage_SV is None:
            self.usage_SV = torch.zeros(len(self.model.cfg.patch_nums), self.model.cfg.vocab_size, dtype=torch.long)

    def extra_state(self):
        return {"usage_SV": self.usage_SV, "window_usage": self.window_usage}

    def restore_extra(self, ckpt):
        self.usage_SV = ckpt["usage_SV"]
        self.window_usage = dict(ckpt.get("window_usage", {}))   # logged until the next restart

    def global_batch(self, step: int) -> torch.Tensor:
        cfg = self.cfg
        idx = batch_indices(step, cfg.batch_size, len(self.data.train), cfg.seed)
        x = self.data.train[idx]
        if cfg.max_shift > 0:
            from .data import random_shift
            x = random_shift(x, cfg.max_shift, fill=1.0, generator=step_generator(cfg.seed, step))
        return x

    def train_step(self, step):
        x = local_slice(self.global_batch(step), self.d).to(self.d.device)
        rec, vq_loss, usage = self.ddp(x)
        rec_loss = F.mse_loss(rec.float(), x)
        if self.d.world > 1:
            dist.all_reduce(usage)
        self.usage_SV += usage.cpu()
        loss = rec_loss + vq_loss
        return loss, {"loss": loss.item(), "loss_rec": rec_loss.item(), "loss_vq": vq_loss.item(),
                      "psnr_db": 10 * math.log10(4 / max(rec_loss.item(), 1e-12)), **self.window_usage}, \
            x.shape[0] * self.d.world

    def expected_coverage(self) -> list[float]:
        """Per scale: the fraction of the codes it could use (min(V, n pn^2)) that ``n = usage_ref``
        images would use if their tokens were drawn like this window's. Sum over codes v of
        P(v appears among the n pn^2 tokens) = 1 - (1 - p_v)^(n pn^2): the held-out usage to expect."""
        V, n = self.model.cfg.vocab_size, self.cfg.usage_ref
        p_SV = self.usage_SV.double() / self.usage_SV.sum(1, keepdim=True).clamp_min(1)
        out = []
        for p_V, pn in zip(p_SV, self.model.cfg.patch_nums):
            draws = n * pn * pn
            out.append((1 - (1 - p_V) ** draws).sum().item() / min(V, draws))
        return out

    @torch.no_grad()
    def after_step(self, step: int):
        """At the end of each window of ``restart_every`` steps: re-seed the dead codes, then give every
        scale whose expected coverage is below ``scale_floor`` some of the least-used codes."""
        every = self.cfg.restart_every
        if every <= 0 or (step + 1) % every:
            return
        q, V = self.model.quantize, self.model.cfg.vocab_size
        hits = self.usage_SV.sum(0)                    # (V,) picks of each code, all scales
        used = hits > 0
        dead = torch.nonzero(~used).flatten()
        cover = self.expected_coverage()
        # monitoring: the fraction of the codebook each scale used in this window, and its coverage
        self.window_usage = {"codebook_used": used.float().mean().item(),
                             **{f"used_s{si}": (u > 0).float().mean().item() for si, u in enumerate(self.usage_SV)},
                             **{f"cover_s{si}": c for si, c in enumerate(cover)}}
        # codes each scale is short of its floor (at most V/16 a window, so the codebook moves slowly)
        short = {}
        for si, (c, pn) in enumerate(zip(cover, self.model.cfg.patch_nums)):
            if c < self.cfg.scale_floor:
                want = math.ceil((self.cfg.scale_floor - c) * min(V, self.cfg.usage_ref * pn * pn))
                short[si] = min(want, max(1, V // 16))
        if len(dead) or short:
            # candidate vectors: what each scale still had to explain, on this step's global batch
            f = self.model.encode(self.global_batch(step).to(self.d.device))
            res = q.residuals_per_scale(f)
            g = step_generator(self.cfg.seed, step, stream=1)
            moved = torch.zeros(V, dtype=torch.bool)
            if len(dead):
                si = torch.randint(0, len(res), (len(dead),), generator=g)       # scales drawn evenly
                pick = torch.stack([res[s][torch.randint(0, len(res[s]), (1,), generator=g)[0]] for s in si.tolist()])
                q.embedding.weight[dead] = pick.to(q.embedding.weight.dtype)
                moved[dead] = True
            for si, n in short.items():
                # the least-used codes not moved yet, placed on distinct residuals of that scale
                rows = torch.randperm(len(res[si]), generator=g)[:n]
                codes = torch.where(moved, torch.inf, hits.double()).argsort(stable=True)[:len(rows)]
                q.embedding.weight[codes] = res[si][rows].to(q.embedding.weight.dtype)
                moved[codes] = True
            for state in self.opt.state.get(q.embedding.weight, {}).values():   # forget their Adam moments
                if torch.is_tensor(state) and state.shape == q.embedding.weight.shape:
                    state[moved] = 0
        self.usage_SV.zero_()

    def evaluate(self) -> dict:
        return tokenizer_metrics(self.model.eval(), self.data.heldout.to(self.d.device))


class VARTrainer(Trainer):
    unit = "tok"

    def __init__(self, *args, **kwargs):
        cfg = args[0] if args else kwargs["cfg"]
        if not cfg.tokenizer:
            raise ValueError("VAR training needs a trained tokenizer: pass --tokenizer PATH/last.pt")
        self.vae = model_from_checkpoint(cfg.tokenizer)
        for p in self.vae.parameters():
            p.requires_grad_(False)
        super().__init__(*args, **kwargs)
        self.vae.to(self.d.device)
        self.tokens = self.build_token_cache() if cfg.token_cache else None

    def build_model(self):
        t = self.vae.cfg
        kw = dict(vocab_size=t.vocab_size, z_channels=t.z_channels, patch_nums=t.patch_nums,
                  num_classes=len(self.data.classes))
        kw.update(self.cfg.model)
        return VAR(VARConfig(**kw))

    @torch.no_grad()
    def build_token_cache(self) -> torch.Tensor:
        """Tokens of every training image under every shift: (n_shifts, N, L) int16/int32."""
        out = []
        for dy, dx in shift_offsets(self.cfg.max_shift):
            toks = []
            for i in range(0, len(self.data.train), 256):
                x = shift(self.data.train[i:i + 256], dy, dx).to(self.d.device)
                toks.append(torch.cat(self.vae.img_to_idx(x), 1).cpu())
            out.append(torch.cat(toks))
        dtype = torch.int16 if self.vae.cfg.vocab_size < 2 ** 15 else torch.int32
        return torch.stack(out).to(dtype)

    def global_batch(self, step: int):
        cfg = self.cfg
        idx = batch_indices(step, cfg.batch_size, len(self.data.train), cfg.seed)
        g = step_generator(cfg.seed, step)
        variant = torch.randint(0, len(shift_offsets(cfg.max_shift)), (cfg.batch_size,), generator=g)
        drop = torch.rand(cfg.batch_size, generator=g) < self.model.cfg.cond_drop_rate
        return idx, variant, drop

    def train_step(self, step):
        idx, variant, drop = (local_slice(t, self.d) for t in self.global_batch(step))
        labels = self.data.train_labels[idx].to(self.d.device)
        if self.tokens is not None:
            gt_BL = self.tokens[variant, idx].long().to(self.d.device)
        else:   # re-encode every batch, as the official trainer does
            offs = shift_offsets(self.cfg.max_shift)
            x = torch.stack([shift(self.data.train[i][None], *offs[v])[0] for i, v in zip(idx.tolist(), variant.tolist())])
            with torch.no_grad():
                gt_BL = torch.cat(self.vae.img_to_idx(x.to(self.d.device)), 1)
        idx_list = [gt_BL[:, b:e] for b, e in self.model.begin_ends]
        with torch.no_grad():
            x_BLCv = self.vae.quantize.idx_to_var_input(idx_list)
        logits = self.ddp(labels, x_BLCv, cond_drop_B=drop.to(self.d.device))
        loss = next_scale_loss(logits, gt_BL, self.cfg.label_smoothing)
        with torch.no_grad():
            hit = logits.argmax(-1) == gt_BL
            ce = F.cross_entropy(logits.transpose(1, 2), gt_BL, reduction="none")
            per_scale = {}
            for si, (b, e) in enumerate(self.model.begin_ends):
                per_scale[f"loss_s{si}"] = ce[:, b:e].mean().item()
                per_scale[f"acc_s{si}"] = hit[:, b:e].float().mean().item()
        return loss, {"loss": loss.item(), "acc": hit.float().mean().item(), **per_scale}, gt_BL.numel() * self.d.world

    def evaluate(self) -> dict:
        return var_metrics(self.model.eval(), self.vae, self.data.heldout.to(self.d.device),
                           self.data.heldout_labels.to(self.d.device))


def trainer(cfg: TrainConfig, out, resume=False, progress=True, data=None) -> Trainer:
    cls = TokenizerTrainer if cfg.kind == "tokenizer" else VARTrainer
    return cls(cfg, out, resume=resume, progress=progress, data=data)


# ------------------------------------------------------------------------------------- CLI
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m varlib.train", description="Train the tokenizer or VAR.")
    ap.add_argument("kind", choices=["tokenizer", "var"])
    ap.add_argument("--preset", default="tiny", help="named settings: tiny (seconds, for tests) or emoji32 (the book's)")
    ap.add_argument("--out", required=True, help="run folder: DIR/last.pt, DIR/log.jsonl, DIR/loss.png")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--save-every", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--data", help="emoji32, shapes or folder:PATH")
    ap.add_argument("--tokenizer", help="var: the tokenizer checkpoint (a tokenizer run's last.pt)")
    ap.add_argument("--no-token-cache", action="store_true", help="var: re-encode every batch (slow)")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    ap.add_argument("--resume", action="store_true", help="continue from DIR/last.pt with the same command line")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    cfg = preset(args.kind, args.preset, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                 save_every=args.save_every, seed=args.seed, data=args.data, tokenizer=args.tokenizer,
                 bf16=args.bf16 or None, token_cache=False if args.no_token_cache else None)
    t = trainer(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    metrics = t.run()
    if t.d.main:
        print(json.dumps({"step": t.step, **metrics}))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
