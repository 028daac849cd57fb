"""Recognise a LoRA file's format and base family from its safetensors header (names and shapes).

One predicate per format, one ``detect_format`` that dispatches (diffusers' ``lora_state_dict`` does the
same); conversion and loading are left to diffusers/PEFT in the composer. Shapes are trusted over
metadata: a header's ``ss_base_model_version`` is written by hand-made tools and sometimes lies.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from registry.families import CONTEXT_WIDTH_FAMILY, TE_WIDTH_FAMILY, family_of_context_width
from registry.safetensors_header import SafetensorsHeader, TensorInfo

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_transformer_")
KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha", ".lora_mid.weight", ".dora_scale")
LOHA_SUFFIXES = (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2")
LOKR_SUFFIXES = (".lokr_w1", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2")
DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.", "transformer.", "down_blocks.", "up_blocks.", "mid_block.")
DIFFUSERS_SUFFIXES = (
    ".lora.down.weight", ".lora.up.weight", ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight",
    ".lora_A.weight", ".lora_B.weight", ".alpha",
)  # fmt: skip
ATTNPROC_RE = re.compile(r"\.processor\.(to_[qkv]|to_out)_lora\.(down|up)\.weight$")
CLONEOFSIMO_RE = re.compile(r"^(unet|text_encoder):\d+:(down|up)$")
FLUX_MARKERS = ("double_blocks", "single_blocks", "single_transformer_blocks", "transformer_blocks.")


@dataclass
class FormatInfo:
    """What the header says about an adapter. ``usable`` False means refuse, with ``reason``."""

    format: str  # kohya-lora, kohya-locon, lycoris-loha, lycoris-lokr, diffusers, peft, diffusers-attnproc, cloneofsimo, unknown
    base_family: str | None  # sd1, sd2, sdxl, flux, other, or None when nothing tells
    family_evidence: str  # "shapes: cross-attention width 768", "metadata: ss_base_model_version=sd_v1", ...
    context_width: int | None = None  # input width of the UNet's cross-attention keys/values, when adapted
    rank: int | None = None
    alpha: float | None = None
    unet_modules: int = 0
    te_modules: int = 0
    usable: bool = True
    reason: str | None = None
    notes: list[str] = field(default_factory=list)


def module_of(key: str) -> str:
    """The module a tensor key belongs to (its name without the adapter-part suffix)."""
    for suffix in KOHYA_SUFFIXES + LOHA_SUFFIXES + LOKR_SUFFIXES + DIFFUSERS_SUFFIXES:
        if key.endswith(suffix):
            key = key[: -len(suffix)]
            return key[:-5] if key.endswith(".lora") else key
    if ATTNPROC_RE.search(key):
        return key.rsplit(".", 2)[0]  # "...attn2.processor.to_k_lora"
    m = CLONEOFSIMO_RE.match(key)
    if m:
        return key.rsplit(":", 1)[0]
    return key


def _is_kohya(keys: list[str]) -> bool:
    return any(k.startswith(KOHYA_PREFIXES) and k.endswith(KOHYA_SUFFIXES + LOHA_SUFFIXES + LOKR_SUFFIXES) for k in keys)


def _is_loha(keys: list[str]) -> bool:
    return any(k.endswith(LOHA_SUFFIXES) for k in keys)


def _is_lokr(keys: list[str]) -> bool:
    return any(k.endswith(LOKR_SUFFIXES) for k in keys)


def _is_attnproc(keys: list[str]) -> bool:
    return any(ATTNPROC_RE.search(k) for k in keys)


def _is_cloneofsimo(keys: list[str]) -> bool:
    return any(CLONEOFSIMO_RE.match(k) for k in keys)


def _is_diffusers(keys: list[str]) -> bool:
    return any(k.startswith(DIFFUSERS_PREFIXES) and k.endswith(DIFFUSERS_SUFFIXES) for k in keys)


def _is_te(module: str) -> bool:
    return module.startswith(("lora_te", "text_encoder", "te_", "te1", "te2"))


def _input_width(header: SafetensorsHeader, module: str) -> int | None:
    """The input features of an adapted linear layer, from whichever factor carries them."""
    t = header.tensors

    def last(key: str) -> int | None:
        info: TensorInfo | None = t.get(key)
        return info.shape[1] if info is not None and len(info.shape) >= 2 else None

    for key in (
        f"{module}.lora_down.weight", f"{module}.lora.down.weight", f"{module}.lora_A.weight",
        f"{module}.lora_linear_layer.down.weight", f"{module}.hada_w1_b", f"{module}.down.weight",
    ):  # fmt: skip
        width = last(key)
        if width is not None:
            return width
    w1 = last(f"{module}.lokr_w1") or last(f"{module}.lokr_w1_b")
    w2 = last(f"{module}.lokr_w2") or last(f"{module}.lokr_w2_b")
    if w1 and w2:  # kron(w1, w2): input width is the product of the factors' inputs
        return w1 * w2
    return None


def _context_width(header: SafetensorsHeader, modules: set[str]) -> int | None:
    """The most common input width of the adapted cross-attention key/value projections."""
    cross = [m for m in modules if re.search(r"attn2[._](processor[._])?to_[kv](_lora)?$", m)]
    widths = Counter(w for m in cross if (w := _input_width(header, m)))
    return widths.most_common(1)[0][0] if widths else None


def _family_from_shapes(header: SafetensorsHeader, fmt: str, modules: set[str], width: int | None) -> tuple[str | None, str]:
    keys = list(header.tensors)
    if any(marker in k for k in keys for marker in FLUX_MARKERS) and not any("attn2" in k for k in keys):
        return "flux", "names: Flux transformer blocks"
    if fmt == "cloneofsimo":
        widths = {info.shape[1] for k, info in header.tensors.items() if k.startswith("unet:") and k.endswith(":down")}
        for w, family in CONTEXT_WIDTH_FAMILY.items():
            if w in widths:
                return family, f"shapes: UNet adapter input width {w} (cross-attention context)"
    if width is not None:
        return family_of_context_width(width), f"shapes: cross-attention width {width}"
    if any(m.startswith(("lora_te2_", "text_encoder_2.")) for m in modules):
        return "sdxl", "names: second text encoder"
    te = [m for m in modules if _is_te(m) and re.search(r"q_proj$", m)]
    te_widths = Counter(w for m in te if (w := _input_width(header, m)))
    if te_widths:
        w = te_widths.most_common(1)[0][0]
        return TE_WIDTH_FAMILY.get(w, "other"), f"shapes: text-encoder width {w}"
    return None, "no shape evidence"


def family_from_metadata(metadata: dict[str, str]) -> str | None:
    text = " ".join(
        metadata.get(k, "") for k in ("ss_base_model_version", "modelspec.architecture", "ss_sd_model_name")
    ).lower()
    if "flux" in text:
        return "flux"
    if "sdxl" in text or "stable-diffusion-xl" in text:
        return "sdxl"
    if metadata.get("ss_v2", "").lower() == "true" or re.search(r"sd_?2|v2-|stable-diffusion-v2", text):
        return "sd2"
    if re.search(r"sd_?v?1|stable-diffusion-v1|sd_1", text):
        return "sd1"
    return None


def _rank(header: SafetensorsHeader, fmt: str) -> int | None:
    ranks: Counter[int] = Counter()
    for key, info in header.tensors.items():
        if len(info.shape) < 2:
            continue
        if key.endswith((".lora_down.weight", ".lora.down.weight", ".lora_A.weight", ".lora_linear_layer.down.weight")):
            ranks[info.shape[0]] += 1
        elif key.endswith((".hada_w1_b", ".lokr_w1_b", ".lokr_w2_b")) or ATTNPROC_RE.search(key) and ".down." in key:
            ranks[info.shape[0]] += 1
        elif fmt == "cloneofsimo" and key.endswith(":down"):
            ranks[info.shape[0]] += 1
    return ranks.most_common(1)[0][0] if ranks else None


def _alpha(header: SafetensorsHeader) -> float | None:
    meta = header.metadata.get("ss_network_alpha")
    if meta:
        try:
            return float(meta)
        except ValueError:
            pass
    for key in header.tensors:
        if key.endswith(".alpha"):
            return header.read_scalar(key)
    return None


def detect_format(header: SafetensorsHeader) -> FormatInfo:
    keys = [k for k in header.tensors if not (k.startswith("<") and k.endswith(">"))]  # skip TI embeddings
    modules = {module_of(k) for k in keys}
    if not keys:
        return FormatInfo("unknown", None, "no tensors", usable=False, reason="the file holds no tensors")

    if _is_kohya(keys):
        if _is_lokr(keys):
            fmt = "lycoris-lokr"
        elif _is_loha(keys):
            fmt = "lycoris-loha"
        elif any(len(i.shape) == 4 and i.shape[2:] != (1, 1) for k, i in header.tensors.items() if k.endswith(".lora_down.weight")):
            fmt = "kohya-locon"
        else:
            fmt = "kohya-lora"
    elif _is_attnproc(keys):
        fmt = "diffusers-attnproc"
    elif _is_cloneofsimo(keys):
        fmt = "cloneofsimo"
    elif _is_diffusers(keys):
        fmt = "peft" if any(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys) else "diffusers"
    else:
        fmt = "unknown"

    width = _context_width(header, modules)
    family, evidence = _family_from_shapes(header, fmt, modules, width)
    meta_family = family_from_metadata(header.metadata)
    notes: list[str] = []
    if family is None and meta_family:
        family, evidence = meta_family, "metadata"
    elif family and meta_family and family != meta_family:
        notes.append(f"metadata claims {meta_family}, tensor shapes say {family}: shapes win")

    info = FormatInfo(
        format=fmt,
        base_family=family,
        family_evidence=evidence,
        context_width=width,
        rank=_rank(header, fmt),
        alpha=_alpha(header),
        unet_modules=sum(1 for m in modules if not _is_te(m)),
        te_modules=sum(1 for m in modules if _is_te(m)),
        notes=notes,
    )
    if fmt == "unknown":
        info.usable = False
        sample = sorted(keys)[0]
        hint = ""
        if any(k.startswith("lora_unet_unet_") or k.endswith("_lora_down.weight") for k in keys):
            hint = " (looks like a broken kohya conversion: doubled 'unet' prefix, '_lora_down' for '.lora_down')"
        info.reason = f"unrecognised LoRA key layout, e.g. {sample!r}{hint}"
    return info
