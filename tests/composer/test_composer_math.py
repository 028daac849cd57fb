"""composer.math against hand-worked answers on small CPU tensors."""
from __future__ import annotations

import math

import pytest
import torch

from composer import math as cm


def test_patch_cosine_similarity_hand_computed():
    # One channel, 2x2 latents, p=1: every pixel is a patch, cosine is sign(a*b) or 0.
    ref = torch.tensor([[[[1.0, 2.0], [3.0, -4.0]]]])
    lora = torch.tensor([[[[2.0, -1.0], [3.0, 4.0]]]]).unsqueeze(0)
    s = cm.patch_cosine_similarity(lora, ref, p=1)
    assert s.shape == (1, 1, 2, 2)
    assert torch.allclose(s[0, 0], torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
    # p=2: one patch; dot = 2 - 2 + 9 - 16 = -7, |a|^2 = 30, |b|^2 = 30 -> -7/30.
    s2 = cm.patch_cosine_similarity(lora, ref, p=2)
    assert s2.shape == (1, 1, 1, 1)
    assert s2.item() == pytest.approx(-7 / 30)


def test_patch_cosine_uses_all_channels():
    ref = torch.tensor([[[[1.0]], [[0.0]]]])  # (B=1, C=2, 1, 1)
    lora = torch.tensor([[[[1.0]], [[1.0]]]]).unsqueeze(0)
    assert cm.patch_cosine_similarity(lora, ref, 1).item() == pytest.approx(1 / math.sqrt(2))


def test_indivisible_latent_size_is_handled():
    torch.manual_seed(0)
    ref = torch.randn(2, 4, 5, 7)
    lora = torch.randn(3, 2, 4, 5, 7)
    s = cm.patch_cosine_similarity(lora, ref, p=2)
    assert s.shape == (3, 2, 3, 4)
    # The bottom-right border patch is the single pixel (4, 6).
    a, b = lora[:, :, :, 4, 6], ref[:, :, 4, 6]
    expected = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    assert torch.allclose(s[:, :, 2, 3], expected, atol=1e-6)
    w = cm.softmin_weights(s, tau=0.1)
    pix = cm.patch_weights_to_pixels(w, 2, 5, 7)
    assert pix.shape == (3, 2, 1, 5, 7)
    assert torch.allclose(pix[:, :, 0, 4, 6], w[:, :, 2, 3])


def test_equal_predictions_give_equal_weights():
    torch.manual_seed(0)
    base = torch.randn(1, 4, 8, 8)
    lora = torch.randn(1, 4, 8, 8)
    stack = torch.stack([lora, lora, lora])
    w = cm.softmin_weights(cm.patch_cosine_similarity(stack, base, 2), tau=0.05)
    assert torch.allclose(w, torch.full_like(w, 1 / 3))


def test_lora_identical_to_base_gets_almost_no_weight():
    torch.manual_seed(0)
    base = torch.randn(1, 4, 8, 8)
    other = torch.randn(1, 4, 8, 8)
    s = cm.patch_cosine_similarity(torch.stack([base, other]), base, 2)
    assert torch.allclose(s[0], torch.ones_like(s[0]), atol=1e-6)
    w = cm.softmin_weights(s, tau=0.05)
    assert w[0].max() < 1e-4
    assert torch.allclose(w[1], torch.ones_like(w[1]), atol=1e-4)


def test_softmin_hand_computed_and_tau_to_zero_is_hard_choice():
    s = torch.tensor([0.2, 0.5, 0.9])
    w = cm.softmin_weights(s, tau=1.0)
    e = torch.exp(-s)
    assert torch.allclose(w, e / e.sum())
    hard = cm.softmin_weights(s, tau=1e-4)
    assert torch.allclose(hard, torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    flat = cm.softmin_weights(s, tau=1e4)
    assert torch.allclose(flat, torch.full((3,), 1 / 3), atol=1e-4)
    with pytest.raises(ValueError):
        cm.softmin_weights(s, tau=0.0)


def test_topk_masks_exactly_k():
    torch.manual_seed(0)
    s = torch.rand(6, 2, 3, 3)
    for k in (1, 2, 5):
        mask = cm.topk_divergence_mask(s, k)
        assert (mask.sum(0) == k).all()
        # The kept ones are the k least similar.
        kept_max = torch.where(mask, s, torch.full_like(s, -1)).amax(0)
        dropped_min = torch.where(mask, torch.full_like(s, 2), s).amin(0)
        assert (kept_max < dropped_min).all()
        w = cm.softmin_weights(s, 0.1, mask)
        assert (w[~mask] == 0).all() and torch.allclose(w.sum(0), torch.ones(2, 3, 3))
    # Ties: exactly k even when all are equal.
    assert (cm.topk_divergence_mask(torch.zeros(4, 1, 2, 2), 2).sum(0) == 2).all()
    assert cm.topk_divergence_mask(s, None).all() and cm.topk_divergence_mask(s, 10).all()


def test_lambda_one_gives_plain_cfg_with_base_uncond():
    torch.manual_seed(0)
    bc, bu = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    lc, lu = torch.randn(3, 1, 4, 6, 6), torch.randn(3, 1, 4, 6, 6)
    eps_u, eps_c, omega = cm.loratorio_predictions(bc, bu, lc, lu, p=2, tau=0.1, lam=1.0)
    assert torch.equal(eps_u, bu)
    out = cm.mix_guidance(bc, bu, lc, lu, 7.5, p=2, tau=0.1, lam=1.0)
    assert torch.allclose(out, bu + 7.5 * (eps_c - bu), atol=1e-5)


def test_recentred_uncond_hand_computed():
    bu = torch.full((1, 1, 2, 2), 2.0)
    lu = torch.stack([torch.full((1, 1, 2, 2), 4.0), torch.full((1, 1, 2, 2), 8.0)])
    w = torch.stack([torch.full((1, 1, 2, 2), 0.25), torch.full((1, 1, 2, 2), 0.75)])
    # 0.5*2 + 0.5*(0.25*4 + 0.75*8) = 1 + 3.5
    assert torch.allclose(cm.recentred_uncond(bu, lu, w, 0.5), torch.full((1, 1, 2, 2), 4.5))


def test_single_lora_is_that_lora_up_to_recentring():
    torch.manual_seed(0)
    bc, bu = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    lc, lu = torch.randn(1, 2, 4, 6, 6), torch.randn(1, 2, 4, 6, 6)
    eps_u, eps_c, omega = cm.loratorio_predictions(bc, bu, lc, lu, p=3, tau=0.1, lam=0.5)
    assert torch.allclose(omega, torch.ones_like(omega))
    assert torch.allclose(eps_c, lc[0])
    assert torch.allclose(eps_u, 0.5 * bu + 0.5 * lu[0])
    eps_u0, _, _ = cm.loratorio_predictions(bc, bu, lc, lu, p=3, tau=0.1, lam=0.0)
    assert torch.allclose(eps_u0, lu[0])


def test_n_copies_equal_one():
    torch.manual_seed(0)
    bc, bu = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    lc, lu = torch.randn(1, 1, 4, 6, 6), torch.randn(1, 1, 4, 6, 6)
    one = cm.mix_guidance(bc, bu, lc, lu, 5.0, 2, 0.1, 0.5)
    three = cm.mix_guidance(bc, bu, lc.expand(3, -1, -1, -1, -1), lu.expand(3, -1, -1, -1, -1), 5.0, 2, 0.1, 0.5)
    assert torch.allclose(one, three, atol=1e-6)


def test_shape_errors_are_raised():
    with pytest.raises(ValueError):
        cm.patch_cosine_similarity(torch.zeros(2, 1, 4, 4, 4), torch.zeros(1, 4, 5, 4), 2)
    with pytest.raises(ValueError):
        cm.patch_cosine_similarity(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4), 2)


def test_full_step_weights_are_the_papers_softmin():
    torch.manual_seed(0)
    base_c, base_u = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    lc, lu = torch.randn(3, 2, 4, 4, 4), torch.randn(3, 2, 4, 4, 4)
    _, _, w = cm.loratorio_predictions(base_c, base_u, lc, lu, 2, 0.05, 0.5)
    assert torch.allclose(w, cm.softmin_weights(cm.patch_cosine_similarity(lc, base_c, 2), 0.05))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_predictions_give_float32_weights(dtype):
    """A half-precision model (float16 on GPUs) gives the same weights as float32, and an
    all-zero patch gives similarity 0, not 0/0 (the eps floor underflows in float16)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 4, 6, 6, generator=g)
    loras = base.unsqueeze(0) + torch.randn(3, 1, 4, 6, 6, generator=g) * torch.tensor([0.05, 0.2, 0.5]).view(3, 1, 1, 1, 1)
    base[..., 0, 0] = 0.0
    loras[..., 0, 0] = 0.0
    s = cm.patch_cosine_similarity(loras.to(dtype), base.to(dtype), 2)
    assert s.dtype == torch.float32 and torch.isfinite(s).all()
    w_half = cm.loratorio_weights(base.to(dtype), loras.to(dtype), 1, 0.25)
    w_full = cm.loratorio_weights(base, loras, 1, 0.25)
    assert torch.isfinite(w_half).all()
    assert w_half[:, :, 0, 0].sub(1 / 3).abs().max() < 1e-6  # the zero patch: no preference
    assert (w_half - w_full).abs().max() < 0.02
