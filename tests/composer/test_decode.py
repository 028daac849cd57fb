"""composer.decode: latents decoded outside the pipeline's call match the pipeline's own decode."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from composer.decode import decode_latents, to_pil, to_tensor


@pytest.mark.parametrize("kind", ["sd1_dir", "sdxl_dir"])
def test_decode_latents_is_the_pipelines_own_decode(kind, request):
    pipe = DiffusionPipeline.from_pretrained(request.getfixturevalue(kind))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="a cat", num_inference_steps=2, height=32, width=32, guidance_scale=2.0)
    latents = pipe(**kw, output_type="latent", generator=torch.Generator().manual_seed(1)).images
    image = pipe(**kw, generator=torch.Generator().manual_seed(1)).images[0]
    ours = np.asarray(to_pil(decode_latents(pipe, latents)))
    assert ours.shape == np.asarray(image).shape
    assert np.abs(ours.astype(int) - np.asarray(image).astype(int)).max() <= 1
    assert np.asarray(image).std() > 1  # an image, not a constant the test would pass on


def test_pixels_survive_the_round_trip():
    x = torch.rand(1, 3, 5, 7)
    back = to_tensor(to_pil(x))
    assert back.shape == x.shape
    assert (back - x).abs().max() <= 0.5 / 255 + 1e-6
