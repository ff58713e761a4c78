"""Shipping files (``varlib.shipped``) and the evaluation CLI (``varlib.evaluate``) on tiny models.

Two tiny training runs (4 steps each on a slice of the shapes data) are made once per module,
exported to a temporary models folder as the pair "tiny", then loaded, described and evaluated.
"""
import json
import math
import pathlib
import subprocess
import sys

import pytest
import torch

from varlib import train
from varlib.data import SHAPES
from varlib.evaluate import main as evaluate_main, run as evaluate_run
from varlib.model import VAR
from varlib.shipped import available, export, load_models, pretrained, pretrained_info
from varlib.vqvae import VQVAE

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMANDS = {"tokenizer": "python -m varlib.train tokenizer --preset tiny --steps 4 --out runs/tok",
            "var": "python -m varlib.train var --preset tiny --steps 4 --tokenizer runs/tok/last.pt --out runs/var"}
METRICS = {"tokenizer_psnr_db": 9.5, "codebook_usage_per_scale": [0.1, 0.2, 0.3, 0.4]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"tokenizer": training checkpoint, "var": ..., "ship": folder with tiny_tokenizer.pt, tiny_var.pt}."""
    root = tmp_path_factory.mktemp("runs")
    d = train.load_data("shapes")
    small = train.ImageData(d.train[:64], d.train_labels[:64], d.heldout[:16], d.heldout_labels[:16], d.classes)
    train.trainer(train.preset("tokenizer", "tiny", steps=4, max_shift=0), root / "tok",
                  progress=False, data=small).run()
    cfg = train.preset("var", "tiny", steps=4, max_shift=0, seed=3, tokenizer=str(root / "tok" / "last.pt"))
    train.trainer(cfg, root / "var", progress=False, data=small).run()
    paths = {"tokenizer": root / "tok" / "last.pt", "var": root / "var" / "last.pt", "ship": root / "ship"}
    export(paths["tokenizer"], paths["ship"] / "tiny_tokenizer.pt", COMMANDS["tokenizer"], metrics=METRICS)
    export(paths["var"], paths["ship"] / "tiny_var.pt", COMMANDS["var"], classes=list(SHAPES))
    return paths


def rounded_reference(path):
    """The training checkpoint's model with its float weights rounded through float16."""
    ckpt = train.load_checkpoint(path)
    ckpt["model"] = {k: v.half().float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    return train.model_from_checkpoint(ckpt)


# ------------------------------------------------------------------------------- shipping files
@pytest.mark.parametrize("part", ["tokenizer", "var"])
def test_shipping_file_is_small_float16_and_weights_only(runs, part):
    path = runs["ship"] / f"tiny_{part}.pt"
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    original = train.load_checkpoint(runs[part])
    assert not {"optimizer", "rng", "history", "usage_SV"} & set(shipped)
    assert shipped["model"].keys() == original["model"].keys()
    for k, v in shipped["model"].items():
        o = original["model"][k]
        if o.is_floating_point():
            assert v.dtype == torch.float16, k
            assert torch.equal(v, o.half()), k
        else:
            assert v.dtype == o.dtype and torch.equal(v, o), k
    assert any(not torch.equal(v.float(), original["model"][k]) for k, v in shipped["model"].items()
               if v.is_floating_point())                  # the rounding is real, the round-trip test means something
    for key in ("kind", "model_config", "train_config", "step"):
        assert shipped[key] == original[key], key
    assert shipped["command"] == COMMANDS[part]
    assert shipped["seed"] == original["train_config"]["seed"] == {"tokenizer": 0, "var": 3}[part]
    assert shipped["step"] == 4
    assert shipped["metrics"] == (METRICS if part == "tokenizer" else {})
    assert shipped["classes"] == (list(SHAPES) if part == "var" else None)
    assert path.stat().st_size < runs[part].stat().st_size / 3


def test_pretrained_round_trip_matches_fp16_rounded_originals(runs):
    vae, var = pretrained("tiny", root=runs["ship"])
    assert isinstance(vae, VQVAE) and isinstance(var, VAR)
    assert not vae.training and not var.training
    assert all(not p.requires_grad for p in vae.parameters())
    assert all(t.dtype == torch.float32 for t in [*vae.state_dict().values(), *var.state_dict().values()]
               if t.is_floating_point())
    ref_vae, ref_var = rounded_reference(runs["tokenizer"]), rounded_reference(runs["var"])
    for model, ref in ((vae, ref_vae), (var, ref_var)):
        got, want = model.state_dict(), ref.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)

    x = train.load_data("shapes").heldout[:4]
    with torch.no_grad():
        idx = vae.img_to_idx(x)
        assert all(torch.equal(a, b) for a, b in zip(idx, ref_vae.img_to_idx(x)))
        torch.testing.assert_close(vae.idx_to_img(idx), ref_vae.idx_to_img(idx), rtol=0, atol=1e-6)
        x_in = vae.quantize.idx_to_var_input(idx)
        labels = torch.tensor([0, 1, 2, 5])
        torch.testing.assert_close(var(labels, x_in), ref_var(labels, x_in), rtol=0, atol=1e-5)


