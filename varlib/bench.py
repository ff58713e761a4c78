"""Speed of varlib on this machine: ``python -m varlib.bench`` prints one JSON object.

Measured in one process, one run (these machines are noisy: compare ratios within a run):

* ``sample_s``: the transformer part of sampling (no decoding), median seconds per call at
  batch 1 and 16, guidance 1.5, top-k 900, top-p 0.96 (the official FID settings);
* ``draw_share_B16``: the fraction of that time spent choosing tokens (filtering and drawing);
* ``train_step_s``: one training step of the transformer at batch 32 (forward, loss, backward,
  gradient clipping, AdamW), inputs already tokenized;
* ``matmul_gflops``: a 1024 x 1024 float32 matmul, the machine's speed during this run.

The configuration is the one of ``notes/perf_baseline.md`` (VAR depth 6, width 256, 4 heads,
scales 1..8, V 4096, Cvae 32), where the official code takes 0.124 s (B=1) and 1.01 s (B=16)
for the same sampling when the matmul probe reads about 190 GFLOP/s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from . import sampler as sampler_mod
from .model import VAR, VARConfig, next_scale_loss
from .vqvae import VQVAE, VQVAEConfig

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8)
OFFICIAL = {"sample_s": {"B1": 0.124, "B16": 1.008}, "draw_share_B16": 0.46, "matmul_gflops": 190.0,
            "train_step_s": {"B32": 1.595}}   # notes/perf_baseline.md, run 3 (medians)


def build(seed: int = 0):
    torch.manual_seed(seed)
    var = VAR(VARConfig(depth=6, width=256, num_heads=4, mlp_ratio=4.0, num_classes=1000, attn_l2_norm=True,
                        drop_path_rate=0.1 * 6 / 24, patch_nums=PATCH_NUMS))
    # Only the quantizer (codebook, refiners) takes part in sampling without decoding, so a
    # narrow tokenizer with the official quantizer settings stands in for the 109 M one.
    vae = VQVAE(VQVAEConfig(vocab_size=4096, z_channels=32, ch=32, patch_nums=PATCH_NUMS))
    return var.eval(), vae.eval()


def timed(fn, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def matmul_gflops(n: int = 1024, runs: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = statistics.median(timed(lambda: a @ b, 3, runs))
    return 2 * n ** 3 / t / 1e9


def sample_fn(var, vae, B):
    labels = torch.arange(B) % 1000
    return lambda: sampler_mod.sample(var, vae, B, labels, cfg=1.5, top_k=900, top_p=0.96, seed=0, decode=False)


def draw_share(var, vae, B: int, runs: int) -> float:
    """Fraction of sampling time inside the token-drawing function (timed by wrapping it)."""
    spent = [0.0]
    original = sampler_mod.draw_fast

    def wrapped(*args, **kwargs):
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        spent[0] += time.perf_counter() - t0
        return out

    sampler_mod.draw_fast = wrapped
    try:
        fn = sample_fn(var, vae, B)
        fn()
        shares = []
        for _ in range(runs):
            spent[0] = 0.0
            t0 = time.perf_counter()
            fn()
            shares.append(spent[0] / (time.perf_counter() - t0))
    finally:
        sampler_mod.draw_fast = original
    return statistics.median(shares)


def train_step_fn(var, vae, B: int):
    g = torch.Generator().manual_seed(0)
    idx = [torch.randint(0, 4096, (B, p * p), generator=g) for p in PATCH_NUMS]
    x_BLCv = vae.quantize.idx_to_var_input(idx).detach()   # the token cache: tokenized once
    gt_BL = torch.cat(idx, dim=1)
    labels = torch.randint(0, 1000, (B,), generator=g)
    opt = torch.optim.AdamW(var.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)

    def step():
        var.train()
        loss = next_scale_loss(var(labels, x_BLCv), gt_BL)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(var.parameters(), 2.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        var.eval()
    return step


def run(runs: int = 7, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    var, vae = build()
    res = {"config": {"depth": 6, "width": 256, "heads": 4, "patch_nums": PATCH_NUMS, "V": 4096, "Cvae": 32,
                      "cfg": 1.5, "top_k": 900, "top_p": 0.96, "threads": threads, "torch": torch.__version__}}
    res["matmul_gflops"] = round(matmul_gflops(), 1)
    res["sample_s"] = {
        "B1": round(statistics.median(timed(sample_fn(var, vae, 1), 3, 3 * runs)), 4),
        "B16": round(statistics.median(timed(sample_fn(var, vae, 16), 2, runs)), 4),
    }
    res["draw_share_B16"] = round(draw_share(var, vae, 16, runs), 3)
    state = {k: v.clone() for k, v in var.state_dict().items()}
    res["train_step_s"] = {"B32": round(statistics.median(timed(train_step_fn(var, vae, 32), 1, runs)), 4)}
    var.load_state_dict(state)
    res["matmul_gflops_after"] = round(matmul_gflops(), 1)
    probe = (res["matmul_gflops"] + res["matmul_gflops_after"]) / 2
    # speed-up over the official numbers, and the same corrected for the machine's speed today
    res["speedup_vs_official"] = {k: round(OFFICIAL["sample_s"][k] / v, 2) for k, v in res["sample_s"].items()}
    res["speedup_vs_official_probe_normalised"] = {
        k: round(OFFICIAL["sample_s"][k] / v * OFFICIAL["matmul_gflops"] / probe, 2)
        for k, v in res["sample_s"].items()}
    res["official_reference"] = OFFICIAL
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="timed repetitions per item (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args(argv)
    res = run(args.runs, args.threads)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
