"""Held-out figures and a sample grid of a tokenizer + VAR pair.

    python -m varlib.evaluate emoji32 --json runs/eval/emoji32.json
    python -m varlib.evaluate --tokenizer runs/tok/last.pt --var runs/var/last.pt --json out.json

The pair is the shipped one (``varlib/pretrained_models/{name}_*.pt``), or any two files given
with ``--tokenizer`` / ``--var`` (shipping files or training checkpoints; each replaces its part
of the named pair). The data is the held-out split of the data set named in the tokenizer's
``train_config`` (``--data`` to override), the figures are those of ``varlib.train``
(``tokenizer_metrics``, ``var_metrics``). Beside the JSON goes a PNG with the same stem: one row
per class; on the left the coarse-to-fine steps of one sample (the running latent ``f_hat``
decoded after each scale), then the final images of the other samples of that class.

Everything runs on the CPU (the book's models are small); the same seed gives the same grid.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .model import VAR
from .shipped import PRETRAINED_DIR, load_models, pair_paths
from .sampler import sample
from .train import ImageData, load_checkpoint, load_data, tokenizer_metrics, var_metrics
from .vqvae import VQVAE


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def evaluate(vae: VQVAE, var: VAR, data: ImageData) -> dict:
    """Held-out figures of the pair on ``data.heldout`` (N, 3, H, W) in [-1, 1] with its labels (N,).

    Keys: ``tokenizer_psnr_db``, ``codebook_usage`` (fraction of the V codes used anywhere),
    ``codebook_usage_per_scale`` (S fractions of min(V, N pn^2)), ``var_val_loss`` (mean CE),
    ``var_val_acc_per_scale`` (S teacher-forced top-1 accuracies), ``n_heldout``.
    """
    if var.num_classes != len(data.classes):
        raise ValueError(f"the VAR has {var.num_classes} classes but the data has {len(data.classes)}: "
                         f"{data.classes}")
    return {"n_heldout": len(data.heldout), **tokenizer_metrics(vae, data.heldout),
            **var_metrics(var, vae, data.heldout, data.heldout_labels)}


@torch.no_grad()
def coarse_to_fine(vae: VQVAE, var: VAR, labels: torch.Tensor, seed: int = 0, cfg: float = 2.0,
                   top_k: int | None = None, top_p: float = 0.9) -> torch.Tensor:
    """Sample one image per label (B,) and decode it after every scale: (B, S, 3, H, W) in [0, 1].

    ``[:, -1]`` are the final images. top_k None: min(100, V).
    """
    if top_k is None:
        top_k = min(100, var.cfg.vocab_size)
    out = sample(var, vae, len(labels), labels=labels, cfg=cfg, top_k=top_k, top_p=top_p, seed=seed,
                 return_steps=True)
    steps = [vae.decode(f).add(1).mul(0.5) for f in out.fhat_per_scale]
    return torch.stack(steps, 1)


def save_grid(steps: torch.Tensor, classes: list[str], patch_nums, path, title: str = "") -> None:
    """Write the grid PNG. steps: (C, n, S, 3, H, W) in [0, 1], n samples of each of C classes.

    Row c: the S steps of sample 0 of class c (column titles: the scale's side), then the final
    images of samples 1 .. n - 1.
    """
    from matplotlib.figure import Figure   # no pyplot: no global backend, Agg for the PNG

    C, n, S = steps.shape[:3]
    if len(classes) != C or len(patch_nums) != S:
        raise ValueError(f"steps has shape {tuple(steps.shape)} but {len(classes)} classes and "
                         f"{len(patch_nums)} scales were given")
    # columns: S steps, then (if n > 1) a narrow gap and the n - 1 other samples
    widths = [1.0] * S + ([0.25] + [1.0] * (n - 1) if n > 1 else [])
    fig = Figure(figsize=(sum(widths) + 1.6, 1.0 * C + 0.9), layout="constrained")
    axes = fig.subplots(C, len(widths), squeeze=False, gridspec_kw={"width_ratios": widths})
    headers = [f"{p}\u00d7{p}" for p in patch_nums] + [""] + [f"sample {j + 1}" for j in range(1, n)]
    for c in range(C):
        pictures = [steps[c, 0, k] for k in range(S)] + [None] + [steps[c, j, -1] for j in range(1, n)]
        for ax, img, header in zip(axes[c], pictures, headers):
            if img is None:
                ax.set_axis_off()
                continue
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                ax.set_title(header, fontsize=9)
        axes[c, 0].set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def run(tokenizer_path, var_path, json_path, name: str | None = None, data: str | None = None,
        samples_per_class: int = 1, seed: int = 0, cfg: float = 2.0, top_k: int | None = None,
        top_p: float = 0.9) -> dict:
    """Evaluate a pair, write the JSON and the grid PNG beside it; return the JSON's dict."""
    if not isinstance(samples_per_class, int) or samples_per_class < 1:
        raise ValueError(f"samples_per_class must be an integer >= 1, got {samples_per_class!r}")
    t0 = time.perf_counter()
    tokenizer_path, var_path, json_path = Path(tokenizer_path), Path(var_path), Path(json_path)
    if json_path.suffix.lower() == ".png":
        raise ValueError(f"the JSON path {json_path} ends in .png, the name of the grid beside it: use .json")
    vae, var = load_models(tokenizer_path, var_path)
    tok_ckpt, var_ckpt = load_checkpoint(tokenizer_path), load_checkpoint(var_path)
    spec = data or tok_ckpt["train_config"]["data"]
    images = load_data(spec)
    classes = var_ckpt.get("classes") or list(images.classes)
    if list(classes) != list(images.classes):
        raise ValueError(f"{var_path} was trained on the classes {classes}, the data {spec!r} has {images.classes}")
    result = {"name": name, "tokenizer_file": str(tokenizer_path), "var_file": str(var_path),
              "tokenizer_file_bytes": tokenizer_path.stat().st_size, "var_file_bytes": var_path.stat().st_size,
              "tokenizer_params": num_params(vae), "var_params": num_params(var),
              "tokenizer_step": tok_ckpt["step"], "var_step": var_ckpt["step"],
              "data": spec, "classes": list(classes), "vocab_size": vae.cfg.vocab_size,
              "patch_nums": list(vae.cfg.patch_nums), **evaluate(vae, var, images)}

    top_k = min(100, var.cfg.vocab_size) if top_k is None else top_k
    labels = torch.arange(len(classes)).repeat_interleave(samples_per_class)
    steps = coarse_to_fine(vae, var, labels, seed=seed, cfg=cfg, top_k=top_k, top_p=top_p)
    png = json_path.with_suffix(".png")
    label = name or f"{var_path.parent.name}/{var_path.name}"
    more = "" if samples_per_class == 1 else \
        ", then another sample" if samples_per_class == 2 else f", then {samples_per_class - 1} more samples"
    title = (f"{label}: one sample decoded after each scale (tokens per side){more}\n"
             f"cfg {cfg}, top-k {top_k}, top-p {top_p}, seed {seed}")
    save_grid(steps.unflatten(0, (len(classes), samples_per_class)), classes, vae.cfg.patch_nums, png, title)
    result["sampling"] = {"cfg": cfg, "top_k": top_k, "top_p": top_p, "seed": seed,
                          "samples_per_class": samples_per_class}
    result["grid_png"] = str(png)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m varlib.evaluate",
                                 description="Held-out figures (JSON) and sample grid (PNG) of a tokenizer + VAR.")
    ap.add_argument("name", nargs="?", help="shipped pair in --models-dir (default emoji32 unless both files given)")
    ap.add_argument("--json", required=True, help="output JSON; the grid goes beside it with the suffix .png")
    ap.add_argument("--tokenizer", help="tokenizer file (shipping file or training checkpoint) to use instead")
    ap.add_argument("--var", help="VAR file (shipping file or training checkpoint) to use instead")
    ap.add_argument("--models-dir", default=str(PRETRAINED_DIR), help="folder of the shipped pairs")
    ap.add_argument("--data", help="data set of the held-out split (default: the tokenizer's train_config)")
    ap.add_argument("--samples-per-class", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=2.0, help="guidance strength")
    ap.add_argument("--top-k", type=int, help="default min(100, vocabulary size)")
    ap.add_argument("--top-p", type=float, default=0.9)
    args = ap.parse_args(argv)
    tok, var = args.tokenizer, args.var
    if tok is None or var is None:
        args.name = args.name or "emoji32"
        shipped = pair_paths(args.name, args.models_dir)
        tok, var = tok or shipped["tokenizer"], var or shipped["var"]
    result = run(tok, var, args.json, name=args.name, data=args.data, samples_per_class=args.samples_per_class,
                 seed=args.seed, cfg=args.cfg, top_k=args.top_k, top_p=args.top_p)
    print(json.dumps({k: result[k] for k in ("tokenizer_psnr_db", "codebook_usage", "var_val_loss",
                                              "n_heldout", "grid_png")}))


if __name__ == "__main__":
    main()
