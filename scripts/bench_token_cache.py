"""VAR training throughput with the token cache against re-encoding every batch, in one run.

    .venv/bin/python scripts/bench_token_cache.py [--tokenizer PATH] [--steps 20]

The official trainer runs the frozen tokenizer on every batch; ``varlib.train`` tokenizes the
data set once per augmentation shift. Both trainers below start from the same weights and
see the same batches; the script prints tokens per second of each, and their ratio, as JSON.
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from varlib.train import load_data, preset, trainer

DEFAULT_TOKENIZER = Path(__file__).resolve().parents[1] / "varlib" / "pretrained_models" / "emoji32_tokenizer.pt"


def tokens_per_second(t, steps: int) -> float:
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        loss, _, n_tokens = t.train_step(step)
        loss.backward()
        t.opt.step()
        t.opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return n_tokens / statistics.median(times[2:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data("emoji32")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cached in (True, False):
            cfg = preset("var", "emoji32", tokenizer=args.tokenizer, token_cache=cached)
            t0 = time.perf_counter()
            t = trainer(cfg, Path(tmp) / str(cached), progress=False, data=data)
            setup = time.perf_counter() - t0
            t.model.train()
            key = "with_cache" if cached else "without_cache"
            out[key] = {"tokens_per_s": round(tokens_per_second(t, args.steps)), "setup_s": round(setup, 1)}
    out["speedup"] = round(out["with_cache"]["tokens_per_s"] / out["without_cache"]["tokens_per_s"], 2)
    out["batch_size"], out["threads"] = cfg.batch_size, args.threads
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
