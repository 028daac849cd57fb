"""Naming, resolving and loading LoRAs onto a diffusers pipeline as PEFT adapters.

A LoRA is named by a file path or a registry token (id, file stem, name, trigger word), with an
optional weight: ``path/to/x.safetensors:0.8`` or ``42:0.5``, or inside a prompt with A1111's
``<lora:name:0.8>``. Loading reads the file, detects its format (composer.convert), refuses a
LoRA of another base family than the pipeline *before* any denoising, rewrites LyCORIS LoKr/LoHa
exactly as kohya factors, and hands everything to diffusers' own ``load_lora_weights``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from composer import convert
from composer.cache import DEFAULT_CACHE_BYTES, ByteLru

_A1111_LORA = re.compile(r"<lora:([^:>]+)(?::([-+]?\d*\.?\d+))?(?::[^>]*)?>")


class LoraError(ValueError):
    """A LoRA that cannot be used with this pipeline; the message says which and why."""


@dataclass(frozen=True)
class LoraRef:
    """A LoRA as the user named it: a file path or registry token, and a weight."""

    token: str
    weight: float = 1.0


@dataclass
class LoadedLora:
    """A LoRA resolved to a file and loaded onto the pipeline as PEFT adapter ``adapter``."""

    adapter: str
    name: str
    path: str
    weight: float
    format: str
    family: str | None
    sha256: str
    autov3: str
    registry_id: int | None = None
    trigger_words: tuple[str, ...] = ()
    text_encoder: bool = False

    @property
    def autov2(self) -> str:
        return self.sha256[:10]

    def report(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": self.path, "weight": self.weight, "format": self.format,
            "family": self.family, "sha256": self.sha256, "autov2": self.autov2, "autov3": self.autov3,
            "registry_id": self.registry_id, "adapter": self.adapter, "text_encoder": self.text_encoder,
        }


def parse_lora_token(text: str) -> LoraRef:
    """``ID_OR_FILE[:WEIGHT]`` -> LoraRef. A trailing ``:number`` is a weight unless the whole text is a file."""
    if os.path.exists(text):
        return LoraRef(text)
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return LoraRef(head, float(tail))
        except ValueError:
            pass
    return LoraRef(text)


def extract_prompt_loras(prompt: str) -> tuple[str, list[LoraRef]]:
    """Strip A1111 ``<lora:name:0.8>`` tags from a prompt; return the clean prompt and the LoRAs."""
    refs = [LoraRef(m.group(1), float(m.group(2)) if m.group(2) else 1.0) for m in _A1111_LORA.finditer(prompt)]
    clean = re.sub(r"\s{2,}", " ", _A1111_LORA.sub("", prompt)).strip().strip(",").strip()
    return clean, refs


def file_hashes(path: str) -> tuple[str, str]:
    """(SHA-256 of the file, A1111 "AutoV3": SHA-256 of the tensor data after the safetensors header, 12 hex)."""
    whole, data = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(8)
        whole.update(head)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        header = f.read(n)
        whole.update(header)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            whole.update(chunk)
            data.update(chunk)
    return whole.hexdigest(), data.hexdigest()[:12]


def pipeline_family(pipe) -> str:
    """Base family of a pipeline: ``sdxl`` for SDXL pipelines, else by the UNet's cross-attention width."""
    if "XL" in type(pipe).__name__ or getattr(pipe.unet.config, "addition_embed_type", None) == "text_time":
        return "sdxl"
    return convert.FAMILY_BY_CROSS_ATTENTION_WIDTH.get(pipe.unet.config.cross_attention_dim, "sd1")


def lora_family(state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str | None:
    """Base family from tensor shapes; registry.formats decides when it exists, else our own width rule."""
    try:  # the registry's detector (written elsewhere in this project) knows more formats
        from registry import formats as registry_formats  # noqa: PLC0415

        header = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state_dict.items()}
        if metadata:
            header["__metadata__"] = metadata
        info = registry_formats.detect_format(header)
        family = getattr(info, "base_family", None)
        if family and family != "other":
            return family
    except Exception:  # noqa: BLE001 - registry absent or not able to read it: fall back to shapes
        pass
    if convert.is_flux_transformer(state_dict):
        return "flux"
    width = convert.lora_cross_attention_width(state_dict)
    return convert.FAMILY_BY_CROSS_ATTENTION_WIDTH.get(width) if width else None


