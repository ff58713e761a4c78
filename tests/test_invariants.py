"""Properties that must hold whatever the weights: no fixtures needed (random-weight models)."""
import io

import pytest
import torch

from varlib.model import VAR, VARConfig
from varlib.quant import MultiScaleQuantizer
from varlib.sampler import EditSpec, box_mask, draw_fast, sample, sample_top_k_top_p
from varlib.scales import begin_ends, scale_causal_bias, scale_causal_mask, scale_ids
from varlib.vqvae import VQVAE, VQVAEConfig

PNS = (1, 2, 3, 4, 6)


@pytest.fixture(scope="module")
def tiny():
    """A tiny tokenizer (12 px images, latent 6x6) and transformer, random but not near-zero weights."""
    torch.manual_seed(0)
    vae = VQVAE(VQVAEConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                            patch_nums=PNS)).eval()
    var = VAR(VARConfig(vocab_size=64, z_channels=8, num_classes=5, depth=2, width=64, num_heads=2,
                        patch_nums=PNS)).eval()
    with torch.no_grad():   # open the residual branches so that every part matters
        for blk in var.blocks:
            blk.ada_lin[-1].weight.normal_(0, 0.1)
        var.head.weight.normal_(0, 0.3)
    return vae, var


def test_mask_is_scale_causal():
    pns = (1, 2, 3, 5)
    m, d = scale_causal_mask(pns), scale_ids(pns)
    L = sum(p * p for p in pns)
    assert m.shape == (L, L) and m.dtype == torch.bool
    for i in range(L):
        for j in range(L):
            assert m[i, j] == (d[i] >= d[j])
    for b, e in begin_ends(pns):                 # a scale sees itself entirely ...
        assert m[b:e, b:e].all() and not m[b:e, e:].any()   # ... and nothing finer
    bias = scale_causal_bias(pns)
    assert bias.shape == (1, 1, L, L) and torch.equal(bias[0, 0] == 0, m)


def test_forward_never_looks_at_finer_scales(tiny):
    _, var = tiny
    torch.manual_seed(1)
    label = torch.tensor([1, 3])
    x = torch.randn(2, var.L - 1, 8)
    with torch.no_grad():
        base = var(label, x)
        for si, (b, e) in enumerate(var.begin_ends[1:], start=1):
            x2 = x.clone()
            x2[:, b - 1:e - 1] += 1.0                # change the input of scale si only
            out = var(label, x2)
            assert torch.equal(out[:, :b], base[:, :b]), f"scale {si} leaked into coarser scales"
            assert not torch.allclose(out[:, b:], base[:, b:])


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("cfg", [0.0, 2.0])
def test_cache_changes_nothing(tiny, exact, cfg):
    vae, var = tiny
    kw = dict(B=3, labels=torch.tensor([0, 2, 4]), cfg=cfg, top_k=20, top_p=0.9, seed=7, exact=exact,
              return_steps=True)
    a = sample(var, vae, use_cache=True, **kw)
    b = sample(var, vae, use_cache=False, **kw)
    for x, y in zip(a.idx_per_scale, b.idx_per_scale):
        assert torch.equal(x, y)
    for x, y in zip(a.raw_logits_per_scale, b.raw_logits_per_scale):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.images, b.images, atol=1e-5, rtol=1e-5)


