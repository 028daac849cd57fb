"""LoRAtorio maths as small pure tensor functions (torch only, no weights, devices or I/O).

The method is "LoRAtorio: An intrinsic approach to LoRA skill composition", arXiv:2508.11624
(https://arxiv.org/abs/2508.11624). At every denoising step each LoRA i gives a noise
prediction eps_i; the base model gives eps_0. The latent plane is cut into p x p patches,

    s_ij     = cos(eps_i[patch j], eps_0[patch j])            (patch_cosine_similarity)
    Omega_ij = SoftMin_i(s_ij / tau) = softmax_i(-s_ij / tau)  (softmin_weights)
    eps_c    = sum_i Omega_i * eps_i^c                          (weighted_sum)
    eps_u    = lambda * eps_0^u + (1 - lambda) * sum_i Omega_i * eps_i^u   (recentred_uncond)
    eps      = eps_u + g * (eps_c - eps_u)                      (classifier_free_guidance)

"Dynamic selection" keeps, per patch, only the k LoRAs that diverge most from the base
(lowest s_ij) before the SoftMin (topk_divergence_mask).

Shape conventions: a stack of N predictions is ``(N, B, C, H, W)``; one prediction is
``(B, C, H, W)``; per-patch quantities are ``(N, B, Hp, Wp)`` with ``Hp = ceil(H / p)``.
Latent sizes that p does not divide are handled by zero padding: zeros change neither the dot
products nor the norms in a cosine, so a border patch is simply a smaller patch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "patch_grid",
    "patch_sums",
    "patch_cosine_similarity",
    "topk_divergence_mask",
    "softmin_weights",
    "patch_weights_to_pixels",
    "spatial_prior",
    "weighted_sum",
    "recentred_uncond",
    "classifier_free_guidance",
    "mix_guidance",
    "loratorio_weights",
    "loratorio_predictions",
]


def _check_stack(eps_stack: torch.Tensor, eps_ref: torch.Tensor) -> None:
    if eps_stack.ndim != 5 or eps_ref.ndim != 4:
        raise ValueError(
            f"expected a stack (N, B, C, H, W) and a reference (B, C, H, W), got {tuple(eps_stack.shape)} "
            f"and {tuple(eps_ref.shape)}"
        )
    if eps_stack.shape[1:] != eps_ref.shape:
        raise ValueError(f"stack {tuple(eps_stack.shape)} does not match reference {tuple(eps_ref.shape)}")


def patch_grid(height: int, width: int, p: int) -> tuple[int, int]:
    """Number of p x p patches along each axis, counting a partial border patch: ``(ceil(H/p), ceil(W/p))``."""
    if p < 1:
        raise ValueError(f"patch size must be >= 1, got {p}")
    return math.ceil(height / p), math.ceil(width / p)


def patch_sums(x: torch.Tensor, p: int) -> torch.Tensor:
    """Sum of ``x (..., H, W)`` over each p x p patch, zero-padding the bottom/right border.

    Returns ``(..., ceil(H/p), ceil(W/p))``.
    """
    h, w = x.shape[-2:]
    hp, wp = patch_grid(h, w, p)
    x = F.pad(x, (0, wp * p - w, 0, hp * p - h))
    x = x.reshape(*x.shape[:-2], hp, p, wp, p)
    return x.sum(dim=(-3, -1))


def patch_cosine_similarity(
    eps_stack: torch.Tensor, eps_ref: torch.Tensor, p: int, eps: float = 1e-8
) -> torch.Tensor:
    """Cosine similarity s_ij between each prediction's patch j and the reference's patch j.

    Eq. (LoRAtorio, arXiv:2508.11624, Sec. 3): a patch is p x p latent pixels and all channels.

    Args:
        eps_stack: ``(N, B, C, H, W)`` predictions of the N LoRAs.
        eps_ref: ``(B, C, H, W)`` prediction of the base model.
        p: patch side in latent pixels.
        eps: floor on the product of norms (an all-zero patch has similarity 0).

    Returns:
        ``(N, B, ceil(H/p), ceil(W/p))`` float32 similarities in [-1, 1].
    """
    _check_stack(eps_stack, eps_ref)
    # In float32 whatever the model's dtype: in float16 the eps floor underflows to 0 (an all-zero
    # patch gives 0/0) and 1 - s, which the SoftMin ranks, is below half precision's resolution.
    eps_stack, ref = eps_stack.float(), eps_ref.float().unsqueeze(0)
    dot = patch_sums((eps_stack * ref).sum(dim=2), p)
    n_stack = patch_sums(eps_stack.square().sum(dim=2), p)
    n_ref = patch_sums(ref.square().sum(dim=2), p)
    return dot / (n_stack * n_ref).sqrt().clamp_min(eps)


def topk_divergence_mask(similarity: torch.Tensor, k: int | None) -> torch.Tensor:
    """Dynamic selection: per patch, True for the k LoRAs that diverge most from the base.

    Divergence is low similarity, so these are the k smallest ``s_ij`` along dim 0. Ties go to
    the lower index (``torch.topk`` order), so exactly ``min(k, N)`` entries per patch are True.

    Args:
        similarity: ``(N, ...)``.
        k: how many to keep; ``None`` or ``k >= N`` keeps all.

    Returns:
        bool tensor shaped like ``similarity``.
    """
    n = similarity.shape[0]
    if k is None or k >= n:
        return torch.ones_like(similarity, dtype=torch.bool)
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    idx = torch.topk(-similarity, k, dim=0).indices
    mask = torch.zeros_like(similarity, dtype=torch.bool)
    return mask.scatter_(0, idx, True)


def softmin_weights(
    similarity: torch.Tensor, tau: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Omega_ij = SoftMin over LoRAs i of s_ij with temperature tau: ``softmax_i(-s_ij / tau)``.

    More weight goes where a LoRA diverges more from the base. Equal similarities give equal
    weights; tau -> 0 tends to a hard choice of the least similar LoRA. Entries where ``mask``
    is False get weight exactly 0 (dynamic top-k).

    Args:
        similarity: ``(N, ...)``.
        tau: temperature, > 0.
        mask: optional bool ``(N, ...)``; every patch must keep at least one entry.

    Returns:
        weights shaped like ``similarity``, summing to 1 over dim 0.
    """
    if tau <= 0:
        raise ValueError(f"temperature tau must be > 0, got {tau}")
    logits = -similarity / tau
    if mask is not None:
        if mask.shape != similarity.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not match similarity {tuple(similarity.shape)}")
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=0)


