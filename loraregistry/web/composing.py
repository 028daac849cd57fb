"""Compose requests (the API's body, bounded) and the runner that serves them on one warm pipeline.

A request with no LoRAs lets the registry pick them, as ``loraregistry compose PROMPT`` does:
retrieve, probe, prune and compose (``composer.auto.AutoComposer``); a request that names LoRAs
(or has ``<lora:...>`` tags in its prompt) composes exactly those (``composer.Composer``).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from pydantic import BaseModel, ConfigDict, Field, field_validator

from composer import methods
from loraregistry.web.gallery import ResultStore
from loraregistry.web.jobs import Progress

MAX_PROMPT_CHARS = 2000
MAX_LORAS = 16


class LoraChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=512, description="Registry id, file name, model name or trigger word.")
    weight: float = Field(1.0, ge=-4.0, le=4.0)


class ComposeRequest(BaseModel):
    """One image to compose. Omitted settings take the model's defaults (ToyWorld: 25 steps, CFG 2)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    loras: list[LoraChoice] = Field(default_factory=list, max_length=MAX_LORAS,
                                    description="Empty: the registry picks them (retrieve, probe, compose).")
    method: str = Field(methods.DEFAULT, max_length=64, description="One of composer.methods.NAMES.",
                        json_schema_extra={"enum": list(methods.NAMES)})
    steps: int | None = Field(None, ge=1, le=150)
    cfg: float | None = Field(None, ge=0.0, le=30.0)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    width: int | None = Field(None, ge=8, le=2048, multiple_of=8)
    height: int | None = Field(None, ge=8, le=2048, multiple_of=8)
    keep: int | None = Field(None, ge=1, le=8, description="Automatic choice: most LoRAs to keep (k).")
    candidates: int = Field(16, ge=1, le=64, description="Automatic choice: LoRAs to retrieve (K).")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in methods.NAMES:  # the table of composition methods, as `compose --method`
            raise ValueError(f"unknown method {value!r}; choose one of {', '.join(methods.NAMES)}")
        return value


@dataclass
class ModelInfo:
    """The pipeline the server composes with, and its sampling defaults."""

    path: str
    name: str | None  # the name the composer reports ("toyworld" for the built-in one)
    builtin: bool
    description: str
    steps: int
    cfg: float


@contextlib.contextmanager
def _threads_for_this_job() -> Iterator[None]:
    """As many torch threads as the machine has free cores now (torch's default, all cores, beside
    a busy core runs many times slower on a shared machine); the process's setting comes back after."""
    import torch

    from indexer.embed import free_cores

    previous = torch.get_num_threads()
    torch.set_num_threads(free_cores())
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _quiet_libraries() -> None:
    """Keep diffusers/transformers load chatter out of the server's log (as ``compose`` does)."""
    import warnings

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")


class ComposeService:
    """The warm pipeline: loaded once (on first use or by ``warm()``), then used by one worker."""

    def __init__(self, model: ModelInfo, registry: Any, store: ResultStore, device: str | None = None,
                 dtype: str = "auto", cache_bytes: int = 4096 << 20) -> None:
        self.model = model
        self.registry = registry
        self.store = store
        self.device = device
        self.dtype = dtype
        self.cache_bytes = cache_bytes
        self._composer: Any = None
        self._lock = threading.Lock()

    def defaults(self) -> dict[str, Any]:
        return {"method": methods.DEFAULT, "steps": self.model.steps, "cfg": self.model.cfg, "seed": 0,
                "keep": None, "candidates": 16, "model": self.model.description}

    def composer(self) -> Any:
        with self._lock:
            if self._composer is None:
                from composer import Composer

                _quiet_libraries()
                self._composer = Composer.from_pretrained(
                    self.model.path, registry=lambda: self.registry, device=self.device, dtype=self.dtype,
                    cache_bytes=self.cache_bytes, name=self.model.name)
            return self._composer

    def warm(self) -> None:
        self.composer()

    def __call__(self, job_id: str, request: dict[str, Any], progress: Progress) -> dict[str, Any]:
        """Run one job (a ``ComposeRequest`` as a dict) and store its result; the worker calls this."""
        req = ComposeRequest.model_validate(request)
        with _threads_for_this_job():
            return self._run(job_id, req, progress)

    def run_line(self, job_id: str, line: dict[str, Any], progress: Progress) -> dict[str, Any]:
        """Run one ``compose --batch`` line (its LoRAs named, as a batch runs it) and store its result
        under ``job_id``; what a queue worker does with a batch submitted through the queue. Steps
        and CFG the line leaves unset are this model's defaults, as ``compose --batch --model`` does."""
        from composer import Job

        job = Job.from_dict({"steps": self.model.steps, "cfg": self.model.cfg, **line, "name": job_id})  # unset: the model's
        progress("loading the pipeline", 0, job.steps)
        composer = self.composer()
        progress("loading LoRAs", 0, job.steps)
        with _threads_for_this_job():
            result = composer.run(job, progress=lambda done, total: progress("composing", done, total))
        progress("saving", job.steps, job.steps)
        return self.store.save(job_id, result, line)

    def _run(self, job_id: str, req: ComposeRequest, progress: Progress) -> dict[str, Any]:
        from composer import Job
        from composer.auto import AutoComposer
        from composer.loras import LoraRef, extract_prompt_loras
        from composer.params import Generation, SelectionParams

        steps = req.steps or self.model.steps
        cfg = req.cfg if req.cfg is not None else self.model.cfg
        gen = Generation(steps=steps, cfg=cfg, seed=req.seed, width=req.width, height=req.height,
                         negative_prompt=req.negative_prompt)
        progress("loading the pipeline", 0, steps)
        composer = self.composer()
        on_step: Callable[[int, int], None] = lambda done, total: progress("composing", done, total)
        needs_loras = methods.method_class(req.method).needs_loras
        auto = needs_loras and not req.loras and not extract_prompt_loras(req.prompt)[1]
        if auto:  # as `loraregistry compose PROMPT` with no LoRAs named
            progress("choosing LoRAs: retrieve and probe", 0, steps)
            result = AutoComposer(composer, self.registry).compose(
                req.prompt, method=req.method, name=job_id, progress=on_step, gen=gen,
                selection=SelectionParams(candidates=req.candidates, keep=req.keep))
        else:
            job = Job.with_generation(req.prompt, gen, loras=[LoraRef(c.id, c.weight) for c in req.loras],
                                      method=req.method, name=job_id)
            progress("loading LoRAs", 0, steps)
            result = composer.run(job, progress=on_step)
        progress("saving", steps, steps)
        return self.store.save(job_id, result, req.model_dump())
