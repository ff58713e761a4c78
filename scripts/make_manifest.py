"""Write ``varlib/manifests/released.json``: the state-dict keys and shapes of the released checkpoints.

The manifest is what ``tests/test_checkpoints.py`` compares varlib's models against, so it must
NOT come from varlib: this script spells out the key patterns of the specification
(``shared/var_spec.md`` sections 2.2, 2.3, 2.5, 3 and 6) with plain loops over levels and blocks
and the channel arithmetic written out by hand. It imports neither torch nor varlib.

    python scripts/make_manifest.py            # (re)write the JSON
    python scripts/make_manifest.py --check    # fail if the committed JSON is out of date

Before writing it cross-checks the counts the spec states: 324 VQVAE entries (10 scales),
220 entries for var_d16, and the parameter counts of spec 2 and 3.1.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parents[1] / "varlib" / "manifests" / "released.json"

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)   # spec 1: S = 10, L = 680
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)   # spec 1: S = 10, L = 2240

# Entries that are buffers, not parameters (spec 3.2, 3.3, 3.4, 2.5): excluded from parameter counts.
BUFFER_SUFFIXES = ("lvl_1L", "attn_bias_for_masking", "attn.zero_k_bias", "quantize.ema_vocab_hit_SV")


# ------------------------------------------------------------------------------------ VQVAE
def vqvae_entries(ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z=32, V=4096, S=10, K=4):
    """``[(key, shape)]`` of ``vae_ch160v4096z32.pth`` (spec 2.1-2.5 and 6.1)."""
    out = []

    def conv(name, c_in, c_out, k):
        out.extend([(f"{name}.weight", [c_out, c_in, k, k]), (f"{name}.bias", [c_out])])

    def norm(name, c):   # GroupNorm, affine
        out.extend([(f"{name}.weight", [c]), (f"{name}.bias", [c])])

    def resnet(name, c_in, c_out):
        norm(f"{name}.norm1", c_in)
        conv(f"{name}.conv1", c_in, c_out, 3)
        norm(f"{name}.norm2", c_out)
        conv(f"{name}.conv2", c_out, c_out, 3)
        if c_in != c_out:   # 1x1 shortcut only where the width changes
            conv(f"{name}.nin_shortcut", c_in, c_out, 1)

    def attn(name, c):      # single head, ONE fused qkv conv
        norm(f"{name}.norm", c)
        conv(f"{name}.qkv", c, 3 * c, 1)
        conv(f"{name}.proj_out", c, c, 1)

    def middle(name, c):
        resnet(f"{name}.block_1", c, c)
        attn(f"{name}.attn_1", c)
        resnet(f"{name}.block_2", c, c)

    levels = len(ch_mult)
    top = ch * ch_mult[-1]

    # encoder (spec 2.2): level i goes ch * (1, *ch_mult)[i] -> ch * ch_mult[i]
    conv("encoder.conv_in", 3, ch, 3)
    for i in range(levels):
        c_in, c_out = ch * ((1,) + tuple(ch_mult))[i], ch * ch_mult[i]
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", c_in if j == 0 else c_out, c_out)
        if i == levels - 1:
            for j in range(num_res_blocks):
                attn(f"encoder.down.{i}.attn.{j}", c_out)
        else:
            conv(f"encoder.down.{i}.downsample.conv", c_out, c_out, 3)
    middle("encoder.mid", top)
    norm("encoder.norm_out", top)
    conv("encoder.conv_out", top, z, 3)

    # decoder (spec 2.3): built from the coarsest level down, stored as up.{level}
    conv("decoder.conv_in", z, top, 3)
    middle("decoder.mid", top)
    up = {}
    c_in = top
    for i in reversed(range(levels)):
        keys_before = len(out)
        c_out = ch * ch_mult[i]
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", c_in if j == 0 else c_out, c_out)
        if i == levels - 1:
            for j in range(num_res_blocks + 1):
                attn(f"decoder.up.{i}.attn.{j}", c_out)
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", c_out, c_out, 3)
        up[i] = out[keys_before:]
        del out[keys_before:]
        c_in = c_out
    for i in range(levels):   # list order = resolution level, 0 the finest
        out.extend(up[i])
    norm("decoder.norm_out", ch * ch_mult[0])
    conv("decoder.conv_out", ch * ch_mult[0], 3, 3)

    # quantizer (spec 2.5): usage buffer, K partially shared phis, codebook
    out.append(("quantize.ema_vocab_hit_SV", [S, V]))
    for k in range(K):
        conv(f"quantize.quant_resi.qresi_ls.{k}", z, z, 3)
    out.append(("quantize.embedding.weight", [V, z]))
    conv("quant_conv", z, z, 3)
    conv("post_quant_conv", z, z, 3)
    return out


# -------------------------------------------------------------------------------------- VAR
def var_entries(depth, patch_nums, shared_aln, num_classes=1000, V=4096, Cvae=32, mlp_ratio=4):
    """``[(key, shape)]`` of ``var_d{depth}.pth`` (spec 3.1-3.5 and 6.2; builder: C = 64 depth, H = depth)."""
    C, H = 64 * depth, depth
    L, S, first_l = sum(p * p for p in patch_nums), len(patch_nums), patch_nums[0] ** 2
    hidden = round(C * mlp_ratio)
    out = [
        ("pos_start", [1, first_l, C]),
        ("pos_1LC", [1, L, C]),
        ("lvl_1L", [1, L]),
        ("attn_bias_for_masking", [1, 1, L, L]),
        ("word_embed.weight", [C, Cvae]), ("word_embed.bias", [C]),
        ("class_emb.weight", [num_classes + 1, C]),
        ("lvl_embed.weight", [S, C]),
    ]
    if shared_aln:
        out += [("shared_ada_lin.1.weight", [6 * C, C]), ("shared_ada_lin.1.bias", [6 * C])]
    for i in range(depth):
        b = f"blocks.{i}"
        if shared_aln:
            out.append((f"{b}.ada_gss", [1, 1, 6, C]))
        out += [
            (f"{b}.attn.scale_mul_1H11", [1, H, 1, 1]),   # attn_l2_norm=True in the builder
            (f"{b}.attn.q_bias", [C]),
            (f"{b}.attn.v_bias", [C]),
            (f"{b}.attn.zero_k_bias", [C]),
            (f"{b}.attn.mat_qkv.weight", [3 * C, C]),      # no bias
            (f"{b}.attn.proj.weight", [C, C]), (f"{b}.attn.proj.bias", [C]),
            (f"{b}.ffn.fc1.weight", [hidden, C]), (f"{b}.ffn.fc1.bias", [hidden]),
            (f"{b}.ffn.fc2.weight", [C, hidden]), (f"{b}.ffn.fc2.bias", [C]),
        ]
        if not shared_aln:
            out += [(f"{b}.ada_lin.1.weight", [6 * C, C]), (f"{b}.ada_lin.1.bias", [6 * C])]
    out += [
        ("head_nm.ada_lin.1.weight", [2 * C, C]), ("head_nm.ada_lin.1.bias", [2 * C]),
        ("head.weight", [V, C]), ("head.bias", [V]),
    ]
    return out


def manifest() -> dict:
    """``{released name: [[key, shape], ...]}`` for the six released checkpoints."""
    m = {"vae_ch160v4096z32": vqvae_entries()}
    for depth in (16, 20, 24, 30):
        m[f"var_d{depth}"] = var_entries(depth, PATCH_NUMS_256, shared_aln=False)
    m["var_d36"] = var_entries(36, PATCH_NUMS_512, shared_aln=True)
    return {name: [[k, list(s)] for k, s in entries] for name, entries in m.items()}


# ----------------------------------------------------------------------------- cross-checks
def count(entries, prefix="", buffers=False):
    """Number of elements of the entries under ``prefix`` (parameters, or buffers if asked)."""
    return sum(math.prod(s) for k, s in entries
               if k.startswith(prefix) and k.endswith(BUFFER_SUFFIXES) == buffers)


def cross_check(m: dict) -> list[str]:
    """Compare with the numbers the spec states; return the report lines, raise on a mismatch."""
    lines, errors = [], []
    vae = m["vae_ch160v4096z32"]
    if len(vae) != 324:   # spec 6.1
        errors.append(f"VQVAE has {len(vae)} entries, the spec says 324")
    if len(m["var_d16"]) != 220:   # spec 6.2
        errors.append(f"var_d16 has {len(m['var_d16'])} entries, the spec says 220")
    # spec 2: 108.95 M (encoder 44.11, decoder 64.65, quantizer 0.17), parameters only
    for prefix, want in (("", 108.95), ("encoder.", 44.11), ("decoder.", 64.65), ("quantize.", 0.17)):
        got = round(count(vae, prefix) / 1e6, 2)
        lines.append(f"vae_ch160v4096z32 {prefix or 'all':9s} params {got:8.2f} M (spec {want})")
        if got != want:
            errors.append(f"VQVAE {prefix or 'total'}: {got} M, the spec says {want} M")
    # spec 3.1, parameters only (the buffers lvl_1L, attn_bias_for_masking, zero_k_bias excluded)
    spec_var = {"var_d16": 310.28, "var_d20": 600.92, "var_d24": 1033.40, "var_d30": 2010.02, "var_d36": 2353.89}
    for name, want in spec_var.items():
        got = round(count(m[name]) / 1e6, 2)
        lines.append(f"{name:17s} {len(m[name]):4d} entries, params {got:8.2f} M (spec {want})")
        if got != want:
            errors.append(f"{name}: {got} M parameters, the spec says {want} M")
    if errors:
        raise SystemExit("manifest does not match the spec:\n  " + "\n  ".join(errors))
    return lines


def dumps(m: dict) -> str:
    """JSON with one [key, shape] entry per line, so diffs stay readable."""
    parts = []
    for name, entries in m.items():
        rows = ",\n".join(f"    {json.dumps(e)}" for e in entries)
        parts.append(f"  {json.dumps(name)}: [\n{rows}\n  ]")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only verify that the committed JSON is up to date")
    args = ap.parse_args(argv)
    m = manifest()
    print("\n".join(cross_check(m)))
    text = dumps(m)
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(f"{OUT} is out of date: run python scripts/make_manifest.py")
        print(f"{OUT} is up to date")
        return
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
