"""Released configurations, the key/shape manifest, loading and downloading checkpoints.

Nothing here touches the network or allocates a big model: the released models are built on
the ``meta`` device (shapes only); real weights are tiny models, plus one full-size tokenizer
file made from the manifest.
"""
import argparse
import dataclasses
import importlib.util
import io
import json
import pathlib
import sys
import urllib.request

import pytest
import torch

from varlib import checkpoints as ckpt
from varlib.checkpoints import (RELEASED, Released, build_released, download, load_pair, load_released,
                                load_state_dict_file, released_manifest)
from varlib.model import VAR, VARConfig
from varlib.scales import PATCH_NUMS_256, PATCH_NUMS_512, PATCH_NUMS_1024
from varlib.vqvae import VQVAE, VQVAEConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
VAE = "vae_ch160v4096z32"
VARS = ["var_d16", "var_d20", "var_d24", "var_d30", "var_d36"]

# Parameter counts in millions, rounded to 0.01 M, parameters only (no buffers), as stated by
# shared/var_spec.md: section 2 (VQVAE and its parts) and the table of section 3.1 (VAR).
SPEC_PARAMS_M = {VAE: 108.95, "var_d16": 310.28, "var_d20": 600.92, "var_d24": 1033.40, "var_d30": 2010.02,
                 "var_d36": 2353.89}
SPEC_VAE_PARTS_M = {"encoder": 44.11, "decoder": 64.65, "quantize": 0.17}
# shared/var_spec.md section 6: entries of the state dicts
SPEC_ENTRIES = {VAE: 324, "var_d16": 220}


def sizes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def diff(got: dict, want: dict) -> str:
    """A readable account of how two {key: shape} dicts differ (for assertion messages)."""
    lines = [f"missing {sorted(set(want) - set(got))[:10]}", f"unexpected {sorted(set(got) - set(want))[:10]}"]
    lines += [f"{k}: {got[k]} != {want[k]}" for k in sorted(set(got) & set(want)) if got[k] != want[k]][:10]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the manifest
