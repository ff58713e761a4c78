"""varlib against the numbers the official implementation produced (../shared/parity).

Every key documented in the fixture README is checked here, except ``training.pt`` (the
training issue). Floats: at most 1e-4 absolute (tolerances in conftest.py); integers: exact.
The configuration comes from ``config.pt``; nothing about one fixture set is hard-coded.
"""
import pytest
import torch
import torch.nn.functional as F

from conftest import ATOL, ATOL_FEAT, RTOL, SAME_RNG_TORCH, load, same_rng, var_config, vqvae_config
from varlib.model import VAR, next_scale_loss
from varlib.sampler import EditSpec, box_mask, gumbel_softmax, sample, sample_top_k_top_p
from varlib.scales import begin_ends, phi_indices
from varlib.vqvae import VQVAE


def close(a, b, atol=ATOL, rtol=RTOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def same_ints(list_a, list_b):
    assert len(list_a) == len(list_b)
    for si, (a, b) in enumerate(zip(list_a, list_b)):
        assert torch.equal(a.long(), b.long()), f"scale {si}: indices differ"


# ------------------------------------------------------------------------------- config.pt
def test_pyramid_bookkeeping(cfg, vae):
    pns = tuple(cfg["var"]["patch_nums"])
    assert [list(be) for be in begin_ends(pns)] == [list(be) for be in cfg["begin_ends"]]
    assert sum(p * p for p in pns) == cfg["L"] and pns[0] ** 2 == cfg["first_l"]
    K = len(cfg["phi_ticks"])
    assert list(phi_indices(len(pns), K)) == list(cfg["phi_index_per_scale"])
    # and the quantizer really picks those modules
    phis = getattr(vae.quantize.quant_resi, "qresi_ls", None)
    if phis is not None:
        picked = [vae.quantize.phi(si) for si in range(len(pns))]
        assert picked == [phis[i] for i in cfg["phi_index_per_scale"]]


def test_initialisation_statistics(cfg):
    """Right after construction, every tensor has the mean/std the official init gives."""
    torch.manual_seed(0)
    model = VAR(var_config(cfg))
    sd = model.state_dict()
    assert {k for k, t in sd.items() if t.is_floating_point()} == set(cfg["init_stats"])
    for name, (mean, std, lo, hi, numel) in cfg["init_stats"].items():
        t = sd[name].float()
        assert t.numel() == numel, name
        if not torch.isfinite(t).all():        # the mask: its -inf entries make stats meaningless
            continue
        if std == 0:
            assert torch.all(t == mean), name
        else:
            assert t.std().item() == pytest.approx(std, rel=0.15), name
            assert abs(t.mean().item() - mean) < 5 * std / numel ** 0.5 + 1e-7, name


# -------------------------------------------------------------------------------- vqvae.pt
@pytest.fixture(scope="module")
def vq():
    return load("vqvae.pt")


def test_encoder(vae, vq):
    with torch.no_grad():
        close(vae.encoder(vq["images"]), vq["enc_out"], atol=ATOL_FEAT)
        close(vae.encode(vq["images"]), vq["f"], atol=ATOL_FEAT)


def test_tokens(vae, vq):
    idx = vae.img_to_idx(vq["images"])
    same_ints(idx, vq["idx_Bl"])
    assert torch.equal(torch.cat(idx, 1), vq["idx_BL"])


def test_tokens_cosine_lookup(cfg, weights, vq):
    vae_z = VQVAE(vqvae_config(cfg, using_znorm=True)).eval()
    vae_z.load_state_dict(weights[0])
    idx = vae_z.quantize.f_to_idx(vq["f"])
    same_ints(idx, vq["idx_Bl_znorm"])
    close(vae_z.quantize.f_to_fhat_per_scale(vq["f"])[-1], vq["fhat_znorm_last"], atol=ATOL_FEAT)


def test_fhat_per_scale(vae, vq):
    from_idx = vae.quantize.idx_to_fhat_per_scale(vq["idx_Bl"])
    from_f = vae.quantize.f_to_fhat_per_scale(vq["f"])
    for si in range(len(from_idx)):
        close(from_idx[si], vq["fhat_per_scale"][si], atol=ATOL_FEAT)
        close(from_f[si], vq["fhat_per_scale"][si], atol=ATOL_FEAT)
    own = vae.quantize.idx_to_fhat_per_scale(vq["idx_Bl"], at_own_resolution=True)
    for a, b in zip(own, vq["fhat_own_res"]):
        close(a, b, atol=ATOL_FEAT)


def test_teacher_forcing_input(vae, vq):
    close(vae.quantize.idx_to_var_input(vq["idx_Bl"]), vq["var_input"], atol=ATOL_FEAT)


def test_decoded_images(vae, vq):
    with torch.no_grad():
        close(vae.decoder(vae.post_quant_conv(vq["fhat_per_scale"][-1])), vq["dec_out"])
        clamped = vq["dec_out"].clamp(-1, 1)
        close(vae.decode(vq["fhat_per_scale"][-1]), clamped)
        close(vae.idx_to_img(vq["idx_Bl"]), clamped)
        close(vae.img_to_recon_per_scale(vq["images"])[-1], clamped)


def test_vq_loss_and_straight_through(vae, vq):
    f = vq["f"].clone().requires_grad_(True)
    f_hat_st, vq_loss, usage = vae.quantize(f)
    close(vq_loss, vq["vq_loss"], atol=ATOL, rtol=1e-5)
    close(f_hat_st, vq["fhat_straight_through"], atol=ATOL_FEAT)
    # straight-through: d f_hat_st / d f is the identity
    f_hat_st.sum().backward()
    assert torch.equal(f.grad, torch.ones_like(f))
    assert usage.sum(1).tolist() == [f.shape[0] * p * p for p in vae.patch_nums]
    rec, loss2, _ = vae(vq["images"])
    close(rec, vq["dec_out"])
    close(loss2, vq["vq_loss"], atol=ATOL, rtol=1e-5)


# --------------------------------------------------------------------------- var_forward.pt
@pytest.fixture(scope="module")
def fw():
    return load("var_forward.pt")


def test_logits(var, fw):
    with torch.no_grad():
        close(var(fw["label_B"], fw["x_BLCv_wo_first_l"]), fw["logits"])


def test_losses_and_gradients(var, fw):
    var.zero_grad(set_to_none=True)
    logits = var(fw["label_B"], fw["x_BLCv_wo_first_l"])
    ce = F.cross_entropy(logits.transpose(1, 2), fw["gt_BL"], reduction="none")
    close(ce, fw["ce_per_token"])
    loss = next_scale_loss(logits, fw["gt_BL"])
    close(loss, fw["loss"], atol=ATOL, rtol=1e-5)
    close(next_scale_loss(logits, fw["gt_BL"], label_smoothing=0.1), fw["loss_label_smooth_0p1"],
          atol=ATOL, rtol=1e-5)
    loss.backward()
    params = dict(var.named_parameters())
    for name, g in fw["grads"].items():
        close(params[name].grad, g, atol=1e-5, rtol=1e-3)
    var.zero_grad(set_to_none=True)


def test_prefix_forward_matches_full(var, fw, cfg):
    """A prefix ending at a scale boundary gives the first rows of the full forward."""
    with torch.no_grad():
        for _, end in cfg["begin_ends"][:-1]:
            out = var(fw["label_B"], fw["x_BLCv_wo_first_l"][:, :end - cfg["first_l"]])
            close(out, fw["logits"][:, :end])


# ----------------------------------------------------------------------------- sampling.pt
def _cases(name, needs=None):
    """The fixture's cases as pytest parameters (those holding key ``needs``, if given)."""
    if not _exists(name):
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"parity fixture {name} not found: "
                                                                  f"set VARLIB_PARITY_DIR"))]
    return [pytest.param(c, id=c["name"]) for c in load(name)["cases"] if needs is None or needs in c]


