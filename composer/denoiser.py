"""A model wrapper that passes for the UNet inside a stock diffusers pipeline.

In the style of k-diffusion's ``external.py``: the pipeline's own loop (scheduler, CFG, VAE) is
untouched; only ``pipe.unet`` is swapped for :class:`MultiLoraDenoiser` while a job runs. The
pipeline calls it with ``[x_uncond, x_cond]`` and the base prompt embeddings; the wrapper runs
every *branch* (base model, LoRA 1..N, each conditional and unconditional, each with its own
prompt encoding) as ONE batched UNet call with a per-sample adapter, then a ``combine`` rule
returns ``[eps_u, eps_c]`` so that the pipeline's ordinary CFG yields the composed prediction.

Per-sample adapters: the batch is laid out branch by branch, so every adapter's samples are one
run, and :mod:`composer.stacked` serves each LoRA layer with one batched low-rank product. Where
it cannot (uneven runs, DoRA, LoRA biases), PEFT's mixed-adapter batch does:
``LoraLayer.forward(x, adapter_names=...)``. diffusers' UNet does not pass ``adapter_names``
down, so :func:`mixed_adapter_batch` installs a forward pre-hook on every PEFT layer that injects
it (the same mechanism PEFT's own ``PeftModel._enable_peft_forward_hooks`` uses).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterator, Sequence

import torch

from composer.stacked import BASE, lora_layers, stacked_adapter_batch

__all__ = ["BASE", "Branch", "Combined", "MultiLoraDenoiser", "installed", "mixed_adapter_batch"]


@dataclass
class Branch:
    """One member of the batch: an adapter and that adapter's own prompt encoding.

    ``adapter`` is a PEFT adapter name, :data:`BASE` for the base model, None for "whatever
    adapters are active" (merge and switch set them with ``set_adapters``), or a tuple of adapter
    names: those merged, at the weights the job set (served in the batch by the stacked forward,
    :mod:`composer.stacked`; where it cannot, in a UNet call of its own, :func:`only_adapters`).
    ``cond``/``uncond`` are ``(B, seq, dim)`` prompt embeddings; ``pooled_*`` the SDXL pooled ones.
    """

    adapter: str | tuple[str, ...] | None
    cond: torch.Tensor
    uncond: torch.Tensor
    pooled_cond: torch.Tensor | None = None
    pooled_uncond: torch.Tensor | None = None


@contextlib.contextmanager
def mixed_adapter_batch(model: torch.nn.Module, adapter_names: Sequence[str]) -> Iterator[None]:
    """Within the block, every PEFT LoRA layer of ``model`` gets ``adapter_names`` (one per sample)."""
    names = list(adapter_names)

    def pre_hook(_module, args, kwargs):
        kwargs["adapter_names"] = names
        return args, kwargs

    handles = [m.register_forward_pre_hook(pre_hook, with_kwargs=True) for m in lora_layers(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def only_adapters(model: torch.nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Within the block, exactly these PEFT adapters are active in ``model``, merged at the scales
    the job set (``set_adapters``); PEFT's mixed batch runs one adapter per sample, not several."""
    layers = lora_layers(model)
    before = [list(m.active_adapters) for m in layers]
    try:
        for m in layers:
            m.set_adapter(list(names))
        yield
    finally:
        for m, active in zip(layers, before):
            m.set_adapter(active)


@dataclass
class Combined:
    """What a combine rule returns for one step: the unconditional and conditional predictions the
    pipeline's CFG then mixes (``uncond`` None without CFG), each LoRA's weight where it acted
    (``(N, B, Hp, Wp)`` or ``(N, B, 1, 1)``, for the weights map; None when the method has no such
    weights), and whatever else the rule computed that an observer may want (``extras``, e.g.
    LoRAtorio's patch similarities)."""

    uncond: torch.Tensor | None
    cond: torch.Tensor
    weights: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


# A combine rule: combine(eps_u (V, B, C, H, W) | None, eps_c (V, B, C, H, W), step) -> Combined,
# with V the active branches that ran each half (composer.methods holds one per method).
CombineRule = Callable[[torch.Tensor | None, torch.Tensor, int], Combined]