def load_script():
    spec = importlib.util.spec_from_file_location("make_manifest", ROOT / "scripts" / "make_manifest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_manifest_is_the_scripts_output():
    script = load_script()
    m = script.manifest()
    script.cross_check(m)   # raises if the spec's entry and parameter counts do not match
    assert (ROOT / "varlib" / "manifests" / "released.json").read_text() == script.dumps(m), \
        "run python scripts/make_manifest.py"
    assert set(m) == set(RELEASED)


def test_manifest_agrees_with_the_spec_text():
    man = {n: released_manifest(n) for n in RELEASED}
    for name, n in SPEC_ENTRIES.items():
        assert len(man[name]) == n
    vae = man[VAE]
    # shapes written out in shared/var_spec.md 6.1
    assert vae["encoder.conv_in.weight"] == (160, 3, 3, 3)
    assert vae["encoder.down.4.attn.0.qkv.weight"] == (1920, 640, 1, 1)
    assert vae["encoder.conv_out.weight"] == (32, 640, 3, 3)
    assert vae["decoder.conv_in.weight"] == (640, 32, 3, 3)
    assert vae["decoder.conv_out.weight"] == (3, 160, 3, 3)
    assert vae["quantize.ema_vocab_hit_SV"] == (10, 4096)
    assert vae["quantize.embedding.weight"] == (4096, 32)
    assert vae["quantize.quant_resi.qresi_ls.3.weight"] == (32, 32, 3, 3)
    shortcuts = sorted(k for k in vae if "nin_shortcut.weight" in k)
    assert shortcuts == ["decoder.up.1.block.0.nin_shortcut.weight", "decoder.up.3.block.0.nin_shortcut.weight",
                         "encoder.down.2.block.0.nin_shortcut.weight", "encoder.down.4.block.0.nin_shortcut.weight"]
    assert vae["decoder.up.1.block.0.nin_shortcut.weight"] == (160, 320, 1, 1)
    assert vae["decoder.up.3.block.0.nin_shortcut.weight"] == (320, 640, 1, 1)
    d16, d36 = man["var_d16"], man["var_d36"]
    assert d16["lvl_1L"] == (1, 680) and d16["attn_bias_for_masking"] == (1, 1, 680, 680)
    assert d16["class_emb.weight"] == (1001, 1024) and d16["blocks.15.attn.scale_mul_1H11"] == (1, 16, 1, 1)
    assert d36["pos_1LC"] == (1, 2240, 2304) and d36["blocks.35.ada_gss"] == (1, 1, 6, 2304)
    assert d36["shared_ada_lin.1.weight"] == (6 * 2304, 2304) and "blocks.0.ada_lin.1.weight" not in d36


# ----------------------------------------------------------------- released configurations
@pytest.mark.parametrize("name", list(RELEASED))
def test_released_model_matches_manifest(name):
    model = build_released(name)
    sd = model.state_dict()
    assert all(t.is_meta for t in sd.values()), "nothing may be allocated on the meta device"
    got, want = sizes(sd), released_manifest(name)
    assert got == want, diff(got, want)


@pytest.mark.parametrize("name", list(RELEASED))
def test_parameter_counts_match_spec(name):
    model = build_released(name)
    count = lambda m: round(sum(p.numel() for p in m.parameters()) / 1e6, 2)
    assert count(model) == SPEC_PARAMS_M[name]
    if name == VAE:
        assert {part: count(getattr(model, part)) for part in SPEC_VAE_PARTS_M} == SPEC_VAE_PARTS_M


@pytest.mark.parametrize("name", list(RELEASED))
def test_buffers_are_persistent_with_the_right_dtypes(name):
    model = build_released(name)
    buffers = dict(model.named_buffers())
    sd = model.state_dict()
    assert set(buffers) <= set(sd), "every buffer must be persistent (the checkpoints carry them)"
    params = dict(model.named_parameters())
    if name == VAE:
        assert set(buffers) == {"quantize.ema_vocab_hit_SV"}
        assert buffers["quantize.ema_vocab_hit_SV"].dtype == torch.float32
        return
    depth = RELEASED[name].config.depth
    assert set(buffers) == {"lvl_1L", "attn_bias_for_masking"} | {f"blocks.{i}.attn.zero_k_bias"
                                                                 for i in range(depth)}
    assert buffers["lvl_1L"].dtype == torch.int64
    assert buffers["attn_bias_for_masking"].dtype == torch.float32
    assert all(buffers[f"blocks.{i}.attn.zero_k_bias"].dtype == torch.float32 for i in range(depth))
    assert not any(k.endswith("zero_k_bias") for k in params), "the key bias is a fixed buffer, not trained"
    assert all(p.dtype == torch.float32 for p in params.values())


@pytest.mark.parametrize("name", VARS)
def test_builder_settings(name):
    e = RELEASED[name]
    d = int(name[len("var_d"):])
    cfg = build_released(name).cfg
    assert (cfg.depth, cfg.width, cfg.num_heads) == (d, 64 * d, d)
    assert cfg.drop_path_rate == pytest.approx(0.1 * d / 24)
    assert (cfg.num_classes, cfg.vocab_size, cfg.z_channels, cfg.mlp_ratio) == (1000, 4096, 32, 4.0)
    assert cfg.attn_l2_norm is True and cfg.cond_drop_rate == 0.1
    assert cfg.shared_aln is (d == 36)
    assert cfg.patch_nums == (PATCH_NUMS_512 if d == 36 else PATCH_NUMS_256)
    assert e.file == f"{name}.pth" and e.kind == "var" and e.tokenizer == VAE
    assert e.url == f"https://huggingface.co/FoundationVision/var/resolve/main/{name}.pth"
    assert RELEASED[VAE].url == "https://huggingface.co/FoundationVision/var/resolve/main/vae_ch160v4096z32.pth"


def test_build_released_copies_the_config():
    model = build_released("var_d16")
    assert model.cfg is not RELEASED["var_d16"].config and model.cfg == RELEASED["var_d16"].config


def test_tokenizer_for_other_resolutions():
    vae512 = build_released(VAE, patch_nums=PATCH_NUMS_512)
    assert vae512.patch_nums == PATCH_NUMS_512
    assert sizes(vae512.state_dict()) == released_manifest(VAE)   # 10 scales as well
    vae1024 = build_released(VAE, patch_nums=PATCH_NUMS_1024)
    got = sizes(vae1024.state_dict())
    assert got.pop("quantize.ema_vocab_hit_SV") == (14, 4096)
    want = released_manifest(VAE)
    want.pop("quantize.ema_vocab_hit_SV")
    assert got == want


def test_bad_names_and_scales():
    with pytest.raises(ValueError, match="var_d16, var_d20"):
        build_released("var_d18")
    with pytest.raises(ValueError, match="only the tokenizer"):
        build_released("var_d16", patch_nums=PATCH_NUMS_512)
    with pytest.raises(ValueError, match="transformer name"):
        load_pair(VAE)
    with pytest.raises(ValueError, match="unknown released model"):
        download("var_d17", cache_dir="unused")


def test_wrong_configuration_names_the_keys():
    d16 = build_released("var_d16")
    with pytest.raises(ValueError) as err:
        d16.load_state_dict(build_released("var_d20").state_dict())
    assert "unexpected keys (52): blocks.16.ada_lin.1.bias" in str(err.value)   # 4 more blocks of 13
    assert "blocks.0.attn.mat_qkv.weight: checkpoint (3840, 1280) vs model (3072, 1024)" in str(err.value)
    with pytest.raises(ValueError) as err:
        d16.load_state_dict(build_released("var_d36").state_dict())
    msg = str(err.value)
    assert "missing keys" in msg and "blocks.0.ada_lin.1.weight" in msg
    assert "unexpected keys" in msg and "blocks.0.ada_gss" in msg
    with pytest.raises(ValueError, match="missing keys .*blocks.0.attn.mat_qkv.weight"):
        d16.load_state_dict(build_released(VAE).state_dict())
    with pytest.raises(ValueError, match="missing keys .*decoder.conv_in.bias(.|\n)*unexpected keys .*attn_bias"):
        build_released(VAE).load_state_dict(d16.state_dict())


# -------------------------------------------------------------------- tiny real checkpoints
TINY_VAE = VQVAEConfig(vocab_size=16, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_nums=(1, 2, 4))
TINY_VAR = VARConfig(depth=2, width=64, num_heads=2, vocab_size=16, z_channels=8, num_classes=10,
                     patch_nums=(1, 2, 4))


def random_model(cls, cfg, seed):
    torch.manual_seed(seed)
    m = cls(cfg)
    with torch.no_grad():   # the init leaves many tensors at 0 or 1: make every one distinct
        for t in m.parameters():
            t.normal_()
        if cls is VQVAE:
            m.quantize.ema_vocab_hit_SV.uniform_()
    return m


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def training_checkpoint(var, vae):
    """The layout ``train.py`` writes (spec 6): trainer -> var_wo_ddp / vae_local."""
    return {"epoch": 3, "iter": 120, "args": {"depth": 2, "pn": "1_2_4"},
            "trainer": {"config": {"alng": 1e-3}, "var_wo_ddp": var.state_dict(), "vae_local": vae.state_dict(),
                        "var_opt": {"state": {}, "param_groups": [{"lr": 1e-4}]}}}


def test_round_trip_plain_and_training_layout(tmp_path):
    var, vae = random_model(VAR, TINY_VAR, 0), random_model(VQVAE, TINY_VAE, 1)
    torch.save(var.state_dict(), tmp_path / "var.pth")
    torch.save(vae.state_dict(), tmp_path / "vae.pth")
    torch.save(training_checkpoint(var, vae), tmp_path / "ar-ckpt-last.pth")
    for var_file, vae_file in (("var.pth", "vae.pth"), ("ar-ckpt-last.pth", "ar-ckpt-last.pth")):
        var2, vae2 = random_model(VAR, TINY_VAR, 2), random_model(VQVAE, TINY_VAE, 3)
        assert not torch.equal(var2.head.weight, var.head.weight)
        var2.load_state_dict(load_state_dict_file(tmp_path / var_file, which="var"))
        vae2.load_state_dict(load_state_dict_file(tmp_path / vae_file, which="vae"))
        assert_same(var2.state_dict(), var.state_dict())
        assert_same(vae2.state_dict(), vae.state_dict())


def test_load_state_dict_file_errors(tmp_path):
    torch.save({"model": {"w": torch.zeros(2)}, "step": 5}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"top-level keys \['model', 'step'\]"):
        load_state_dict_file(tmp_path / "other.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="found a list"):
        load_state_dict_file(tmp_path / "list.pth")
    ck = training_checkpoint(random_model(VAR, TINY_VAR, 0), random_model(VQVAE, TINY_VAE, 1))
    del ck["trainer"]["vae_local"]
    torch.save(ck, tmp_path / "ar-ckpt.pth")
    assert "pos_1LC" in load_state_dict_file(tmp_path / "ar-ckpt.pth", which="var")
    with pytest.raises(ValueError, match="'vae_local'.*'args', 'epoch', 'iter', 'trainer'"):
        load_state_dict_file(tmp_path / "ar-ckpt.pth", which="vae")
    with pytest.raises(ValueError, match="which must be 'var' or 'vae', got 'vqvae'"):
        load_state_dict_file(tmp_path / "ar-ckpt.pth", which="vqvae")
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(depth=16)}, tmp_path / "obj.pth")
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict_file(tmp_path / "obj.pth")


