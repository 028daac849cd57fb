"""One converter per LoRA format diffusers cannot read.

Format detection is ``registry.formats.detect_format`` (one detector for the registry and the
composer); loading stays separate (composer.loras); these functions only map dict -> dict.
diffusers reads kohya LoRA/LoCon and diffusers/PEFT files itself (``load_lora_weights``), so the
only conversions here are LyCORIS LoKr and LoHa, which diffusers cannot read. Both are rewritten
*exactly* as kohya LoRA/LoCon factors (``lora_down``/``lora_up``/``alpha``) so that diffusers'
own kohya conversion and PEFT's layers do the rest; no SVD, no approximation:

* LoKr (LyCORIS ``lokr.py``, Yeh et al. 2023, arXiv:2309.14859): ``dW = s * kron(W1, W2)`` with
  ``W = A B`` when decomposed. Because ``kron(A1 B1, A2 B2) = kron(A1, A2) kron(B1, B2)``, the
  delta is the rank-``r1 r2`` product ``up = kron(A1, A2)``, ``down = kron(B1, B2)``; a full
  (undecomposed) factor W is written ``W I`` or ``I W``, whichever gives the smaller rank.
* LoHa (LyCORIS ``loha.py``, FedPara, Hyeon-Woo et al. 2022, arXiv:2108.06098):
  ``dW = s * (A1 B1) o (A2 B2)``; a Hadamard product of two low-rank matrices is the rank-``r1 r2``
  product of the row-wise Khatri-Rao ``up[i, (s,t)] = A1[i,s] A2[i,t]`` and
  ``down[(s,t), j] = B1[s,j] B2[t,j]``.

Conv layers: LyCORIS flattens a kernel ``(out, in, kh, kw)`` to ``(out, in*kh*kw)`` before the
product and reshapes after, so ``down`` reshapes to a ``(rank, in, kh, kw)`` conv and ``up`` is a
1x1 conv, exactly kohya LoCon's layout.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from composer.errors import UnsupportedLoraError

LYCORIS_SUFFIXES = (
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
)


# --------------------------------------------------------------------------------- LyCORIS

def _pop(sd: dict, key: str) -> torch.Tensor | None:
    return sd.pop(key, None)


def _khatri_rao_rows(a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """Row-wise Kronecker (face-splitting) product: ``out[i, s*r2 + t] = a1[i, s] a2[i, t]``."""
    return (a1.unsqueeze(2) * a2.unsqueeze(1)).reshape(a1.shape[0], -1)


def _kohya_entry(out: dict, prefix: str, up: torch.Tensor, down: torch.Tensor, scale: float, conv_shape) -> None:
    rank = down.shape[0]
    if conv_shape is not None:  # (in, kh, kw) -> down is a kh x kw conv, up a 1x1 conv
        down = down.reshape(rank, *conv_shape)
        up = up.reshape(up.shape[0], rank, 1, 1)
    # kohya scale is alpha / rank; fold the LyCORIS scale into alpha.
    out[f"{prefix}.lora_down.weight"] = down.contiguous()
    out[f"{prefix}.lora_up.weight"] = up.contiguous()
    out[f"{prefix}.alpha"] = torch.tensor(float(scale) * rank)


def _conv_shape(in_flat: int, conv_in_shapes: Mapping[str, tuple[int, int, int]] | None, prefix: str):
    if conv_in_shapes and prefix in conv_in_shapes:
        shape = conv_in_shapes[prefix]
        if shape[0] * shape[1] * shape[2] != in_flat:
            raise UnsupportedLoraError(f"{prefix}: LoRA input width {in_flat} does not fit a conv of {shape}")
        return shape
    return None


def _lycoris_prefixes(sd: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in sd if k.rsplit(".", 1)[-1] in LYCORIS_SUFFIXES})


def _conv_guess(prefix: str, in_flat: int, is_4d: bool) -> tuple[int, int, int] | None:
    """kohya names tell conv from linear; kernels are 3x3 except shortcuts/1x1 projections."""
    if not is_4d and not re.search(r"(conv\d?|conv_shortcut|conv_in|conv_out|_op)$", prefix):
        return None
    if prefix.endswith("conv_shortcut"):
        return (in_flat, 1, 1)
    if in_flat % 9 == 0:
        return (in_flat // 9, 3, 3)
    return (in_flat, 1, 1)


def lokr_to_kohya_lora(state_dict: Mapping[str, torch.Tensor], conv_in_shapes=None) -> dict[str, torch.Tensor]:
    """Rewrite a LyCORIS LoKr state dict (kohya names) as an exactly equal kohya LoRA/LoCon state dict.

    Port of the delta in LyCORIS ``lycoris/modules/lokr.py`` (``make_kron``; scale ``alpha / dim``,
    and 1 when neither factor is decomposed), https://github.com/KohakuBlueleaf/LyCORIS.
    ``conv_in_shapes`` maps a kohya prefix to ``(in_channels, kh, kw)`` when known; otherwise
    convs are recognised by name (3x3 kernels, 1x1 shortcuts). Raises on Tucker (``lokr_t2``) factors
    and on any key left over.
    """
    sd = dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    for prefix in _lycoris_prefixes(sd):
        if f"{prefix}.lokr_t2" in sd:
            raise UnsupportedLoraError(f"{prefix}: LoKr with Tucker-decomposed conv factors (lokr_t2) is not supported")
        w1, w1a, w1b = (_pop(sd, f"{prefix}.{s}") for s in ("lokr_w1", "lokr_w1_a", "lokr_w1_b"))
        w2, w2a, w2b = (_pop(sd, f"{prefix}.{s}") for s in ("lokr_w2", "lokr_w2_a", "lokr_w2_b"))
        alpha = _pop(sd, f"{prefix}.alpha")
        if (w1 is None and (w1a is None or w1b is None)) or (w2 is None and (w2a is None or w2b is None)):
            raise UnsupportedLoraError(f"{prefix}: incomplete LoKr factors")
        is_4d = w2 is not None and w2.ndim == 4
        if w2 is not None:
            w2 = w2.reshape(w2.shape[0], -1)
        dim = w2a.shape[1] if w2a is not None else (w1a.shape[1] if w1a is not None else None)
        scale = 1.0 if dim is None or alpha is None else float(alpha) / dim
        f32 = lambda t: t.float()
        # Each factor as (left, right) with factor = left @ right.
        if w1 is not None:
            a, b = w1.shape
            l1, r1 = (f32(w1), torch.eye(b)) if b <= a else (torch.eye(a), f32(w1))
        else:
            l1, r1 = f32(w1a), f32(w1b)
        if w2 is not None:
            c, d = w2.shape
            l2, r2 = (f32(w2), torch.eye(d)) if d <= c else (torch.eye(c), f32(w2))
        else:
            l2, r2 = f32(w2a), f32(w2b)
        up, down = torch.kron(l1, l2), torch.kron(r1, r2)
        conv = _conv_shape(down.shape[1], conv_in_shapes, prefix) if conv_in_shapes else _conv_guess(prefix, down.shape[1], is_4d)
        _kohya_entry(out, prefix, up, down, scale, conv)
    if sd:
        raise UnsupportedLoraError(f"LoKr file has keys that were not converted: {', '.join(sorted(sd)[:5])}")
    return out


def loha_to_kohya_lora(state_dict: Mapping[str, torch.Tensor], conv_in_shapes=None) -> dict[str, torch.Tensor]:
    """Rewrite a LyCORIS LoHa state dict as an exactly equal kohya LoRA/LoCon state dict.

    Port of the delta in LyCORIS ``lycoris/modules/loha.py``: ``(w1a @ w1b) * (w2a @ w2b) * alpha / dim``
    with ``dim = w1b.shape[0]``. Raises on Tucker (``hada_t1``/``hada_t2``) factors and leftovers.
    """
    sd = dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    for prefix in _lycoris_prefixes(sd):
        if f"{prefix}.hada_t1" in sd or f"{prefix}.hada_t2" in sd:
            raise UnsupportedLoraError(f"{prefix}: LoHa with Tucker-decomposed conv factors (hada_t1/t2) is not supported")
        w1a, w1b, w2a, w2b = (_pop(sd, f"{prefix}.hada_{s}") for s in ("w1_a", "w1_b", "w2_a", "w2_b"))
        alpha = _pop(sd, f"{prefix}.alpha")
        if any(t is None for t in (w1a, w1b, w2a, w2b)):
            raise UnsupportedLoraError(f"{prefix}: incomplete LoHa factors")
        dim = w1b.shape[0]
        scale = 1.0 if alpha is None else float(alpha) / dim
        up = _khatri_rao_rows(w1a.float(), w2a.float())
        b1, b2 = w1b.float().reshape(dim, -1), w2b.float().reshape(w2b.shape[0], -1)
        down = _khatri_rao_rows(b1.T, b2.T).T
        conv = _conv_shape(down.shape[1], conv_in_shapes, prefix) if conv_in_shapes else _conv_guess(prefix, down.shape[1], False)
        _kohya_entry(out, prefix, up, down, scale, conv)
    if sd:
        raise UnsupportedLoraError(f"LoHa file has keys that were not converted: {', '.join(sorted(sd)[:5])}")
    return out


def lokr_delta(sd: Mapping[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """The dense LoKr weight delta of one module, flattened to ``(out, in*kh*kw)`` (reference for tests)."""
    def full(name):
        w = sd.get(f"{prefix}.lokr_{name}")
        if w is not None:
            return w.float().reshape(w.shape[0], -1)
        return sd[f"{prefix}.lokr_{name}_a"].float() @ sd[f"{prefix}.lokr_{name}_b"].float()
    dim = sd[f"{prefix}.lokr_w2_a"].shape[1] if f"{prefix}.lokr_w2_a" in sd else (
        sd[f"{prefix}.lokr_w1_a"].shape[1] if f"{prefix}.lokr_w1_a" in sd else None)
    alpha = sd.get(f"{prefix}.alpha")
    scale = 1.0 if dim is None or alpha is None else float(alpha) / dim
    return torch.kron(full("w1"), full("w2")) * scale


def loha_delta(sd: Mapping[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """The dense LoHa weight delta of one module, flattened to ``(out, in*kh*kw)`` (reference for tests)."""
    g = lambda n: sd[f"{prefix}.hada_{n}"].float()
    dim = g("w1_b").shape[0]
    alpha = sd.get(f"{prefix}.alpha")
    scale = 1.0 if alpha is None else float(alpha) / dim
    return (g("w1_a") @ g("w1_b").reshape(dim, -1)) * (g("w2_a") @ g("w2_b").reshape(dim, -1)) * scale
