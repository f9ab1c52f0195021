"""rcdm adapt: a new encoder onto a frozen RCDM (a ridge map, then an adapter under the diffusion loss)."""

from __future__ import annotations

import argparse

from ..adaptation import TRAINABLE, AdaptConfig, AdaptResult, adapt, saved_config
from ..model import ADAPTERS
from .common import add_command, add_config_options, add_precision_arg, add_progress_arg, settings_from_args

EPILOG = """examples (docs/adapt.md):
  rcdm adapt --model cifar10-vicreg-backbone --encoder cifar-resnet20:resnet20.th --data ~/data/cifar10/train \\
      --out runs/r20-via-vicreg                      # 10 minutes on 2 CPU cores
  rcdm sample --model runs/r20-via-vicreg --images cat.jpg --guidance 5 --out samples/
  rcdm adapt --model official:dino-backbone --encoder timm:vit_small_patch14_dinov2.lvd142m \\
      --data ~/imagenet/val --out runs/dinov2-via-dino --minutes 30     # a GPU is used when there is one
"""

# The options that set an AdaptConfig field: name -> help; types, choices and defaults come from the dataclass.
ADAPT_OPTIONS = {
    "minutes": "the whole budget in wall-clock minutes, encoding included",
    "steps": "stop the adapter after this many steps (0: the ridge map alone; default: as many as the budget "
    "allows)",
    "num_images": "images drawn from --data",
    "adapter": "linear: one affine map into the base's representation space; mlp: that map plus a residual MLP",
    "hidden": "the mlp's width",
    "layers": "the mlp's hidden layers (2: a better fit of the map for about 4x its fitting time)",
    "map_steps": "regression steps (batches of 256 cached pairs) that fit the mlp adapter's residual onto the base's "
    "representations before the diffusion loss, at most half the time left (0: the mlp starts as the ridge map)",
    "trainable": "what the diffusion loss trains: the adapter, or also the UNet's per-block time-embedding "
    "projections, or every weight of the base (all: a fine-tune of the whole network; give a lower --lr, e.g. 2e-4)",
    "lr": "AdamW learning rate",
    "warmup_steps": "linear learning-rate warm-up over this many steps",
    "batch_size": "images per step",
    "cond_drop": "share of the batch trained on the base's null representation, so guidance keeps working",
    "loss_weighting": "min-snr: Min-SNR-gamma weighting of the squared error (as rcdm train); none: unweighted",
    "snr_gamma": "gamma of --loss-weighting min-snr",
    "encoder_loss": "weight of a second loss in the new encoder's own space, added to the diffusion loss: 1 - the "
    "cosine between its representation of the denoiser's clean-image prediction and the source's (0: off; keep it "
    "small: the held-out check reads the same cosine)",
    "val_images": "held-out images (never trained on) sampled and encoded again to pick what is kept: the map or the "
    "adapter at a checkpoint, whichever is more faithful (0: the last adapter, unchecked)",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "adapt", "show a new encoder through a trained RCDM, in minutes", EPILOG)
    p.add_argument(
        "--model",
        default=None,
        help="the base RCDM (a bundled name, run or model folder, official:NAME); required unless --resume",
    )
    p.add_argument(
        "--encoder", default=None, help="the new encoder's spec (README: Encoders); required unless --resume"
    )
    add_config_options(p, AdaptConfig, {"feature": "its representation level"})
    p.add_argument(
        "--base-encoder",
        default=None,
        help="the base model's encoder spec, when the one its config names cannot be used as it is (a published "
        "model's encoder from local weights); default: the config's",
    )
    p.add_argument(
        "--data",
        default=None,
        help="image folder to encode and train on (a sample of it); required unless --resume",
    )
    p.add_argument("--out", required=True, help="run folder; the adapted model lands in OUT/model")
    add_config_options(p, AdaptConfig, ADAPT_OPTIONS, choices={"adapter": ADAPTERS, "trainable": TRAINABLE})
    p.add_argument(
        "--cache",
        default=None,
        help="folder of the representation cache, to share it between runs on the same images (default: OUT/cache)",
    )
    add_config_options(p, AdaptConfig, {"seed": "image sample, batches and noise"})
    add_precision_arg(p)
    p.add_argument("--resume", action="store_true", help="continue OUT with the settings in OUT/adapt.json")
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    saved = saved_config(args.out) if args.resume else None
    cfg = AdaptConfig(
        **settings_from_args(args, AdaptConfig, saved, ("model", "encoder", "data"), "adapt.json")
    )
    result = adapt(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    mlp = "" if result.mlp_r2_heldout is None else f" (mlp map: {result.mlp_r2_heldout:.3f})"
    print(
        f"adapted {cfg.encoder} onto {cfg.model}: ridge map held-out R² {result.r2_heldout:.3f}{mlp}, then "
        f"{result.steps} adapter steps ({result.images:,} images){kept(result)}; {result.wall_s:.0f} s wall, "
        f"{result.cpu_s:.0f} s CPU; model in {result.model_dir}"
    )
    return 0


def kept(result: AdaptResult) -> str:
    """What was kept, when held-out images judged it."""
    if result.steps == 0 or result.faithfulness is None:
        return ""
    what = f"the adapter of step {result.kept_step}" if result.kept_step else "the map (no adapter beat it)"
    against = "" if result.faithfulness_map is None else f" against the map's {result.faithfulness_map:.4f}"
    return f"; kept {what}: held-out faithfulness {result.faithfulness:.4f}{against}"