def test_vqvae_loads_a_usage_buffer_of_another_number_of_scales():
    small = random_model(VQVAE, TINY_VAE, 0)                     # 3 scales
    big = VQVAE(dataclasses.replace(TINY_VAE, patch_nums=(1, 2, 3, 4)))
    big.load_state_dict(small.state_dict())
    assert big.quantize.ema_vocab_hit_SV.shape == (4, 16)
    assert torch.equal(big.quantize.embedding.weight, small.quantize.embedding.weight)


@pytest.fixture
def tiny_released(monkeypatch):
    """Register a tiny tokenizer and transformer as if they were released."""
    monkeypatch.setitem(RELEASED, "vae_tiny", Released("vae_tiny", "vae_tiny.pth", "vae", TINY_VAE))
    monkeypatch.setitem(RELEASED, "var_tiny", Released("var_tiny", "var_tiny.pth", "var",
                                                       dataclasses.replace(TINY_VAR, patch_nums=(1, 2, 3, 4)),
                                                       tokenizer="vae_tiny"))


def test_build_released_on_the_cpu(tiny_released):
    var = build_released("var_tiny", device="cpu")   # real, freshly initialised tensors
    assert all(t.device.type == "cpu" for t in var.state_dict().values())
    assert var.lvl_1L.tolist() == [[0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2] + [3] * 16]