def _adapter_name(index: int, path: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_]", "_", os.path.splitext(os.path.basename(path))[0])[:40]
    return f"l{index}_{stem}"


def _kohya_conv_shapes(pipe) -> dict[str, tuple[int, int, int]]:
    # Once an adapter is loaded PEFT wraps each conv: the Conv2d then sits at ``<name>.base_layer``.
    return {
        "lora_unet_" + n.removesuffix(".base_layer").replace(".", "_"): (m.in_channels, *m.kernel_size)
        for n, m in pipe.unet.named_modules()
        if isinstance(m, torch.nn.Conv2d) and ".lora_" not in n
    }


def fit_text_encoder_names(sd: dict[str, torch.Tensor], pipe) -> dict[str, torch.Tensor]:
    """Drop the ``text_model`` level from text-encoder LoRA keys when the pipeline's CLIP has none.

    transformers 5 flattened ``CLIPTextModel`` (``encoder.layers.0...`` instead of
    ``text_model.encoder.layers.0...``), but kohya and older diffusers LoRAs name the old path, and
    diffusers 0.42.1 passes that through: PEFT then finds no weights and *silently* initialises
    the text-encoder adapter to zero. Renaming the keys restores the LoRA's text-encoder part.
    """
    te = getattr(pipe, "text_encoder", None)
    if te is None or hasattr(te, "text_model"):
        return sd
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^(lora_te[12]?_)text_model_", r"\1", k)
        k = re.sub(r"^(text_encoder(_2)?\.)text_model\.", r"\1", k)
        out[k] = v
    return out


