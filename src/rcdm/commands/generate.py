"""rcdm generate: representations drawn from a prior (rcdm prior), then one image for each."""

from __future__ import annotations

import argparse
import json

from safetensors.torch import save_file

from ..checks import check_guidance, check_seed
from ..diffusion import SAMPLERS, SamplingConfig, resolve_sampling, sample_many
from ..errors import RCDMError
from ..figures import grid, save_png, with_caption
from ..files import output_folder
from ..prior import check_prior_matches, load_prior, prior_for, sample_representations
from .common import (
    add_command,
    add_folder_output_args,
    add_model_args,
    load_model_and_encoder,
    positive,
)

EPILOG = """examples:
  rcdm generate --model cifar10-vicreg-backbone --prior priors/vicreg --num-images 64 --out dreams/
  rcdm generate --model cifar10-vicreg-backbone --prior priors/vicreg --num-images 1000 --guidance 1 --out g1/

Writes OUT/00000.png ..., OUT/grid.png (the first 64) and OUT/generate.json (the settings and the sampled
representations' file, OUT/representations.safetensors).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "generate", "images from representations sampled from a prior (rcdm prior)", EPILOG)
    add_model_args(p)
    p.add_argument(
        "--prior",
        default=None,
        help="a prior folder (rcdm prior's --out, or its prior/ folder) or the name of an installed one "
        "(default: the installed prior of the model's encoder, as the CIFAR-10 pack ships for its VICReg backbone)",
    )
    p.add_argument("--num-images", type=int, required=True, help="how many images")
    p.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    p.add_argument("--prior-steps", type=int, default=50, help="DDIM steps of the prior (default 50)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="image sampler (default dpm++)")
    p.add_argument("--steps", type=int, default=None, help="image sampler steps (default: the model's)")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance weight (default: the model's recorded default, else 1)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the representations and of the images (default 0)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per network call (default 64)")
    add_folder_output_args(p, "rcdm generate")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    n = positive("--num-images", args.num_images, 1_000_000)
    positive("--prior-steps", args.prior_steps)
    sampling = SamplingConfig(
        seed=check_seed(args.seed), batch_size=positive("--batch-size", args.batch_size)
    ).replace(
        sampler=args.sampler,
        steps=None if args.steps is None else positive("--steps", args.steps),
        guidance=None if args.guidance is None else check_guidance(args.guidance),
        precision=args.precision,
    )
    prior, record = load_prior(args.prior) if args.prior else (None, {})
    with output_folder(
        args.out, overwrite=args.overwrite, marker="generate.json", command="rcdm generate"
    ) as out:
        model, encoder = load_model_and_encoder(args)
        if prior is None:
            found = prior_for(encoder)
            if found is None:
                raise RCDMError(
                    f"no prior installed for {encoder.spec} ({encoder.feature}): pass --prior FOLDER, trained with "
                    f"rcdm prior --model {args.model}"
                )
            args.prior = found.name
            prior, record = load_prior(found)
            print(f"prior: {found.name}, the installed prior of {encoder.spec} ({encoder.feature})")
        check_prior_matches(record, encoder)
        sampling = resolve_sampling(model, sampling)
        reps = sample_representations(prior, n, steps=args.prior_steps, seed=args.seed)
        images = sample_many(model, reps, 1, sampling, progress=not args.no_progress)[:, 0]
        for i, img in enumerate(images):
            save_png(img, out / f"{i:05d}.png")
        shown = images[:64]
        cols = 8
        caption = (
            f"{args.model} ({encoder.spec}, {encoder.feature}) from representations of the prior {args.prior} "
            f"({args.prior_steps} steps); {sampling.describe()}"
        )
        figure = grid([list(shown[r : r + cols]) for r in range(0, len(shown), cols)])
        with_caption(figure, caption).save(out / "grid.png")
        save_file({"representations": reps.contiguous()}, out / "representations.safetensors")
        settings = {
            "model": args.model,
            "prior": str(args.prior),
            "prior_steps": args.prior_steps,
            "num_images": n,
            **sampling.record(),
        }
        (out / "generate.json").write_text(json.dumps(settings, indent=2))
    print(f"wrote {n} images and grid.png to {args.out}")
    return 0