def _exists(name):
    from conftest import PARITY_DIR
    return (PARITY_DIR / name).exists()


def _labels_arg(case):
    arg = case["label_arg"]
    return case["label_B_used"] if arg == "tensor" else (None if arg == "None" else int(arg))


def skip_unless_same_rng(case):
    if not torch.__version__.startswith(SAME_RNG_TORCH):
        pytest.skip(f"case {case['name']} depends on the random stream of torch {'/'.join(SAME_RNG_TORCH)}x, "
                    f"this is {torch.__version__}")


def _deterministic(case):
    return case["top_k"] == 1 and not case["more_smooth"]


@pytest.mark.parametrize("case", _cases("sampling.pt"))
def test_sampling(var, vae, case):
    if not _deterministic(case) or case["label_arg"] == "None":
        skip_unless_same_rng(case)
    out = sample(var, vae, case["B"], _labels_arg(case), cfg=case["cfg"], top_k=case["top_k"],
                 top_p=case["top_p"], more_smooth=case["more_smooth"], seed=case["g_seed"], exact=True,
                 return_steps=True)
    assert torch.equal(out.labels, case["label_B_used"])
    same_ints(out.idx_per_scale, case["idx_per_scale"])
    close(out.f_hat, case["fhat_final"], atol=ATOL_FEAT)
    for key, ours in (("raw_logits_per_scale", out.raw_logits_per_scale),
                      ("fhat_per_scale", out.fhat_per_scale), ("h_per_scale", out.h_per_scale)):
        for a, b in zip(ours, case.get(key, [])):
            close(a, b)
    if "image" in case:
        close(out.images, case["image"])


