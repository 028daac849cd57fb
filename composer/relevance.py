"""Which LoRAs matter for a prompt: probe scores, their combination with retrieval, pruning.

Pure tensor functions (torch only). The idea is LoRAtorio's own observation (arXiv:2508.11624,
https://arxiv.org/abs/2508.11624, Sec. 3): a LoRA conditioned on a prompt outside its domain
predicts almost what the base model predicts, so the cosine similarity ``s_ij`` between LoRA i's
conditional noise prediction and the base's on patch j is close to 1; a LoRA that the prompt
calls on diverges, strongly (``1 - s_ij`` large) or over many patches. The probe records
``s_ij`` for the first P denoising steps and scores each candidate by

    d_ij      = 1 - s_ij                                   divergence on patch j
    m_ij      = [i among the k most divergent on patch j]   LoRAtorio's dynamic top-k (coverage)
    far_i     = mean_j d_ij                                 how far
    coverage_i= mean_j m_ij                                 over how many patches
    probe_i   = mean_j d_ij * m_ij                          divergence mass of the patches it wins

``probe_i`` is what the composition would actually draw from LoRA i at those steps (top-k keeps
only winners), and it is 0 for an identity LoRA whatever the others do.

Shapes: similarities are ``(N, B, Hp, Wp)`` per step (N candidates), or ``(P, N, B, Hp, Wp)``
for P steps; scores are ``(N,)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from composer.math import topk_divergence_mask

__all__ = ["ProbeScores", "probe_scores", "strength", "agreement", "phrase_scores", "peer_weights", "concept_of", "relative", "combine_scores", "prune",
           "prune_by_phrase"]


@dataclass
class ProbeScores:
    """Per-candidate ``(N,)`` tensors, averaged over the probe's steps and the batch."""

    far: torch.Tensor
    coverage: torch.Tensor
    score: torch.Tensor


def probe_scores(similarity: torch.Tensor, k: int | None) -> ProbeScores:
    """Intrinsic relevance of N candidates from their patch similarities to the base model.

    Args:
        similarity: ``(P, N, B, Hp, Wp)`` cosine similarities ``s_ij`` of P probe steps
            (``composer.math.patch_cosine_similarity`` of each step), or one step ``(N, B, Hp, Wp)``.
        k: the dynamic top-k of the probe (None or >= N: every candidate covers every patch,
            and the score is the mean divergence).

    Returns:
        ProbeScores with ``far``, ``coverage`` and ``score = mean(d * m)``, each ``(N,)``.
    """
    if similarity.ndim == 4:
        similarity = similarity.unsqueeze(0)
    if similarity.ndim != 5:
        raise ValueError(f"expected similarities (P, N, B, Hp, Wp) or (N, B, Hp, Wp), got {tuple(similarity.shape)}")
    d = 1.0 - similarity.float()
    # The top-k is per step and per patch, over the candidates (dim 1 here, dim 0 of each step).
    m = torch.stack([topk_divergence_mask(s, k) for s in similarity]).float()
    dims = (0, 2, 3, 4)
    return ProbeScores(far=d.mean(dims), coverage=m.mean(dims), score=(d * m).mean(dims))