def test_load_pair_from_files(tmp_path, tiny_released):
    vae = random_model(VQVAE, TINY_VAE, 0)   # saved with 3 scales, the transformer uses 4
    var = random_model(VAR, RELEASED["var_tiny"].config, 1)
    torch.save(vae.state_dict(), tmp_path / "vae_tiny.pth")
    torch.save(training_checkpoint(var, vae), tmp_path / "ar-ckpt.pth")
    vae2, var2 = load_pair("var_tiny", vae_path=tmp_path / "vae_tiny.pth", var_path=tmp_path / "ar-ckpt.pth")
    assert vae2.patch_nums == var2.cfg.patch_nums == (1, 2, 3, 4)
    assert not vae2.training and not var2.training
    assert not any(p.requires_grad for p in vae2.parameters()) and all(p.requires_grad for p in var2.parameters())
    assert_same(var2.state_dict(), var.state_dict())
    sd = vae.state_dict()
    sd["quantize.ema_vocab_hit_SV"] = torch.zeros(4, 16)     # another S: a fresh (zero) usage buffer
    assert_same(vae2.state_dict(), sd)
    assert all(not t.is_meta for t in [*vae2.state_dict().values(), *var2.state_dict().values()])


def test_load_released_uses_the_cache_and_casts_half_precision(tmp_path, monkeypatch, tiny_released):
    var = random_model(VAR, RELEASED["var_tiny"].config, 0)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in var.state_dict().items()},
               tmp_path / "var_tiny.pth")
    monkeypatch.setenv("VARLIB_CACHE", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("the cache must be used"))
    var2 = load_released("var_tiny")
    assert var2.pos_1LC.dtype == torch.float32 and var2.lvl_1L.dtype == torch.int64
    assert torch.equal(var2.head.weight, var.head.weight.half().float())


def test_load_released_wrong_configuration(tmp_path, tiny_released):
    deeper = random_model(VAR, dataclasses.replace(RELEASED["var_tiny"].config, depth=3), 0)
    torch.save(deeper.state_dict(), tmp_path / "deeper.pth")
    with pytest.raises(ValueError, match=r"unexpected keys .*blocks\.2\.attn"):
        load_released("var_tiny", path=tmp_path / "deeper.pth")
    wider = random_model(VAR, dataclasses.replace(RELEASED["var_tiny"].config, width=128), 0)
    torch.save(wider.state_dict(), tmp_path / "wider.pth")
    with pytest.raises(ValueError, match=r"another shape .*blocks\.0\.ada_lin\.1\.weight: checkpoint \(768, 128\)"):
        load_released("var_tiny", path=tmp_path / "wider.pth")


