"""Turn the emoji32 training runs into the files shipped in varlib/pretrained_models/.

The whole recipe (2-core CPU, torch threads = 2, seed 0 from the presets):

    python -m varlib.train tokenizer --preset emoji32 --out runs/tok_emoji32
    python scripts/ship_emoji32.py tokenizer runs/tok_emoji32/last.pt
    python -m varlib.train var --preset emoji32 --tokenizer varlib/pretrained_models/emoji32_tokenizer.pt \\
        --out runs/var_emoji32
    python scripts/ship_emoji32.py var runs/var_emoji32/last.pt

The VAR is trained on the tokens of the *shipped* (float16) tokenizer, so that the pair agrees
exactly. Each shipping file records its command, seed and held-out figures.
"""
import argparse
import json
from pathlib import Path

from varlib.shipped import export, load_shipped
from varlib.train import load_data, model_from_checkpoint, tokenizer_metrics, var_metrics

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "varlib" / "pretrained_models"
COMMANDS = {
    "tokenizer": "python -m varlib.train tokenizer --preset emoji32 --out runs/tok_emoji32 && "
                 "python scripts/ship_emoji32.py tokenizer runs/tok_emoji32/last.pt",
    "var": "python -m varlib.train var --preset emoji32 --tokenizer varlib/pretrained_models/emoji32_tokenizer.pt "
           "--out runs/var_emoji32 && python scripts/ship_emoji32.py var runs/var_emoji32/last.pt",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["tokenizer", "var"])
    ap.add_argument("checkpoint")
    ap.add_argument("--dest", default=str(DEST), help="folder of the shipping files")
    args = ap.parse_args()
    data = load_data("emoji32")
    dest = Path(args.dest) / f"emoji32_{args.kind}.pt"
    if args.kind == "tokenizer":
        # measure the float16-rounded model that ships, not the training checkpoint
        export(args.checkpoint, dest, COMMANDS["tokenizer"])
        metrics = tokenizer_metrics(load_shipped(dest, "tokenizer")[0], data.heldout)
        export(args.checkpoint, dest, COMMANDS["tokenizer"], metrics=metrics)
    else:
        vae = load_shipped(Path(args.dest) / "emoji32_tokenizer.pt", "tokenizer")[0]
        export(args.checkpoint, dest, COMMANDS["var"], classes=data.classes)
        metrics = var_metrics(model_from_checkpoint(dest), vae, data.heldout, data.heldout_labels)
        export(args.checkpoint, dest, COMMANDS["var"], metrics=metrics, classes=data.classes)
    print(json.dumps({"file": str(dest), "bytes": dest.stat().st_size, **metrics}))


if __name__ == "__main__":
    main()