def strength(deltas: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """How much each LoRA moves the noise prediction: ``||eps_i - eps_base|| / ||eps_base||``,
    averaged over steps and images.

    Args:
        deltas: ``(P, N, B, ...)`` each LoRA's conditional prediction minus the base's.
        base: ``(P, B, ...)`` the base's conditional prediction.

    Returns:
        ``(N,)``: 0 for an inert LoRA, whatever the other candidates do (unlike the patch
        divergence's top-k coverage, which credits only the LoRAs that diverge most, so a small object
        LoRA beside whole-image ones scores near 0 although it draws its object).
    """
    d = deltas.flatten(3).float().norm(dim=-1)  # (P, N, B)
    b = base.flatten(2).float().norm(dim=-1).clamp_min(1e-12)  # (P, B)
    return (d / b.unsqueeze(1)).mean(dim=(0, 2))


def agreement(deltas: torch.Tensor) -> torch.Tensor:
    """``(N, N)`` cosine similarity of the LoRAs' changes to the prediction (``(P, N, B, ...)``
    deltas), averaged over steps and images: two LoRAs of one concept change the image the same way."""
    d = F.normalize(deltas.flatten(3).float(), dim=-1)  # (P, N, B, D)
    return torch.einsum("pibd,pjbd->ij", d, d) / (d.shape[0] * d.shape[2])


def phrase_scores(power: torch.Tensor, agree: torch.Tensor, phrases: list[str | None],
                  active: list[bool] | None = None, agreement_power: float = 2.0, weighted: bool = True) -> torch.Tensor:
    """A candidate's probe score within its phrase: its strength times its agreement with the
    phrase's other active candidates, raised to ``agreement_power`` (``(N,)`` strength, ``(N, N)``
    agreement). The agreement is a weighted mean over the peers (clamped at 0), each peer weighted
    by its own mean agreement with its peers (``peer_weights``; ``weighted=False``: a plain mean).

    Why: a phrase's candidates are alternatives for one concept. Near-duplicates (a weaker copy, a
    later version) change the image the same way, a mislabelled LoRA another way; so the candidate
    most in line with its peers is the likeliest to draw what the phrase names, and among those in
    line the strongest wins (a weak copy loses to the full one). A candidate without active peers
    keeps its strength.

    Why the weights: with every peer counted equally, a mislabelled LoRA still voted, and it leaned
    to the weak copy as often as to the full one, which then lost by a hair (ToyWorld: the weak kiki
    kept over the kiki in 33 of 408 runs); weighted by how much a peer is itself in line, its vote
    counts little. Exact selection 86% -> 94% on seeds 0-3, 90% -> 93% on seeds 4-7 (re-pruned
    from the same probes; benchmarks/results/toyworld_selection.md).

    Why the power: strengths of one phrase's candidates spread over a factor of 4-10 (a background
    LoRA moves the prediction far more than an object LoRA), agreements over 0.3-0.7, so with a
    plain product a strong mislabelled LoRA outvoted its peers. Squared agreement (the same ranking
    as agreement x sqrt(strength)) halved the mislabelled survivors on ToyWorld and held on seeds it
    was not chosen on (benchmarks/results/toyworld_selection_lorapath.md)."""
    n = power.shape[0]
    active = [True] * n if active is None else active
    peers = [[j for j in range(n) if j != i and active[j] and phrases[j] == phrases[i]] for i in range(n)]
    weights = peer_weights(agree, peers) if weighted else torch.ones(n)
    out = power.clone().float()
    for i in range(n):
        if peers[i]:
            a = agree[i, peers[i]].float().clamp_min(0)
            w = weights[peers[i]]
            mean = (a * w).sum() / w.sum() if float(w.sum()) > 0 else a.mean()
            out[i] = power[i] * mean ** agreement_power
    return out


def peer_weights(agree: torch.Tensor, peers: list[list[int]]) -> torch.Tensor:
    """``(N,)`` each candidate's mean agreement (clamped at 0) with its own peers (0 without any):
    how much its vote on the others counts."""
    return torch.stack([agree[i, p].float().clamp_min(0).mean() if p else agree.new_zeros((), dtype=torch.float)
                        for i, p in enumerate(peers)])


def concept_of(phrase: str | None, match: str | None, triggers: tuple[str, ...]) -> str | None:
    """What a candidate was found for: its trigger word when the phrase contains it, else the phrase.

    Why: "a kiki with halo on the left and a bouba with halo on the right" has two halo phrases;
    keyed by phrase, each would keep its own halo LoRA (two different ones). Keyed by the typed
    trigger, every halo candidate competes once and one halo LoRA serves both."""
    if phrase is None or match != "trigger":
        return phrase
    words = f" {' '.join(phrase.lower().split())} "
    for t in triggers:
        t = " ".join(t.lower().split())
        if t and f" {t} " in words:
            return t
    return phrase


def eligible(phrases: list[str | None], matches: list[str | None], retrieval: list[float | None],
             min_semantic: float) -> dict[int, str]:
    """Candidates that may not serve their phrase, with the reason: a semantic-only hit in a phrase
    where another candidate's trigger or name was typed (the user named that one), or a
    semantic-only hit under ``min_semantic`` (a phrase like "dark background" finds the nearest
    background LoRAs, but asks for none)."""
    named = {p for p, m in zip(phrases, matches) if m in ("trigger", "name")}
    out: dict[int, str] = {}
    for i, (p, m, r) in enumerate(zip(phrases, matches, retrieval)):
        if m in ("trigger", "name") or p is None:
            continue
        if p in named:
            out[i] = f"for {p!r}, another candidate's trigger or name is in the prompt"
        elif r is not None and r < min_semantic:
            out[i] = f"a loose match for {p!r} (retrieval {r:.2f} < {min_semantic:g})"
    return out


def relative(x: torch.Tensor) -> torch.Tensor:
    """``x / max(x)``, clamped to [0, 1]: each score as a fraction of the best candidate's.

    A ratio (not min-max) keeps 0 meaning "no signal": an identity LoRA stays at 0 instead of
    being stretched up when every candidate is weak. All-zero (or negative) input gives zeros.
    """
    top = x.max() if x.numel() else torch.tensor(0.0)
    if top <= 0:
        return torch.zeros_like(x, dtype=torch.float32)
    return (x.float() / top).clamp(0.0, 1.0)


def combine_scores(probe: torch.Tensor, retrieval: torch.Tensor | None, retrieval_weight: float) -> torch.Tensor:
    """Weighted geometric mean of the relative probe and retrieval scores, each ``(N,)``.

    ``combined = relative(probe)^(1 - w) * relative(retrieval)^w``. Geometric, not arithmetic,
    because the two answer different questions (does the prompt ask for it? does it act on this
    prompt?) and a keeper needs both: with a sum, a LoRA that distorts every image (large
    divergence) but that the prompt never names would still pass, and so would a well-named LoRA
    that the probe shows to be inert. ``w = 0`` is the probe alone, ``w = 1`` retrieval alone;
    ``retrieval=None`` (a user-given pool) is the probe alone.
    """
    if not 0.0 <= retrieval_weight <= 1.0:
        raise ValueError(f"retrieval weight must be in [0, 1], got {retrieval_weight}")
    p = relative(probe)
    if retrieval is None:
        return p
    if retrieval.shape != probe.shape:
        raise ValueError(f"retrieval scores {tuple(retrieval.shape)} do not match probe scores {tuple(probe.shape)}")
    r = relative(retrieval)
    return p.pow(1.0 - retrieval_weight) * r.pow(retrieval_weight)


def prune(scores: torch.Tensor, k: int, threshold: float = 0.0) -> tuple[list[int], dict[int, str]]:
    """Survivors: the best ``k`` candidates whose score is at least ``threshold * best``.

    The best candidate always survives (a request asks for an image with some LoRA). Ties go to
    the lower index, so the result is deterministic.

    Args:
        scores: ``(N,)`` combined scores.
        k: most survivors (k_max), >= 1.
        threshold: relative cut in [0, 1]; 0 keeps exactly ``min(k, N)``.

    Returns:
        (indices of survivors, best first; {dropped index: reason}).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    n = scores.shape[0]
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    best = float(scores[order[0]]) if n else 0.0
    keep: list[int] = []
    dropped: dict[int, str] = {}
    for rank, i in enumerate(order, 1):
        s = float(scores[i])
        if rank > 1 and s < threshold * best:
            dropped[i] = f"score {s:.3f} below threshold {threshold:g} x best {best:.3f}"
        elif len(keep) >= k:
            dropped[i] = f"rank {rank} of {n}: only the best {k} are kept"
        else:
            keep.append(i)
    return keep, dropped


# A dropped candidate within this fraction of its phrase's kept one is reported as a close call, so
# that a user knows the probe barely chose. It is information, not a cure: in the selection
# benchmark's runs (toyworld_selection_lorapath.json, the probe before it followed the base) 184 of the 521 drops of a good LoRA for another
# candidate were close calls, and 310 of the 1,080 drops of another candidate for the good LoRA.
CLOSE_CALL = 0.9


def prune_by_phrase(scores: torch.Tensor, phrases: list[str | None], per_phrase: int = 1, *,
                    strength: torch.Tensor | None = None, inert: float = 0.002,
                    excluded: dict[int, str] | None = None) -> tuple[list[int], dict[int, str], list[str]]:
    """Phrase-wise survivors: each phrase of the prompt asks for at most ``per_phrase`` LoRAs, so
    candidates compete only with the other candidates of their own phrase (a whole-image LoRA found
    for "background" cannot push out the object another phrase asked for).

    Args:
        scores: ``(N,)`` scores that rank a phrase's candidates (``phrase_scores``).
        phrases: per candidate, the phrase that found it (None: no phrase; those compete together).
        per_phrase: most survivors per phrase.
        strength: ``(N,)`` each candidate's ``strength``; one under ``inert`` barely changes the
            image and is dropped. None: nothing is judged inert.
        excluded: {index: reason} of candidates that may not serve (``eligible``).

    Returns:
        (survivors best first, {dropped index: reason}, phrases no candidate serves: the base draws them).
    """
    if per_phrase < 1:
        raise ValueError(f"per_phrase must be >= 1, got {per_phrase}")
    if len(phrases) != scores.shape[0]:
        raise ValueError(f"{len(phrases)} phrases for {scores.shape[0]} scores")
    excluded = excluded or {}
    groups: dict[str | None, list[int]] = {}
    for i, p in enumerate(phrases):
        groups.setdefault(p, []).append(i)
    keep: list[int] = []
    dropped: dict[int, str] = {}
    unserved: list[str] = []
    for phrase, members in groups.items():
        members.sort(key=lambda i: (-float(scores[i]), i))
        where = f"for {phrase!r}" if phrase is not None else "without a phrase"
        served, best = 0, None
        for i in members:
            s = float(scores[i])
            if i in excluded:
                dropped[i] = excluded[i]
            elif strength is not None and float(strength[i]) < inert:
                dropped[i] = f"inert {where}: it changes the prediction by {float(strength[i]):.2%} (< {inert:.2%})"
            elif served >= per_phrase:
                close = best > 0 and s >= CLOSE_CALL * best
                dropped[i] = (f"another candidate {where} scored higher ({best:.4f} vs {s:.4f})"
                              + ("; a close call: name the one you want with --lora" if close else ""))
            else:
                keep.append(i)
                served += 1
                best = s if best is None else best
        if phrase is not None and served == 0:
            unserved.append(phrase)
    keep.sort(key=lambda i: (-float(scores[i]), i))
    return keep, dropped, unserved