def patch_weights_to_pixels(weights: torch.Tensor, p: int, height: int, width: int) -> torch.Tensor:
    """Broadcast per-patch weights ``(N, B, Hp, Wp)`` back to pixels ``(N, B, 1, H, W)``."""
    hp, wp = patch_grid(height, width, p)
    if weights.shape[-2:] != (hp, wp):
        raise ValueError(f"weights grid {tuple(weights.shape[-2:])} does not match {(hp, wp)} for p={p}")
    w = weights.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
    return w[..., :height, :width].unsqueeze(2)


def spatial_prior(weights: torch.Tensor, masks: torch.Tensor, p: int, floor: float = 1e-3) -> torch.Tensor:
    """LoRAtorio's SoftMin weights times a spatial prior, renormalised over the LoRAs (ours).

    ``weights`` ``(N, B, Hp, Wp)``; ``masks`` ``(N, B, H, W)`` in [0, 1] at latent resolution, averaged
    over each p x p patch (zero padding, as the similarities are). Where a mask is 0 its LoRA loses
    the patch to the LoRAs whose masks hold there; ``floor`` keeps the plain SoftMin where no mask
    holds at all (every mask 0), and equal masks leave the weights as they were.
    """
    if masks.shape[:2] != weights.shape[:2]:
        raise ValueError(f"masks {tuple(masks.shape)} do not match weights {tuple(weights.shape)}")
    counts = patch_sums(torch.ones_like(masks[:1, :1]), p)
    prior = patch_sums(masks.float(), p) / counts
    if prior.shape != weights.shape:
        raise ValueError(f"masks give a {tuple(prior.shape[-2:])} patch grid, the weights {tuple(weights.shape[-2:])}")
    w = weights.float() * (prior + floor)
    return w / w.sum(dim=0, keepdim=True)