class MultiLoraDenoiser(torch.nn.Module):
    """Stands in for ``pipe.unet``: same call signature, same ``config``/``dtype``/``device``.

    Args:
        unet: the pipeline's (PEFT-injected) UNet.
        branches: what to run each step; may be replaced between steps (see ``select``).
        combine: a combine rule (above): how the branches' predictions become one.
        batched: one UNet call for all branches (True) or one call per branch (False, the
            reference for equality tests and the benchmark).
        uncond_branches: run the unconditional half for only the first n active branches (an int),
            or for only these branches (a set of indices into ``branches``), or for all (None). The
            probe (composer.probe) needs only the base model's unconditional prediction (LoRAtorio
            with lambda = 1), which saves K of its 2(K + 1) samples per step; ``combine`` then gets
            ``eps_u`` with those branches only, in the active order.
        replay: outputs to return for the first ``len(replay)`` steps instead of calling the UNet
            (the probe's steps, re-used by the composition that follows it from the same seed).
        record: keep every step's output in ``outputs`` (what ``replay`` takes).
        stacked: serve a batch of several adapters with :mod:`composer.stacked` (one batched
            low-rank product per layer) rather than PEFT's adapter-by-adapter mixed batch.
        callback: called after every step's combine with a dict (k-diffusion's ``callback``):
            ``step``, ``timestep``, ``sample`` (the latents in), ``eps_u``/``eps_c`` (every
            branch's predictions), ``uncond``/``cond`` (the combined ones), ``weights`` and the
            combine rule's ``extras``. For observing a run (the probe, benchmarks, weight maps);
            it must not change the tensors.
        prepare: called before every computed step with ``step``, ``timestep``, ``sample``,
            ``added_cond_kwargs``, ``images`` (the prompt batch) and ``denoiser``: a method's
            between-call work that needs the latents (a grounded method measures its masks here;
            a ``select`` there holds from this step on).
    """

    def __init__(self, unet: torch.nn.Module, branches: Sequence[Branch], combine: CombineRule, batched: bool = True,
                 uncond_branches: int | Collection[int] | None = None, replay: Sequence[torch.Tensor] = (), record: bool = False,
                 stacked: bool = True, callback: Callable[[dict[str, Any]], None] | None = None,
                 prepare: Callable[[dict[str, Any]], None] | None = None):
        super().__init__()
        self.unet = unet
        self.branches = list(branches)
        self.active = list(range(len(self.branches)))
        self.combine = combine
        self.batched = batched
        self.uncond_branches = uncond_branches
        self.step = 0
        self.unet_calls = 0
        self.unet_samples = 0
        self.weights: list[torch.Tensor] = []  # per step: (N, B, Hp, Wp) or (N, B, 1, 1)
        self.replay = list(replay)
        self.record = record
        self.stacked = stacked
        self.outputs: list[torch.Tensor] = []
        # Per active branch, the latents it runs on instead of the pipeline's (None: the pipeline's);
        # a method that keeps trajectories of its own (composer.methods.fusion) sets it between steps.
        self.branch_samples: list[torch.Tensor | None] | None = None
        self.callback = callback
        self.prepare = prepare
        # The stacked forward (or PEFT's mixed batch) stays installed from one UNet call to the next
        # while the per-sample adapters are the same: entering it walks every module and checks every
        # layer's weights, 12-15% of a step on the tiny UNet (benchmarks/results/compose.md, run 5).
        # release() ends it.
        self._held: tuple[tuple[str, ...], contextlib.ExitStack] | None = None
        # The stacked forward's plans by adapter list, for this generation (the adapters and their
        # weights do not change within one): composer.stacked.stacked_adapter_batch.
        self._plans: dict = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["unet"], name)

    def select(self, indices: Sequence[int]) -> None:
        """Run only these branches from the next step on (used by the switch callback)."""
        self.active = list(indices)

    def release(self) -> None:
        """Take the stacked forward out of the UNet's layers (the run is over, or the adapters changed)."""
        if self._held is not None:
            held, self._held = self._held, None
            held[1].close()

    def _hold_stacked(self, adapters: Sequence[str]) -> bool:
        """Install the stacked forward for these per-sample adapters unless it already is; False
        when it cannot serve them (the caller then uses PEFT's mixed batch)."""
        key = ("stacked", *adapters)
        if self._held is not None and self._held[0] == key:
            return True
        self.release()
        stack = contextlib.ExitStack()
        if stack.enter_context(stacked_adapter_batch(self.unet, adapters, self._plans)):
            self._held = (key, stack)
            return True
        stack.close()
        return False

    def _hold_mixed(self, adapters: Sequence[str]) -> None:
        """Install PEFT's mixed batch for these per-sample adapters unless it already is. Held like
        the stacked forward: installing walks every module, and the probe's steps before its own (the
        base alone, ``__base__`` on every sample) cost 1.5 s a prompt that way in a profile with 32 LoRAs loaded."""
        key = ("mixed", *adapters)
        if self._held is not None and self._held[0] == key:
            return
        self.release()
        stack = contextlib.ExitStack()
        stack.enter_context(mixed_adapter_batch(self.unet, adapters))
        self._held = (key, stack)

    def _stackable(self, adapters: Sequence) -> bool:
        """The stacked forward serves this per-sample adapter list (and is installed for it)."""
        return self.stacked and len(set(adapters)) > 1 and None not in adapters and self._hold_stacked(adapters)

    def _call_unet(self, sample, timestep, ehs, adapters, added, kwargs):
        self.unet_calls += 1
        self.unet_samples += sample.shape[0]
        if self._stackable(adapters):
            return self._unet(sample, timestep, ehs, added, kwargs)
        if isinstance(adapters[0], tuple):  # merged adapters (one tuple for the whole call)
            self.release()
            with only_adapters(self.unet, adapters[0]):
                return self._unet(sample, timestep, ehs, added, kwargs)
        if not any(a is not None for a in adapters):
            self.release()
            return self._unet(sample, timestep, ehs, added, kwargs)
        if any(a is None for a in adapters):
            raise ValueError("cannot mix explicit adapters with the active-adapter branch in one call")
        self._hold_mixed(adapters)
        return self._unet(sample, timestep, ehs, added, kwargs)

    def _unet(self, sample, timestep, ehs, added, kwargs):
        return self.unet(sample, timestep, encoder_hidden_states=ehs, added_cond_kwargs=added, return_dict=False, **kwargs)[0]

    def forward(self, sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=True, **kwargs):
        if self.step < len(self.replay):
            out = self.replay[self.step]
            if out.shape != sample.shape:
                raise ValueError(f"replayed step {self.step} has shape {tuple(out.shape)}, the pipeline's latents {tuple(sample.shape)}")
            self.step += 1
            return (out,) if not return_dict else _Output(out)
        b = self.branches[0].cond.shape[0]
        if self.prepare is not None:  # it may select other branches for this very step
            self.prepare({"step": self.step, "timestep": timestep, "sample": sample, "images": b,
                          "added_cond_kwargs": added_cond_kwargs, "denoiser": self})
        branches = [self.branches[i] for i in self.active]
        if sample.shape[0] == 2 * b:
            halves = [("uncond", sample[:b]), ("cond", sample[b:])]
        elif sample.shape[0] == b:
            halves = [("cond", sample)]
        else:
            raise ValueError(f"latent batch {sample.shape[0]} is neither {b} nor {2 * b} (prompt batch {b})")
        time_ids = None
        if added_cond_kwargs is not None and "time_ids" in added_cond_kwargs:
            time_ids = added_cond_kwargs["time_ids"]
            t_halves = list(time_ids.chunk(len(halves)))
        # One entry per (branch, half), branch by branch: [u_0, c_0, u_1, c_1, ...] (the branches
        # past `uncond_branches` have no unconditional half), so that each adapter's samples form
        # one run and the stacked low-rank forward (composer.stacked) serves the whole batch.
        halves_by_kind = dict(halves)
        t_by_kind = {kind: t_halves[h] for h, (kind, _) in enumerate(halves)} if time_ids is not None else {}
        ub = self.uncond_branches
        if ub is None or isinstance(ub, int):
            n_u = len(branches) if ub is None else min(ub, len(branches))
            has_u = [i < n_u for i in range(len(branches))]
        else:
            has_u = [self.active[i] in ub for i in range(len(branches))]
        entries = [(kind, i) for i in range(len(branches)) for kind in ("uncond", "cond")
                   if kind in halves_by_kind and (kind == "cond" or has_u[i])]
        xs, ehs, pooled, tids, adapters = [], [], [], [], []
        own = self.branch_samples
        for kind, i in entries:
            br = branches[i]
            xs.append(own[i] if own is not None and own[i] is not None else halves_by_kind[kind])
            ehs.append(br.cond if kind == "cond" else br.uncond)
            pooled.append(br.pooled_cond if kind == "cond" else br.pooled_uncond)
            if time_ids is not None:
                tids.append(t_by_kind[kind])
            adapters.extend([br.adapter] * b)

        def added_for(sl):  # a slice or a list of entry indices
            if added_cond_kwargs is None:
                return None
            pick = (lambda v: v[sl]) if isinstance(sl, slice) else (lambda v: [v[j] for j in sl])
            out = dict(added_cond_kwargs)
            if pooled[0] is not None:
                out["text_embeds"] = torch.cat(pick(pooled))
            if time_ids is not None:
                out["time_ids"] = torch.cat(pick(tids))
            return out

        ts = timestep
        merged = [j for j, (_, i) in enumerate(entries) if isinstance(branches[i].adapter, tuple)]
        if self.batched and merged and not self._stackable(adapters):
            # The others in one call, each merged entry in a call of its own (PEFT's mixed batch
            # serves one adapter per sample; the stacked forward serves merged runs too).
            rest = [j for j in range(len(entries)) if j not in merged]
            parts = {}
            if rest:
                out = self._call_unet(torch.cat([xs[j] for j in rest]), ts, torch.cat([ehs[j] for j in rest]),
                                      [a for j in rest for a in adapters[j * b:(j + 1) * b]],
                                      added_for(rest), kwargs).split(b)
                parts.update(zip(rest, out))
            for j in merged:
                parts[j] = self._call_unet(xs[j], ts, ehs[j], adapters[j * b:(j + 1) * b], added_for([j]), kwargs)
            eps = torch.cat([parts[j] for j in range(len(entries))])
        elif self.batched:
            eps = self._call_unet(torch.cat(xs), ts, torch.cat(ehs), adapters, added_for(slice(None)), kwargs)
        else:
            eps = torch.cat([
                self._call_unet(xs[i], ts, ehs[i], adapters[i * b:(i + 1) * b], added_for(slice(i, i + 1)), kwargs)
                for i in range(len(xs))
            ])
        chunks = eps.split(b)
        eps_c = torch.stack([chunks[j] for j, (kind, _) in enumerate(entries) if kind == "cond"])
        eps_u = None
        if "uncond" in halves_by_kind:
            eps_u = torch.stack([chunks[j] for j, (kind, _) in enumerate(entries) if kind == "uncond"])
        combined = self.combine(eps_u, eps_c, self.step)
        u, c, w = combined.uncond, combined.cond, combined.weights
        if w is not None:
            self.weights.append(w.detach().float().cpu())
        if self.callback is not None:
            self.callback({"step": self.step, "timestep": timestep, "sample": sample, "eps_u": eps_u, "eps_c": eps_c,
                           "uncond": u, "cond": c, "weights": w, **combined.extras})
        self.step += 1
        out = c if u is None else torch.cat([u, c])
        if self.record:
            self.outputs.append(out.detach().clone())
        return (out,) if not return_dict else _Output(out)


@dataclass
class _Output:
    sample: torch.Tensor

    def __getitem__(self, i):
        return (self.sample,)[i]


@contextlib.contextmanager
def installed(pipe, denoiser: MultiLoraDenoiser) -> Iterator[MultiLoraDenoiser]:
    """Swap ``pipe.unet`` for the wrapper for the duration of a call, bypassing the pipeline's
    config bookkeeping (``DiffusionPipeline.__setattr__`` would record the wrapper's class); on
    the way out, the wrapper's stacked forward is taken out of the UNet again."""
    original = pipe.__dict__["unet"]
    pipe.__dict__["unet"] = denoiser
    try:
        yield denoiser
    finally:
        denoiser.release()
        pipe.__dict__["unet"] = original
