"""Where along the base model's path does a full ToyWorld LoRA move the prediction more than its
quick-trained copy (toyworld/assets/weak)? What chose the probe's start (SelectionParams.probe_start).

    .venv/bin/python benchmarks/probe_steps.py [--skills kiki,halo] [--prompts 4] [--seeds 3]

For each skill, its first ``--prompts`` ToyWorld prompts (1- and 2-skill tasks of SPEC) x seeds: the
base's own path (DDIM 25 steps, CFG 2); at each step of STEPS, the full and the weak LoRA's
conditional predictions (each with its own text encoder) against the base's. Writes the rows to
benchmarks/results/toyworld_probe_steps.json; the table in toyworld_probe_steps.md was made from them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STEPS = (0, 1, 2, 6, 7, 8, 12, 13, 14)


def main() -> None:
    from toyworld import spec
    from toyworld.captions import task_for, task_skill_sets
    from toyworld.generate import GUIDANCE, load_pipeline
    from toyworld.generate import STEPS as N_STEPS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skills", default=",".join(spec.TRIGGERS))
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "toyworld_probe_steps.json")
    args = ap.parse_args()
    assets = ROOT / "toyworld" / "assets"
    pipe = load_pipeline(str(assets / "pipeline"))
    skills = args.skills.split(",")
    for s in skills:
        pipe.load_lora_weights(str(assets / "dump" / f"toyworld_{s}.safetensors"), adapter_name=f"g_{s}")
        pipe.load_lora_weights(str(assets / "weak" / f"toyworld_{s}.safetensors"), adapter_name=f"w_{s}")

    def use(adapter: str | None) -> None:
        if adapter is None:
            pipe.disable_lora()
        else:
            pipe.enable_lora()
            pipe.set_adapters([adapter])

    def encode(prompt: str, adapter: str | None) -> torch.Tensor:
        use(adapter)  # each LoRA reads the prompt through its own text encoder
        return pipe.encode_prompt(prompt, "cpu", 1, False)[0]

    @torch.no_grad()
    def eps(adapter: str | None, x: torch.Tensor, t, e: torch.Tensor) -> torch.Tensor:
        use(adapter)
        return pipe.unet(x, t, encoder_hidden_states=e).sample

    rows = []
    for s in skills:
        prompts = [task_for(sk, np.random.default_rng([7, n, i])).prompt
                   for n in (1, 2) for i, sk in enumerate(task_skill_sets(n)) if s in sk][:args.prompts]
        for prompt in prompts:
            without = " ".join(prompt.replace(s, "").split())  # the trigger word taken out
            e, e0 = encode(prompt, None), encode(without, None)
            own = {k: (encode(prompt, f"{k}_{s}"), encode(without, f"{k}_{s}")) for k in ("g", "w")}
            for seed in range(args.seeds):
                xs: dict[int, torch.Tensor] = {}

                def keep(_pipe, i, _t, kw):
                    xs[i + 1] = kw["latents"].clone()
                    return kw

                use(None)
                pipe(prompt_embeds=e, num_inference_steps=N_STEPS, guidance_scale=GUIDANCE, output_type="latent",
                     generator=torch.Generator().manual_seed(seed), callback_on_step_end=keep)
                xs[0] = torch.randn(xs[1].shape, generator=torch.Generator().manual_seed(seed)) * pipe.scheduler.init_noise_sigma
                for st in STEPS:
                    x, t = xs[st], pipe.scheduler.timesteps[st]
                    b, b0 = eps(None, x, t, e), eps(None, x, t, e0)
                    rec = {"skill": s, "prompt": prompt, "seed": seed, "step": st}
                    for k in ("g", "w"):  # g: the full LoRA, w: its weak copy
                        a, a0 = eps(f"{k}_{s}", x, t, own[k][0]), eps(f"{k}_{s}", x, t, own[k][1])
                        rec[f"{k}_str"] = float((a - b).norm() / b.norm())
                        rec[f"{k}_trig"] = float(((a - a0) - (b - b0)).norm() / b.norm())
                    rows.append(rec)
        print(s, len(rows), flush=True)
        args.out.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