def test_pretrained_info_and_available(runs):
    info = pretrained_info("tiny", root=runs["ship"])
    assert available(runs["ship"]) == ["tiny"]
    assert info["name"] == "tiny" and info["classes"] == list(SHAPES)
    for part in ("tokenizer", "var"):
        p = info[part]
        assert "model" not in p
        assert p["command"] == COMMANDS[part] and p["kind"] == part and p["step"] == 4
        assert p["file_bytes"] == pathlib.Path(p["path"]).stat().st_size
    assert (info["tokenizer"]["seed"], info["var"]["seed"]) == (0, 3)
    assert info["tokenizer"]["metrics"] == METRICS
    assert info["var"]["model_config"]["num_classes"] == len(SHAPES)


def test_shipping_file_serves_as_training_checkpoint(runs):
    """``varlib.train`` reads shipping files too (e.g. a shipped tokenizer as ``--tokenizer``)."""
    model = train.model_from_checkpoint(runs["ship"] / "tiny_tokenizer.pt")
    ref = rounded_reference(runs["tokenizer"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


# ------------------------------------------------------------------------------------ evaluate
def test_evaluate_cli_writes_json_and_png(runs, tmp_path):
    out = tmp_path / "eval" / "tiny.json"
    cmd = [sys.executable, "-m", "varlib.evaluate", "tiny", "--models-dir", str(runs["ship"]), "--json", str(out),
           "--samples-per-class", "2", "--seed", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    S, V = 4, 64
    assert r["name"] == "tiny" and r["data"] == "shapes" and r["classes"] == list(SHAPES)
    assert r["n_heldout"] == 64 and r["patch_nums"] == [1, 2, 4, 8] and r["vocab_size"] == V
    assert 0 < r["tokenizer_psnr_db"] < 60
    assert 0 < r["codebook_usage"] <= 1
    assert len(r["codebook_usage_per_scale"]) == S and all(0 < u <= 1 for u in r["codebook_usage_per_scale"])
    assert math.isfinite(r["var_val_loss"]) and 0 < r["var_val_loss"] < 2 * math.log(V)
    assert len(r["var_val_acc_per_scale"]) == S and all(0 <= a <= 1 for a in r["var_val_acc_per_scale"])
    assert r["tokenizer_params"] > 0 and r["var_params"] > 0
    for part in ("tokenizer", "var"):
        assert r[f"{part}_file_bytes"] == (runs["ship"] / f"tiny_{part}.pt").stat().st_size
    assert r["sampling"] == {"cfg": 2.0, "top_k": V, "top_p": 0.9, "seed": 1, "samples_per_class": 2}

    png = out.with_suffix(".png")
    assert r["grid_png"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and img.shape[0] > 300 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05                      # not a blank page


def test_evaluate_training_checkpoints_reuses_train_metrics(runs, tmp_path):
    r = evaluate_run(runs["tokenizer"], runs["var"], tmp_path / "e.json", top_p=0.0, top_k=8)
    vae, var = load_models(runs["tokenizer"], runs["var"])
    d = train.load_data("shapes")
    want = {**train.tokenizer_metrics(vae, d.heldout), **train.var_metrics(var, vae, d.heldout, d.heldout_labels)}
    assert {k: r[k] for k in want} == want
    assert r["name"] is None and r["sampling"]["top_k"] == 8
    assert (tmp_path / "e.png").is_file()


# -------------------------------------------------------------------------------------- errors
def test_missing_name_lists_available(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no pretrained model 'nope'.*available: \['tiny'\]"):
        pretrained("nope", root=runs["ship"])
    with pytest.raises(FileNotFoundError, match=r"available: \['tiny'\]"):
        evaluate_main(["nope", "--models-dir", str(runs["ship"]), "--json", str(tmp_path / "x.json")])
    with pytest.raises(FileNotFoundError, match="none is shipped"):
        pretrained_info("emoji32", root=tmp_path)
    with pytest.raises(ValueError, match="pretrained model name"):
        pretrained("../tiny", root=runs["ship"])


def test_export_and_load_errors(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        export(tmp_path / "missing.pt", tmp_path / "x.pt", "cmd")
    with pytest.raises(ValueError, match="command"):
        export(runs["var"], tmp_path / "x.pt", "  ")
    with pytest.raises(ValueError, match="classes has 2 names but the VAR .* has 6 classes"):
        export(runs["var"], tmp_path / "x.pt", "cmd", classes=["a", "b"])
    with pytest.raises(ValueError, match="metrics must hold only"):
        export(runs["var"], tmp_path / "x.pt", "cmd", metrics={"psnr": torch.tensor(1.0)})
    ckpt = train.load_checkpoint(runs["tokenizer"])
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][key] = ckpt["model"][key] + 1e6
    train.save_checkpoint(ckpt, tmp_path / "big.pt")
    with pytest.raises(ValueError, match=f"{key} does not fit in float16"):
        export(tmp_path / "big.pt", tmp_path / "x.pt", "cmd")
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(ValueError, match="holds a var model, expected a tokenizer model"):
        load_models(runs["var"], runs["tokenizer"])
    with pytest.raises(ValueError, match="samples_per_class"):
        evaluate_run(runs["tokenizer"], runs["var"], tmp_path / "e.json", samples_per_class=0)
