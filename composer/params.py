"""LoRAtorio's parameters (no torch import: the CLI reads the defaults for its --help)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoratorioParams:
    """LoRAtorio's knobs, chosen by measurement on ToyWorld (``python
    benchmarks/bench_toyworld_quality.py --sweep --seeds 3``, 48 tasks of N = 2 and 3 per setting,
    ranked by task success plus the share of named skills shown; benchmarks/results/toyworld_sweep.md):

    * ``p=1``: one latent pixel per patch. p = 1, 2 and 4 scored within noise of each other
      (skills shown 35-42% at N = 2); 1 came out on top with tau = 0.25, and the cosines of a
      finer grid follow small objects more closely. Sizes p does not divide are zero-padded.
    * ``tau=0.25``: of 0.01 / 0.05 / 0.25, the softest did best (N = 2 success 8% vs 4%, N = 3
      shown 38% vs 29-32%). On ToyWorld a background LoRA diverges from the base 3-10x more
      than an object LoRA even inside the object's box (benchmarks/results/toyworld_divergence.md),
      so a sharp SoftMin hands it the object's patches; a softer one keeps the object LoRA in.
    * ``lam=0.5``: of 0 / 0.25 / 0.5 / 0.75 / 1, 0.5 scored best (lambda 0, the LoRAs'
      unconditional alone, collapsed to 17% shown).
    * ``k=None``: dynamic top-k off (all LoRAs); set k < N for a pool of many LoRAs.
    * ``equalise=False``: rescale each LoRA's divergence by its own mean before the SoftMin
      (``composer.math.equalise_divergence``; ours, not the paper's). Measured worse: skills
      shown 21-35% against 35-42% without it.
    """

    p: int = 1
    tau: float = 0.25
    lam: float = 0.5
    k: int | None = None
    equalise: bool = False