def test_teacher_forcing_reproduces_sampler_logits(tiny):
    vae, var = tiny
    labels = torch.tensor([1, 4])
    out = sample(var, vae, 2, labels, cfg=1.5, top_k=10, seed=3, return_steps=True, decode=False)
    x = vae.quantize.idx_to_var_input(out.idx_per_scale)
    raw = torch.cat(out.raw_logits_per_scale, dim=1)
    with torch.no_grad():
        torch.testing.assert_close(var(labels, x), raw[:2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(var(torch.full((2,), var.num_classes), x), raw[2:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("exact", [True, False])
def test_guidance_off_skips_the_unconditional_half(tiny, exact):
    """cfg = 0 with only B sequences gives what the doubled batch gives at cfg = 0."""
    vae, var = tiny
    kw = dict(B=2, labels=torch.tensor([0, 3]), cfg=0.0, top_k=1, seed=11, exact=exact, return_steps=True)
    single = sample(var, vae, **kw)
    doubled = sample(var, vae, uncond_half=True, **kw)
    assert single.raw_logits_per_scale[-1].shape[0] == 2 and doubled.raw_logits_per_scale[-1].shape[0] == 4
    for x, y in zip(single.idx_per_scale, doubled.idx_per_scale):
        assert torch.equal(x, y)
    torch.testing.assert_close(single.images, doubled.images, atol=1e-5, rtol=1e-5)


def test_seeded_sampling_is_reproducible(tiny):
    vae, var = tiny
    a = sample(var, vae, 2, None, cfg=1.0, top_k=30, top_p=0.8, seed=5)
    b = sample(var, vae, 2, None, cfg=1.0, top_k=30, top_p=0.8, seed=5)
    c = sample(var, vae, 2, None, cfg=1.0, top_k=30, top_p=0.8, seed=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not all(torch.equal(x, y) for x, y in zip(a.idx_per_scale, c.idx_per_scale))
    assert a.images.shape == (2, 3, 12, 12) and 0 <= a.images.min() and a.images.max() <= 1


def test_fast_draw_has_the_official_distribution():
    """The fast draw (top-k columns, inverse CDF) samples the same filtered distribution."""
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 50) * 2
    n = 40000
    for top_k, top_p in [(0, 0.0), (8, 0.0), (0, 0.7), (10, 0.6)]:
        ref = torch.softmax(sample_top_k_top_p_filtered(logits, top_k, top_p), -1)[0, 0]
        g = torch.Generator().manual_seed(1)
        draws = draw_fast(logits.expand(1, n, 50), top_k, top_p, g).flatten()
        freq = torch.bincount(draws, minlength=50).float() / n
        assert (freq[ref == 0] == 0).all(), "drew a filtered token"
        assert (freq - ref).abs().max() < 4 * (0.25 / n) ** 0.5, (top_k, top_p)


def sample_top_k_top_p_filtered(logits, top_k, top_p):
    from varlib.sampler import filter_top_k_top_p_
    return filter_top_k_top_p_(logits.clone(), top_k, top_p)


def test_reconstruction_error_falls_as_scales_are_added():
    torch.manual_seed(0)
    q = MultiScaleQuantizer(4096, 4, (1, 2, 3, 4, 6, 8))
    f = torch.randn(4, 4, 8, 8)
    errors = [(f_hat - f).square().mean().item() for f_hat in q.f_to_fhat_per_scale(f)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors


def test_editing_keeps_the_reference_where_asked(tiny):
    vae, var = tiny
    torch.manual_seed(2)
    img = torch.rand(2, 3, 12, 12) * 2 - 1
    ref = vae.img_to_idx(img)
    mask = box_mask(PNS[-1], (0.0, 0.0, 0.5, 1.0), inpainting=False)     # keep the top half
    out = sample(var, vae, 2, torch.tensor([1, 2]), cfg=1.0, top_k=5, seed=0, edit=EditSpec(ref, mask),
                 return_steps=True)
    last = out.h_per_scale[-1]
    keep = mask.bool()
    torch.testing.assert_close(last[:, :, keep], vae.quantize.lookup(ref[-1], PNS[-1])[:, :, keep])


def test_label_dropout_only_in_training(tiny):
    _, var = tiny
    x = torch.randn(2, var.L - 1, 8)
    null = torch.full((2,), var.num_classes)
    old = var.cfg.cond_drop_rate
    try:
        var.cfg.cond_drop_rate = 1.0
        with torch.no_grad():
            var.train()
            dropped = var(torch.tensor([0, 1]), x)
            var.eval()
            kept = var(torch.tensor([0, 1]), x)
            torch.testing.assert_close(dropped, var(null, x))
            assert not torch.allclose(kept, dropped)
    finally:
        var.cfg.cond_drop_rate = old
        var.eval()


def test_state_dict_round_trip(tiny):
    vae, var = tiny
    for model in (vae, var):
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        buf.seek(0)
        sd = torch.load(buf, weights_only=True)
        clone = type(model)(model.cfg).eval()
        clone.load_state_dict(sd, strict=True)
        for k, v in model.state_dict().items():
            assert torch.equal(v, clone.state_dict()[k]), k
    a = sample(var, vae, 2, torch.tensor([0, 1]), cfg=1.0, top_k=5, seed=1)
    var2 = VAR(var.cfg).eval()
    var2.load_state_dict(var.state_dict())
    b = sample(var2, vae, 2, torch.tensor([0, 1]), cfg=1.0, top_k=5, seed=1)
    assert torch.equal(a.images, b.images)


def test_tokens_round_trip_through_the_tokenizer(tiny):
    """idx -> f_hat -> quantize again gives the same tokens at the first scale (the code is its own
    nearest neighbour) and f_hat after all scales is what idx_to_img decodes."""
    vae, _ = tiny
    img = torch.rand(2, 3, 12, 12) * 2 - 1
    idx, x = vae.img_to_var_input(img)
    assert [t.shape for t in idx] == [(2, p * p) for p in PNS]
    assert x.shape == (2, sum(p * p for p in PNS) - 1, 8)
    recon = vae.img_to_recon_per_scale(img)
    torch.testing.assert_close(recon[-1], vae.idx_to_img(idx))


@pytest.mark.parametrize("share", [0, 1, 2, 4])
@pytest.mark.parametrize("quant_resi", [0.5, 0.0])
def test_refiner_sharing_variants(share, quant_resi):
    """Every way of sharing the phi refiners builds with the official key names and tokenizes
    consistently (tokens -> f_hat equals the quantizer's own f_hat)."""
    torch.manual_seed(0)
    pns = (1, 2, 3, 4)
    q = MultiScaleQuantizer(128, 4, pns, quant_resi=quant_resi, share_quant_resi=share)
    keys = [k for k in q.state_dict() if k.startswith("quant_resi")]
    if quant_resi == 0.0:
        assert keys == []                       # no refiner at all: plain residual quantization
    elif share == 0:
        assert sorted(keys) == sorted(f"quant_resi.{i}.{w}" for i in range(len(pns)) for w in ("weight", "bias"))
    elif share == 1:
        assert sorted(keys) == ["quant_resi.qresi.bias", "quant_resi.qresi.weight"]
    else:
        assert sorted(keys) == sorted(f"quant_resi.qresi_ls.{i}.{w}" for i in range(share) for w in ("weight", "bias"))
    f = torch.randn(2, 4, 4, 4)
    idx = q.f_to_idx(f)
    for a, b in zip(q.idx_to_fhat_per_scale(idx), q.f_to_fhat_per_scale(f)):
        torch.testing.assert_close(a, b)


def test_tiny_32px_tokenizer_and_training_gradients():
    """A 32x32 tokenizer with 4x downsampling (latent 8x8); the training forward sends gradients
    to the encoder (straight-through), the codebook and the refiners."""
    torch.manual_seed(0)
    cfg = VQVAEConfig(vocab_size=256, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                      patch_nums=(1, 2, 3, 4, 6, 8))
    assert cfg.downsample == 4 and cfg.image_size == 32
    vae = VQVAE(cfg)
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    rec, vq_loss, usage = vae(img)
    assert rec.shape == img.shape and usage.shape == (6, 256)
    ((rec - img).square().mean() + vq_loss).backward()
    for name in ("encoder.conv_in.weight", "quantize.embedding.weight", "quantize.quant_resi.qresi_ls.0.weight",
                 "decoder.conv_out.weight"):
        g = dict(vae.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


@pytest.mark.parametrize("shared_aln,l2", [(True, True), (False, False)])
def test_variants_of_the_transformer(tiny, shared_aln, l2):
    """Shared AdaLN and plain (non-L2) attention: the cache and teacher forcing still agree."""
    vae, _ = tiny
    torch.manual_seed(3)
    var = VAR(VARConfig(vocab_size=64, z_channels=8, num_classes=5, depth=2, width=64, num_heads=2,
                        shared_aln=shared_aln, attn_l2_norm=l2, patch_nums=PNS)).eval()
    assert hasattr(var, "shared_ada_lin") == shared_aln
    assert hasattr(var.blocks[0].attn, "scale_mul_1H11") == l2
    kw = dict(B=2, labels=torch.tensor([0, 4]), cfg=1.0, top_k=8, seed=2, return_steps=True, decode=False)
    a, b = sample(var, vae, use_cache=True, **kw), sample(var, vae, use_cache=False, **kw)
    for x, y in zip(a.idx_per_scale, b.idx_per_scale):
        assert torch.equal(x, y)
    x = vae.quantize.idx_to_var_input(a.idx_per_scale)
    with torch.no_grad():
        torch.testing.assert_close(var(torch.tensor([0, 4]), x), torch.cat(a.raw_logits_per_scale, 1)[:2],
                                   atol=1e-5, rtol=1e-5)
