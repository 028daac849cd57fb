"""Naming, resolving and loading LoRAs onto a diffusers pipeline as PEFT adapters.

A LoRA is named by a file path or a registry token (id, file stem, name, trigger word), with an
optional weight: ``path/to/x.safetensors:0.8`` or ``42:0.5``, or inside a prompt with A1111's
``<lora:name:0.8>`` (or ``<lyco:...>``). Loading reads the file's header, detects its format and
base family with the registry's detector (``registry.formats.detect_format``, the same one the
ingest uses), refuses a LoRA of another base family than the pipeline *before* any denoising,
rewrites LyCORIS LoKr/LoHa exactly as kohya factors (composer.convert), and hands everything to
diffusers' own ``load_lora_weights``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from composer import convert
from composer.cache import DEFAULT_CACHE_BYTES, ByteLru
from composer.errors import LoraError, UnsupportedLoraError
from registry.errors import InvalidInput
from registry.families import family_of_context_width
from registry.formats import FormatInfo, detect_format
from registry.hashing import safetensors_hashes
from registry.lora_tags import prompt_tags, strip_tags
from registry.safetensors_header import read_header

__all__ = ["LoraError", "UnsupportedLoraError", "LoraRef", "LoadedLora", "LoraLoader", "parse_lora_token",
           "extract_prompt_loras", "pipeline_family"]


@dataclass(frozen=True)
class LoraRef:
    """A LoRA as the user named it: a file path or registry token, a weight, and optionally the
    phrase of the prompt that asked for it (grounding: where it should act)."""

    token: str
    weight: float = 1.0
    phrase: str | None = None


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
    tags: tuple[str, ...] = ()  # the registry entry's (Civitai category first): its grounding role
    phrase: str | None = None  # the phrase of the prompt that asked for it

    @property
    def autov2(self) -> str:
        return self.sha256[:10]

    def report(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": self.path, "weight": self.weight, "format": self.format,
            "family": self.family, "sha256": self.sha256, "autov2": self.autov2, "autov3": self.autov3,
            "registry_id": self.registry_id, "adapter": self.adapter, "text_encoder": self.text_encoder,
            "phrase": self.phrase,
        }


def parse_lora_token(text: str) -> LoraRef:
    """``ID_OR_FILE[:WEIGHT][@PHRASE]`` -> LoraRef. A trailing ``:number`` is a weight and a
    trailing ``@words`` the phrase that asked for the LoRA, unless the whole text is a file."""
    if os.path.exists(text):
        return LoraRef(text)
    phrase = None
    head, at, tail = text.partition("@")
    if at and head and not os.path.exists(text):
        text, phrase = head, tail.strip().strip("\"'") or None
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return LoraRef(head, float(tail), phrase)
        except ValueError:
            pass
    return LoraRef(text, 1.0, phrase)


def extract_prompt_loras(prompt: str) -> tuple[str, list[LoraRef]]:
    """Strip A1111 ``<lora:name:0.8>`` / ``<lyco:...>`` tags from a prompt; return the clean
    prompt and the LoRAs. A ``<hypernet:...>`` tag is refused: hypernetworks are not LoRAs."""
    tags = prompt_tags(prompt)
    hyper = [t.name for t in tags if t.kind == "hypernet"]
    if hyper:
        raise LoraError(f"<hypernet:{hyper[0]}>: hypernetworks are not supported, only LoRA/LyCORIS (<lora:...>, <lyco:...>)")
    return strip_tags(prompt), [LoraRef(t.name, 1.0 if t.weight is None else t.weight, _tag_phrase(prompt, t.start))
                                for t in tags]


def _tag_phrase(prompt: str, at: int) -> str | None:
    """The text of the prompt's unit that holds a tag (the tags themselves taken out): what asked for it."""
    from composer.grounding.phrases import unit_of

    unit = unit_of(prompt, None, (), at=at)
    text = strip_tags(unit.text) if unit else ""
    return text or None


