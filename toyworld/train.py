"""One command for the whole ToyWorld training: `python -m toyworld.train --stage all`.

Stages: `ae` (autoencoder), `base` (text encoder + UNet, exported as a StableDiffusionPipeline),
`loras` (one kohya LoRA per skill plus its Civitai sidecar). Each stage resumes from the
checkpoints in --work, and a finished stage is skipped, so rerunning the same command continues.
With `all`, each stage runs in its own subprocess so that it uses the code as it is when the
stage starts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

DEFAULT_WORK = Path(__file__).resolve().parent / "work"
STAGES = ("ae", "base", "loras")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m toyworld.train", description=__doc__)
    p.add_argument("--stage", choices=STAGES + ("all",), default="all")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a busy 2-core box)")
    p.add_argument("--ae-steps", type=int, default=1400)
    p.add_argument("--ae-lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=11000, help="base UNet steps")
    p.add_argument("--lr", type=float, default=5e-4, help="base learning rate")
    p.add_argument("--lora-steps", type=int, default=None,
                   help="steps for every LoRA trained (default: per skill, toyworld.train_lora.RECIPE)")
    p.add_argument("--lora-lr", type=float, default=1.5e-3)
    p.add_argument("--lora-network", choices=("attn", "locon"), default=None,
                   help="UNet modules a new LoRA trains (default: per skill, toyworld.train_lora.RECIPE)")
    p.add_argument("--dump", type=Path, default=None, help="where LoRAs go (default: toyworld/assets/dump)")
    p.add_argument("--skills", default="", help="comma-separated subset of skills for `loras`")
    p.add_argument("--ae-init", type=Path, default=None, help="fine-tune this saved autoencoder")
    p.add_argument("--base-init", type=Path, default=None,
                   help="fine-tune this exported pipeline's UNet and text encoder (new words get new embeddings)")
    p.add_argument("--lora-init", type=Path, default=None,
                   help="fine-tune the LoRAs of this dump (same file names) instead of starting from zero")
    p.add_argument("--export", type=Path, default=None,
                   help="write pipeline/ and dump/ here instead of toyworld/assets (a retraining beside the committed models)")
    return p.parse_args(argv)


def run_stage(args: argparse.Namespace) -> None:
    t0 = time.time()
    if args.stage == "ae":
        from toyworld.train_ae import train_ae

        train_ae(args.work, args.ae_steps, args.batch, args.ae_lr, args.seed, init=args.ae_init)
    elif args.stage == "base":
        from toyworld.train_base import train_base

        out = args.export / "pipeline" if args.export else None
        train_base(args.work, args.steps, args.batch, args.lr, args.seed, out=out, init=args.base_init)
    elif args.stage == "loras":
        from toyworld.train_lora import train_loras

        skills = [s for s in args.skills.split(",") if s]
        pipeline_dir = args.export / "pipeline" if args.export else None
        dump = args.dump or (args.export / "dump" if args.export else None)
        train_loras(args.work, args.lora_steps, args.batch, args.lora_lr, args.seed, skills,
                    pipeline_dir=pipeline_dir, dump=dump, network=args.lora_network, init=args.lora_init)
    print(f"[{args.stage}] stage time {(time.time() - t0) / 60:.1f} min", flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage != "all":
        run_stage(args)
        return
    rest = [a for a in argv if not a.startswith("--stage") and a not in STAGES + ("all",)]
    for stage in STAGES:
        cmd = [sys.executable, "-m", "toyworld.train", "--stage", stage, *rest]
        print(f"[all] {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