@pytest.mark.parametrize("case", _cases("sampling.pt", needs="raw_logits_per_scale"))
def test_teacher_forcing_reproduces_sampler_logits(var, vae, case):
    """The masked parallel forward on the sampled tokens gives the sampler's (cached) logits."""
    x = vae.quantize.idx_to_var_input(case["idx_per_scale"])
    raw = torch.cat(case["raw_logits_per_scale"], dim=1)
    B = case["B"]
    with torch.no_grad():
        close(var(case["label_B_used"], x), raw[:B])
        close(var(torch.full((B,), var.num_classes), x), raw[B:])


# ------------------------------------------------------------------------- sampler_unit.pt
@pytest.fixture(scope="module")
def unit():
    return load("sampler_unit.pt")


def test_top_k_top_p_filter_and_draw(unit):
    for case in unit["sampler_cases"]:
        logits = unit["logits"].clone()
        g = torch.Generator().manual_seed(case["seed"])
        drawn = sample_top_k_top_p(logits, case["top_k"], case["top_p"], g, case["num_samples"])
        assert torch.equal(logits, case["filtered_logits"]), case   # filtering happens in place
        if case["top_k"] == 1 or torch.__version__.startswith(SAME_RNG_TORCH):
            assert torch.equal(drawn, case["samples"]), case


@same_rng
def test_gumbel_softmax(unit):
    for case in unit["gumbel_cases"]:
        g = torch.Generator().manual_seed(case["seed"])
        close(gumbel_softmax(unit["logits"], case["tau"], case["hard"], generator=g), case["out"])


# --------------------------------------------------------------------------------- edit.pt
@pytest.mark.parametrize("case", _cases("edit.pt"))
def test_zero_shot_editing(var, vae, case):
    ref = load("vqvae.pt")["idx_Bl"]
    h = var.cfg.patch_nums[-1]
    mask = box_mask(h, case["box_y0_x0_y1_x1"], case["inpainting"])
    assert torch.equal(mask, case["edit_mask"])
    edit = EditSpec(ref, mask)
    for pn, forced in zip(var.cfg.patch_nums, case["force_gt_per_scale"]):
        assert torch.equal(edit.scale_mask(pn).int().expand_as(forced), forced)
    if not _deterministic(case):
        skip_unless_same_rng(case)
    out = sample(var, vae, case["label_B"].shape[0], case["label_B"], cfg=case["cfg"], top_k=case["top_k"],
                 top_p=case["top_p"], more_smooth=case["more_smooth"], seed=case["g_seed"], exact=True,
                 return_steps=True, edit=edit)
    for a, b in zip(out.h_per_scale, case["h_per_scale"]):
        close(a, b)
    close(out.f_hat, case["fhat_final"], atol=ATOL_FEAT)
    if "image" in case:
        close(out.images, case["image"])