class LoraLoader:
    """Resolves LoraRefs and loads each distinct file once per pipeline (a warm cache for batches).

    Args:
        pipe: a diffusers pipeline with ``load_lora_weights`` (SD 1.x/2.x, SDXL).
        registry: a zero-argument callable returning a ``registry.api.Registry``; only called for
            tokens that are not existing files.
        max_bytes: bound on the bytes of the LoRA weights kept installed on the pipeline; beyond
            it the least recently used adapters are deleted (None: unbounded). ``reads`` counts
            the files actually read, so tests and benchmarks can see the cache work.
    """

    def __init__(self, pipe, registry: Callable[[], Any] | None = None, max_bytes: int | None = DEFAULT_CACHE_BYTES):
        self.pipe = pipe
        self._registry_factory = registry
        self._by_path: dict[str, LoadedLora] = {}
        self._count = 0
        self.lru = ByteLru(max_bytes)
        self.reads = 0

    def _registry(self):
        if self._registry_factory is None:
            from registry.api import Registry  # noqa: PLC0415 - lazy: composing files needs no registry

            self._registry_factory = lambda: Registry.open(None)
        return self._registry_factory()

    def resolve(self, ref: LoraRef) -> tuple[str, str, int | None, tuple[str, ...]]:
        """(path, display name, registry id, trigger words) for a ref."""
        if os.path.isfile(ref.token):
            return ref.token, os.path.splitext(os.path.basename(ref.token))[0], None, ()
        try:
            reg = self._registry()
        except ImportError as exc:
            raise LoraError(f"{ref.token!r} is not a file, and the registry is not available to resolve it") from exc
        entry = reg.find(ref.token)  # NotFound / Ambiguous propagate: the CLI converts them
        if not entry.file_path or not os.path.isfile(entry.file_path):
            raise LoraError(f"registry entry {entry.id} ({entry.name}) has no local file to load")
        return entry.file_path, entry.name, entry.id, tuple(entry.trigger_words)

    def read(self, path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        from safetensors import SafetensorError, safe_open  # noqa: PLC0415

        if not path.endswith(".safetensors"):
            raise LoraError(f"{path}: only .safetensors LoRA files are loaded (pickled .ckpt/.pt files are refused)")
        self.reads += 1
        try:
            with safe_open(path, framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except (SafetensorError, OSError) as exc:
            raise LoraError(f"{path}: cannot read safetensors file: {exc}") from exc

    def check(self, path: str, sd: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str | None]:
        """Format and family; raises LoraError when the LoRA cannot apply to this pipeline."""
        fmt = convert.detect_lora_format(sd.keys())
        family = lora_family(sd, metadata)
        want = pipeline_family(self.pipe)
        name = os.path.basename(path)
        if fmt == "cloneofsimo":
            raise LoraError(f"{name}: cloneofsimo 'safeloras' files (unet:N:up/down) are not supported; convert to kohya or diffusers format")
        if fmt == "unknown":
            raise LoraError(f"{name}: unrecognised LoRA format (keys like {next(iter(sd), '<none>')!r})")
        if family == "flux" or convert.is_flux_transformer(sd):
            raise LoraError(f"{name} is a flux LoRA (transformer layers); the pipeline is {want}: refused")
        width = convert.lora_cross_attention_width(sd)
        have = self.pipe.unet.config.cross_attention_dim
        if width is not None and width != have:
            raise LoraError(
                f"{name} is a {family or 'unknown-family'} LoRA (cross-attention width {width}); the pipeline is "
                f"{want} (cross-attention width {have}): refused before denoising"
            )
        if family is not None and width is None and family != want:
            raise LoraError(f"{name} is a {family} LoRA; the pipeline is {want}: refused before denoising")
        return fmt, family

    def load(self, ref: LoraRef, pinned: set[str] | None = None) -> LoadedLora:
        """Resolve and install one LoRA (from the cache when it is there), then trim the cache,
        keeping this LoRA and ``pinned`` (real paths of the other LoRAs of the same job)."""
        path, name, reg_id, triggers = self.resolve(ref)
        key = os.path.realpath(path)
        cached = self._by_path.get(key)
        nbytes = None
        if cached is None:
            sd, metadata = self.read(path)
            fmt, family = self.check(path, sd, metadata)
            if fmt == "lycoris-lokr":
                sd = convert.lokr_to_kohya_lora(sd, _kohya_conv_shapes(self.pipe))
            elif fmt == "lycoris-loha":
                sd = convert.loha_to_kohya_lora(sd, _kohya_conv_shapes(self.pipe))
            sd = fit_text_encoder_names(sd, self.pipe)
            has_te = any(k.startswith(("lora_te", "text_encoder")) for k in sd)
            adapter = _adapter_name(self._count, path)
            self._count += 1
            try:
                self.pipe.load_lora_weights(sd, adapter_name=adapter)
            except (ValueError, RuntimeError, KeyError) as exc:
                raise LoraError(f"{os.path.basename(path)} ({fmt}) does not fit this {pipeline_family(self.pipe)} pipeline: {exc}") from exc
            sha, autov3 = file_hashes(path)
            cached = LoadedLora(adapter, name, path, 1.0, fmt, family, sha, autov3, reg_id, triggers, has_te)
            self._by_path[key] = cached
            nbytes = sum(t.numel() * t.element_size() for t in sd.values())
        self.lru.touch(key, nbytes)
        self._evict((pinned or set()) | {key})
        return LoadedLora(**{**cached.__dict__, "weight": ref.weight, "name": name, "registry_id": reg_id,
                             "trigger_words": triggers})

    def load_all(self, refs: list[LoraRef]) -> list[LoadedLora]:
        """Load every ref (checking all of them before the caller denoises anything)."""
        pinned: set[str] = set()
        out = []
        for r in refs:
            out.append(self.load(r, pinned))
            pinned.add(os.path.realpath(out[-1].path))
        return out

    def is_cached(self, path: str) -> bool:
        return os.path.realpath(path) in self._by_path

    def _evict(self, pinned: set[str]) -> None:
        """Delete the adapters the byte budget no longer holds (least recently used first)."""
        for key in self.lru.evictions(pinned):
            gone = self._by_path.pop(key, None)
            if gone is not None:
                self.pipe.delete_adapters(gone.adapter)
