"""Shared test fixtures: the parity folder (official numbers) and models built from it.

The folder comes from ``$VARLIB_PARITY_DIR`` (default ``../shared/parity`` next to the
repository). Nothing about a particular fixture set is hard-coded here: the configuration is
read from ``config.pt``, so any folder of the same format works.
"""
import os
import pathlib

import pytest
import torch

from varlib.model import VAR, VARConfig
from varlib.vqvae import VQVAE, VQVAEConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
PARITY_DIR = pathlib.Path(os.environ.get("VARLIB_PARITY_DIR", ROOT.parent / "shared" / "parity"))

# Tolerances (the issue allows at most 1e-4 absolute on floats; integers are compared exactly).
ATOL_FEAT = 1e-5      # encoder features, f_hat, transformer inputs
ATOL = 1e-4           # images, logits, losses, gradients, sampler outputs
RTOL = 1e-4

# Random-number parity: the stochastic fixtures reproduce only with a torch that draws the same
# numbers as the one that made them. 2.13 and 2.14 do (checked); other versions may not.
SAME_RNG_TORCH = ("2.13.", "2.14.")
same_rng = pytest.mark.skipif(
    not torch.__version__.startswith(SAME_RNG_TORCH),
    reason=f"stochastic parity needs the random stream of torch {'/'.join(SAME_RNG_TORCH)}x, "
           f"this is {torch.__version__}")


def load(name):
    path = PARITY_DIR / name
    if not path.exists():
        pytest.skip(f"parity fixture {path} not found: set VARLIB_PARITY_DIR to the fixture folder")
    return torch.load(path, weights_only=True, map_location="cpu")


def unpack_state_dict(sd, dq):
    """Undo the fixtures' 4-bit packing: ``code * scale + offset`` with two codes per byte."""
    out = {}
    for k, t in sd.items():
        if k not in dq:
            out[k] = t.clone()
            continue
        scale, offset, shape = dq[k]
        n = 1
        for s in shape:
            n *= s
        lo = (t & 15).to(torch.int16) - 8
        hi = (t >> 4).to(torch.int16) - 8
        codes = torch.stack([lo, hi], 1).reshape(-1)[:n]
        out[k] = codes.reshape(shape).to(torch.float32) * scale + offset
    return out


def vqvae_config(cfg: dict, **overrides) -> VQVAEConfig:
    """Our tokenizer config from the official constructor arguments recorded in config.pt."""
    v = cfg["vqvae"]
    kw = dict(vocab_size=v["vocab_size"], z_channels=v["z_channels"], ch=v["ch"], ch_mult=tuple(v["ch_mult"]),
              num_res_blocks=v["num_res_blocks"], level_attn=v["using_sa"], mid_attn=v["using_mid_sa"],
              norm_groups=v.get("groupnorm_groups", 32), dropout=v["dropout"], beta=v["beta"],
              using_znorm=v["using_znorm"], quant_resi=v["quant_resi"], share_quant_resi=v["share_quant_resi"],
              patch_nums=tuple(v["v_patch_nums"]))
    kw.update(overrides)
    return VQVAEConfig(**kw)


def var_config(cfg: dict) -> VARConfig:
    v, q = cfg["var"], cfg["vqvae"]
    return VARConfig(vocab_size=q["vocab_size"], z_channels=q["z_channels"], num_classes=v["num_classes"],
                     depth=v["depth"], width=v["embed_dim"], num_heads=v["num_heads"], mlp_ratio=v["mlp_ratio"],
                     drop_rate=v["drop_rate"], attn_drop_rate=v["attn_drop_rate"],
                     drop_path_rate=v["drop_path_rate"], norm_eps=v["norm_eps"], shared_aln=v["shared_aln"],
                     cond_drop_rate=v.get("cond_drop_rate_used_in_fixtures", 0.0),
                     attn_l2_norm=v["attn_l2_norm"], patch_nums=tuple(v["patch_nums"]))


@pytest.fixture(scope="session")
def cfg():
    return load("config.pt")


@pytest.fixture(scope="session")
def weights():
    w = load("weights.pt")
    return (unpack_state_dict(w["vae_state_dict"], w["vae_dequant"]),
            unpack_state_dict(w["var_state_dict"], w["var_dequant"]))


@pytest.fixture(scope="session")
def vae(cfg, weights):
    torch.set_num_threads(1)  # the fixtures were made with one thread; fixes the reduction order
    m = VQVAE(vqvae_config(cfg)).eval()
    m.load_state_dict(weights[0], strict=True)
    return m


@pytest.fixture(scope="session")
def var(cfg, weights):
    m = VAR(var_config(cfg)).eval()
    m.load_state_dict(weights[1], strict=True)
    return m