def weighted_sum(eps_stack: torch.Tensor, pixel_weights: torch.Tensor) -> torch.Tensor:
    """sum_i Omega_i * eps_i: ``(N, B, C, H, W)`` x ``(N, B, 1, H, W)`` -> ``(B, C, H, W)``."""
    if pixel_weights.ndim != 5:
        raise ValueError(f"expected pixel weights (N, B, 1, H, W), got {tuple(pixel_weights.shape)}")
    return (eps_stack * pixel_weights).sum(dim=0)


def recentred_uncond(
    base_uncond: torch.Tensor, lora_uncond: torch.Tensor, pixel_weights: torch.Tensor, lam: float
) -> torch.Tensor:
    """Re-centred unconditional prediction: ``lam * eps_0^u + (1 - lam) * sum_i Omega_i eps_i^u``.

    LoRAtorio (arXiv:2508.11624) re-centres guidance so that the unconditional branch is not the
    bare base model; ``lam = 1`` recovers the base unconditional of plain CFG.
    """
    return lam * base_uncond + (1.0 - lam) * weighted_sum(lora_uncond, pixel_weights)


def classifier_free_guidance(pred_uncond: torch.Tensor, pred_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """``eps_u + g (eps_c - eps_u)``: Ho & Salimans (2022), "Classifier-Free Diffusion Guidance", arXiv:2207.12598."""
    return pred_uncond + scale * (pred_cond - pred_uncond)


def loratorio_weights(
    base_cond: torch.Tensor,
    lora_cond: torch.Tensor,
    p: int,
    tau: float,
    k: int | None = None,
) -> torch.Tensor:
    """Per-patch weights Omega ``(N, B, Hp, Wp)`` of the LoRAs' conditional predictions."""
    similarity = patch_cosine_similarity(lora_cond, base_cond, p)
    return softmin_weights(similarity, tau, topk_divergence_mask(similarity, k))


def loratorio_predictions(
    base_cond: torch.Tensor,
    base_uncond: torch.Tensor,
    lora_cond: torch.Tensor,
    lora_uncond: torch.Tensor,
    p: int,
    tau: float,
    lam: float,
    k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LoRAtorio step before guidance: the composed unconditional and conditional predictions.

    Args:
        base_cond, base_uncond: ``(B, C, H, W)`` base model predictions.
        lora_cond, lora_uncond: ``(N, B, C, H, W)`` LoRA predictions.
        p, tau, lam, k: patch side, SoftMin temperature, re-centring weight, top-k (None = all).

    Returns:
        ``(eps_u, eps_c, omega)`` with ``omega`` the per-patch weights ``(N, B, Hp, Wp)``.
    """
    omega = loratorio_weights(base_cond, lora_cond, p, tau, k)
    pixel = patch_weights_to_pixels(omega, p, *base_cond.shape[-2:]).to(lora_cond.dtype)
    eps_c = weighted_sum(lora_cond, pixel)
    eps_u = recentred_uncond(base_uncond, lora_uncond, pixel, lam)
    return eps_u, eps_c, omega


def mix_guidance(
    base_cond: torch.Tensor,
    base_uncond: torch.Tensor,
    lora_cond: torch.Tensor,
    lora_uncond: torch.Tensor,
    guidance_scale: float,
    p: int,
    tau: float,
    lam: float,
    k: int | None = None,
) -> torch.Tensor:
    """The full guided LoRAtorio prediction: CFG on top of :func:`loratorio_predictions`."""
    eps_u, eps_c, _ = loratorio_predictions(base_cond, base_uncond, lora_cond, lora_uncond, p, tau, lam, k)
    return classifier_free_guidance(eps_u, eps_c, guidance_scale)
