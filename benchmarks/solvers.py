"""How far few-step ODE samplers land from a many-step reference, from the same noise: rcdm's dpm++ (DPM-Solver++
2M) against DPM-Solver++ 3M and UniPC (orders 2 and 3), on CIFAR-10 test images (benchmarks/results/pack-demo-cpu-2core.md).

    python benchmarks/solvers.py --cifar ~/.cache/rcdm/cifar10 \\
        --judge cifar-resnet56:../shared/data/cifar-resnet/resnet56-4bfd9763.th --images 96 --guidance 5

Every deterministic solver approximates the same probability-flow ODE, so the distance of each sample to the
reference solution from the same noise (dpm++ at --reference-steps) measures the solver's error directly, on far
fewer images than faithfulness rates need. The other solvers take rcdm's dpm++ settings (linspace timesteps, x0
clipped to [-1, 1]) and are swapped in through `rcdm.diffusion.make_scheduler`; one Markdown row per setting.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

import rcdm.diffusion as diffusion
from rcdm import create_encoder, encoder_for, load_model
from rcdm.data import load_views
from rcdm.losses import SCHEDULE
from rcdm.pack.evaluation import evaluation_images

SOLVERS = ("dpm++2m", "dpm++3m", "unipc2", "unipc3")
RCDM_SCHEDULER = diffusion.make_scheduler


def scheduler_for(solver: str):
    """make_scheduler's stand-in for 'dpm++': SOLVER with rcdm's dpm++ settings."""

    def make(sampler: str, learned_variance: bool):
        if sampler != "dpm++" or solver == "dpm++2m":
            return RCDM_SCHEDULER(sampler, learned_variance)
        common = dict(**SCHEDULE, timestep_spacing="linspace", thresholding=True, sample_max_value=1.0)
        if solver == "dpm++3m":
            return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=3)
        return UniPCMultistepScheduler(
            **common, solver_order=int(solver[-1]), predict_x0=True, solver_type="bh2"
        )

    return make


def setting(text: str) -> tuple[str, int]:
    solver, _, steps = text.partition(":")
    if solver not in SOLVERS or not steps.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give SOLVER:STEPS, SOLVER one of {', '.join(SOLVERS)}")
    return solver, int(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cifar10-vicreg-backbone")
    ap.add_argument("--cifar", required=True, help="CIFAR-10 root (its test/ split is used)")
    ap.add_argument("--judge", required=True, help="judge encoder spec (no RCDM should be conditioned on it)")
    ap.add_argument("--images", type=int, default=96, help="class-balanced test images")
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--reference-steps", type=int, default=100)
    default = "dpm++2m:50 dpm++2m:20 dpm++2m:15 dpm++2m:12 dpm++2m:10 dpm++3m:10 unipc2:10 unipc3:10 dpm++3m:12 unipc3:12"
    ap.add_argument("--settings", type=setting, nargs="+", default=[setting(s) for s in default.split()])
    args = ap.parse_args()
    model = load_model(args.model)
    encoder, judge = encoder_for(model), create_encoder(args.judge)
    _, views = load_views(
        evaluation_images(args.cifar, args.images), model.config.sample_size, encoder.preprocessing.input_size
    )
    reps = encoder.encode(views)

    def run(solver: str, steps: int) -> tuple[torch.Tensor, float]:
        diffusion.make_scheduler = scheduler_for(solver)
        t = time.perf_counter()
        cfg = diffusion.SamplingConfig(
            sampler="dpm++", steps=steps, guidance=args.guidance, seed=0, batch_size=64
        )
        return diffusion.sample(model, reps, cfg), time.perf_counter() - t

    reference, _ = run("dpm++2m", args.reference_steps)
    ref_features = judge.encode(reference)
    print(
        f"{args.images} images, guidance {args.guidance:g}; reference: dpm++ 2M, {args.reference_steps} steps\n\n"
        "| solver | steps | RMS to the reference (pixels in [0, 1]) | worst image | judge cosine to the reference | "
        "wall s |\n| --- | ---: | ---: | ---: | ---: | ---: |",
        flush=True,
    )
    for solver, steps in args.settings:
        x, seconds = run(solver, steps)
        rms = (x - reference).pow(2).flatten(1).mean(1).sqrt()
        cosine = torch.nn.functional.cosine_similarity(judge.encode(x), ref_features).mean()
        print(
            f"| {solver} | {steps} | {rms.mean():.4f} | {rms.max():.4f} | {cosine:.4f} | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