def test_full_size_tokenizer_file_from_the_manifest(tmp_path):
    # A file with exactly the keys and shapes the spec lists (not made by varlib) loads strictly.
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) for k, s in released_manifest(VAE).items()}
    torch.save(sd, tmp_path / "vae.pth")
    vae = load_released(VAE, path=tmp_path / "vae.pth")
    assert_same(vae.state_dict(), sd)
    del vae
    # 14 scales (1024 px): the file's 10-row usage buffer is replaced by a fresh one
    vae1024 = load_released(VAE, path=tmp_path / "vae.pth", patch_nums=PATCH_NUMS_1024)
    assert vae1024.patch_nums == PATCH_NUMS_1024
    assert torch.equal(vae1024.quantize.ema_vocab_hit_SV, torch.zeros(14, 4096))
    assert torch.equal(vae1024.quantize.embedding.weight, sd["quantize.embedding.weight"])


# ------------------------------------------------------------------------------ downloading
@pytest.fixture
def source(tmp_path):
    data = torch.randint(0, 256, (2_500_000,), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8).numpy().tobytes()   # > 2 chunks of 1 MiB
    path = tmp_path / "server" / "var_d16.pth"
    path.parent.mkdir()
    path.write_bytes(data)
    return path


def files_in(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_file_url_and_cache_hit(tmp_path, source, monkeypatch):
    cache = tmp_path / "cache"
    path = download("var_d16", cache_dir=cache, url=source.as_uri(), progress=False)
    assert path == cache / "var_d16.pth" and path.read_bytes() == source.read_bytes()
    assert files_in(cache) == ["var_d16.pth"]   # no temporary file left behind
    source.unlink()
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("a cache hit must not download"))
    assert download("var_d16", cache_dir=cache, url=source.as_uri()) == path


def test_download_default_folder(tmp_path, source, monkeypatch):
    monkeypatch.setenv("VARLIB_CACHE", str(tmp_path / "env"))
    assert download("var_d16", url=source.as_uri(), progress=False) == tmp_path / "env" / "var_d16.pth"
    monkeypatch.delenv("VARLIB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ckpt.default_cache_dir() == tmp_path / "home" / ".cache" / "varlib"


def test_download_unreachable_url(tmp_path):
    url = (tmp_path / "nowhere" / "var_d16.pth").as_uri()
    with pytest.raises(ConnectionError) as err:
        download("var_d16", cache_dir=tmp_path / "cache", url=url, progress=False)
    assert url in str(err.value) and "by hand" in str(err.value) and "path=" in str(err.value)
    assert files_in(tmp_path / "cache") == []


class FailingResponse(io.BytesIO):
    """A response that announces ``total`` bytes, serves ``good`` of them, then fails with ``error``."""

    def __init__(self, total, good, error):
        super().__init__(b"x" * good)
        self.headers, self.error = {"Content-Length": str(total)}, error

    def read(self, n=-1):
        chunk = super().read(n)
        if not chunk and self.error is not None:
            raise self.error
        return chunk


@pytest.mark.parametrize("error, raised", [(ConnectionResetError("reset by peer"), ConnectionError),
                                           (KeyboardInterrupt(), KeyboardInterrupt),
                                           (None, ConnectionError)])   # None: the stream just stops early
def test_download_interrupted_leaves_no_file(tmp_path, monkeypatch, error, raised):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: FailingResponse(3 << 20, 3 << 19, error))
    cache = tmp_path / "cache"
    with pytest.raises(raised):
        download("var_d16", cache_dir=cache, progress=False)
    assert files_in(cache) == []


def test_download_progress_bars(tmp_path, source, monkeypatch, capsys):
    download("var_d16", cache_dir=tmp_path / "a", url=source.as_uri(), progress=True)   # tqdm
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)   # as if tqdm were not installed
    download("var_d16", cache_dir=tmp_path / "b", url=source.as_uri(), progress=True)
    err = capsys.readouterr().err
    assert "var_d16.pth: 2.4 / 2.4 MiB (100%)" in err
    assert (tmp_path / "b" / "var_d16.pth").read_bytes() == source.read_bytes()


def test_manifest_json_is_well_formed():
    data = json.loads((ROOT / "varlib" / "manifests" / "released.json").read_text())
    for name, entries in data.items():
        keys = [k for k, _ in entries]
        assert len(keys) == len(set(keys)), f"duplicate keys in {name}"
        assert all(isinstance(s, list) and all(isinstance(d, int) and d > 0 for d in s) for _, s in entries)