def pipeline_family(pipe) -> str:
    """Base family of a pipeline in the registry's words: ``sdxl`` for SDXL pipelines, else by the
    UNet's cross-attention width (``registry.families``)."""
    if "XL" in type(pipe).__name__ or getattr(pipe.unet.config, "addition_embed_type", None) == "text_time":
        return "sdxl"
    return family_of_context_width(pipe.unet.config.cross_attention_dim)


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
        registry: a zero-argument callable returning a registry (``loraregistry.Registry``); only
            called for tokens that are not existing files. None: files only.
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

    def resolve(self, ref: LoraRef) -> tuple[str, str, int | None, tuple[str, ...], tuple[str, ...]]:
        """(path, display name, registry id, trigger words, tags) for a ref."""
        if os.path.isfile(ref.token):
            return ref.token, os.path.splitext(os.path.basename(ref.token))[0], None, (), ()
        if self._registry_factory is None:
            raise LoraError(f"{ref.token!r} is not a file, and no registry was given to resolve it "
                            "(give the composer a registry, or a file path)")
        entry = self._registry_factory().find(ref.token)  # NotFound / Ambiguous propagate: the CLI converts them
        if not entry.file_path or not os.path.isfile(entry.file_path):
            raise LoraError(f"registry entry {entry.id} ({entry.name}) has no local file to load")
        return entry.file_path, entry.name, entry.id, tuple(entry.trigger_words), tuple(entry.tags)

    def read(self, path: str) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError, safe_open

        self.reads += 1
        try:
            with safe_open(path, framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as exc:
            raise LoraError(f"{path}: cannot read safetensors file: {exc}") from exc

    def check(self, path: str) -> FormatInfo:
        """Format and family from the file's header; raises LoraError when the LoRA cannot apply
        to this pipeline (before any tensor is read)."""
        name = os.path.basename(path)
        if not path.endswith(".safetensors"):
            raise LoraError(f"{path}: only .safetensors LoRA files are loaded (pickled .ckpt/.pt files are refused)")
        try:
            info = detect_format(read_header(path))
        except InvalidInput as exc:
            raise LoraError(str(exc)) from exc
        want = pipeline_family(self.pipe)
        if info.format == "cloneofsimo":
            raise UnsupportedLoraError(f"{name}: cloneofsimo 'safeloras' files (unet:N:up/down) are not supported; convert to kohya or diffusers format")
        if not info.usable:
            raise UnsupportedLoraError(f"{name}: {info.reason}")
        if info.base_family == "flux":
            raise LoraError(f"{name} is a flux LoRA ({info.family_evidence}); the pipeline is {want}: refused")
        have = self.pipe.unet.config.cross_attention_dim
        if info.context_width is not None and info.context_width != have:
            raise LoraError(
                f"{name} is a {info.base_family} LoRA (cross-attention width {info.context_width}); the pipeline is "
                f"{want} (cross-attention width {have}): refused before denoising"
            )
        if info.base_family is not None and info.context_width is None and info.base_family != want:
            raise LoraError(f"{name} is a {info.base_family} LoRA ({info.family_evidence}); the pipeline is {want}: refused before denoising")
        return info

    def load(self, ref: LoraRef, pinned: set[str] | None = None) -> LoadedLora:
        """Resolve and install one LoRA (from the cache when it is there), then trim the cache,
        keeping this LoRA and ``pinned`` (real paths of the other LoRAs of the same job)."""
        path, name, reg_id, triggers, tags = self.resolve(ref)
        key = os.path.realpath(path)
        cached = self._by_path.get(key)
        nbytes = None
        if cached is None:
            info = self.check(path)
            sd = self.read(path)
            fmt, family = info.format, info.base_family
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
            sha, autov3 = safetensors_hashes(path)
            cached = LoadedLora(adapter, name, path, 1.0, fmt, family, sha, autov3, reg_id, triggers, has_te)
            self._by_path[key] = cached
            nbytes = sum(t.numel() * t.element_size() for t in sd.values())
        self.lru.touch(key, nbytes)
        self._evict((pinned or set()) | {key})
        return LoadedLora(**{**cached.__dict__, "weight": ref.weight, "name": name, "registry_id": reg_id,
                             "trigger_words": triggers, "tags": tags, "phrase": ref.phrase})

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
