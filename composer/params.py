"""LoRAtorio's parameters (no torch import: the CLI reads the defaults for its --help)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoratorioParams:
    """LoRAtorio's knobs. Defaults are mechanical choices pending tuning on a trained model:

    * ``p=2``: 2x2 latent pixels = 16x16 image pixels for SD's 8x VAE, the finest grid that still
      pools 4 pixels x all channels into each cosine; on 64x64 (SD1.5 512 px) latents that is a
      32x32 weight grid. Sizes p does not divide are zero-padded (border patches are smaller).
    * ``tau=0.05``: cosines of eps predictions across LoRAs typically differ by a few hundredths;
      at tau=0.05 a 0.05 gap gives an e:1 weight ratio (tau=1 would be nearly uniform, tau->0 a
      hard argmin).
    * ``lam=0.5``: the issue's default re-centring weight.
    * ``k=None``: dynamic top-k off (all LoRAs); set k < N for a pool of many LoRAs.
    * ``equalise=False``: rescale each LoRA's divergence by its own mean before the SoftMin
      (``composer.math.equalise_divergence``; ours, not the paper's).
    """

    p: int = 2
    tau: float = 0.05
    lam: float = 0.5
    k: int | None = None
    equalise: bool = False
