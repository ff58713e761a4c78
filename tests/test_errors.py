"""Bad input gives a ValueError that names the bad value and what is allowed."""
import pytest
import torch

from varlib.model import VAR, VARConfig
from varlib.sampler import box_mask, sample
from varlib.vqvae import VQVAE, VQVAEConfig

PNS = (1, 2, 4)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    vae = VQVAE(VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                            patch_nums=PNS)).eval()
    var = VAR(VARConfig(vocab_size=32, z_channels=4, num_classes=3, depth=1, width=32, num_heads=1,
                        patch_nums=PNS)).eval()
    return vae, var


def raises(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def test_images_that_do_not_fit(tiny):
    vae, _ = tiny
    raises(r"image size 16x16 does not fit the scales \(1, 2, 4\).*must be 8x8", vae.img_to_idx, torch.zeros(1, 3, 16, 16))
    raises(r"image size 8x6", vae.img_to_idx, torch.zeros(1, 3, 8, 6))
    raises(r"3 channels.*got 1", vae.img_to_idx, torch.zeros(1, 1, 8, 8))
    raises(r"in \[-1, 1\].*\[0.000, 255.000\]", vae.img_to_idx, torch.linspace(0, 255, 192).view(1, 3, 8, 8))
    raises(r"floating point.*torch.uint8", vae.img_to_idx, torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    raises(r"4-D tensor.*\(3, 8, 8\)", vae.img_to_idx, torch.zeros(3, 8, 8))


def test_scales(tiny):
    vae, _ = tiny
    raises(r"strictly increasing, got \(1, 3, 2\)", VARConfig, patch_nums=(1, 3, 2))
    raises(r"strictly increasing", VQVAEConfig, patch_nums=(1, 2, 2, 4))
    raises(r"positive, got \(0, 1\)", VARConfig, patch_nums=(0, 1))
    raises(r"image size 8x8 does not fit the scales \(1, 2\).*must be 4x4", vae.img_to_idx,
           torch.zeros(1, 3, 8, 8), patch_nums=(1, 2))
    raises(r"last scale of patch_nums \(1, 2\) must equal the latent size 4", vae.quantize.f_to_idx,
           torch.zeros(1, 4, 4, 4), patch_nums=(1, 2))
    raises(r"multiple of 32.*widths \[48\]", VQVAEConfig, ch=48)
    raises(r"width \(100\) must be divisible by num_heads \(3\)", VARConfig, width=100, num_heads=3)


def test_class_ids(tiny):
    vae, var = tiny
    x = torch.zeros(1, var.L - 1, 4)
    raises(r"class labels must be in \[0, 3\].*got values in \[7, 7\]", var, torch.tensor([7]), x)
    raises(r"class labels must be in \[0, 3\].*\[-2, -2\]", var, torch.tensor([-2]), x)
    raises(r"integers, got dtype torch.float32", var, torch.tensor([1.0]), x)
    raises(r"class labels must be in \[0, 3\]", sample, var, vae, 1, torch.tensor([9]))
    raises(r"class label 5 is out of range: use 0..2, 3", sample, var, vae, 1, 5)
    raises(r"labels must have shape \(B,\) = \(2,\), got \(3,\)", sample, var, vae, 2, torch.tensor([0, 1, 2]))
    raises(r"scale boundary.*\[0, 4, 20\]", var, torch.tensor([0]), torch.zeros(1, 7, 4))
    raises(r"x_BLCv must be \(B=1, L - first_l, Cvae=4\), got \(1, 20, 5\)", var, torch.tensor([0]),
           torch.zeros(1, 20, 5))


def test_sampling_arguments(tiny):
    vae, var = tiny
    raises(r"cfg \(guidance strength\) must be a finite number >= 0, got -1", sample, var, vae, 1, cfg=-1)
    raises(r"cfg.*got inf", sample, var, vae, 1, cfg=float("inf"))
    raises(r"top_k must be an integer in \[0, 32\] \(0 = off\), got 33", sample, var, vae, 1, top_k=33)
    raises(r"top_k.*got 2.5", sample, var, vae, 1, top_k=2.5)
    raises(r"top_p must be in \[0, 1\) \(0 = off\), got 1.0", sample, var, vae, 1, top_p=1.0)
    raises(r"batch size B must be a positive integer, got 0", sample, var, vae, 0)
    raises(r"box must be \(y0, x0, y1, x1\)", box_mask, 4, (0.5, 0, 0.2, 1), True)


def test_checkpoint_of_another_configuration(tiny):
    vae, var = tiny
    other = VAR(VARConfig(vocab_size=32, z_channels=4, num_classes=3, depth=2, width=32, num_heads=1,
                          patch_nums=PNS))
    with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): blocks\.1\."):
        var.load_state_dict(other.state_dict())
    wider = VAR(VARConfig(vocab_size=32, z_channels=4, num_classes=5, depth=1, width=32, num_heads=1,
                          patch_nums=PNS))
    with pytest.raises(ValueError, match=r"class_emb.weight: checkpoint \(6, 32\) vs model \(4, 32\)"):
        var.load_state_dict(wider.state_dict())
    sd = dict(vae.state_dict())
    del sd["quant_conv.weight"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): quant_conv.weight"):
        vae.load_state_dict(sd)


def test_tokenizer_and_transformer_must_match(tiny):
    vae, _ = tiny
    var = VAR(VARConfig(vocab_size=64, z_channels=4, num_classes=3, depth=1, width=32, num_heads=1,
                        patch_nums=PNS))
    raises(r"V=64.*V=32.*do not belong together", sample, var, vae, 1)
