"""The adapt table (benchmarks/results/adapt-cpu-2core.md): what `rcdm adapt` shows of a new encoder, per budget.

    python benchmarks/adapt.py --cifar ~/.cache/rcdm/cifar10 --shared ../shared/data/cifar-resnet \
        --work ~/rcdm-work/adapt-bench --out benchmarks/results/adapt-cpu-2core.md

Base: the pack's VICReg backbone RCDM. Encoders: the pack's supervised ResNet-20 (whose own RCDM is the reference
row), the supervised ResNet-20 of ../shared/data/cifar-resnet, and `pixels:8`. For each: the ridge map alone
(`--steps 0`), then the adapter after each budget in --budgets (one run, resumed to the next budget: the budget
is cumulative; the representations are encoded once, by the map's run, into a shared cache). Scores (rcdm.pack.evaluation.score_model): class agreement, rank-1 among the evaluation images
and the Fréchet distance in the judge's (ResNet-56) features, one sample each, dpm++ 20, guidance --guidance.
--bases-for ENCODER adds that encoder through the two other pack RCDMs (map + the first budget): which base
serves best. The default is the shared ResNet-20: no pack RCDM is conditioned on it, so each base is foreign to it
(through the supervised RCDM, the pack's supervised ResNet-20 would meet its own encoder). Every finished cell is a small record in --cells (default benchmarks/results/adapt/cells.json, committed:
the run folders in WORK are lost when the machine goes, the records are not), so a killed run, or a later session
on another machine, resumes at the first missing cell; each record names its machine and date. --base-model and
--reference-model load those two RCDMs from folders (a retrained pack's runs, before they are packed) under their
pack names; give such a measurement its own --cells. --out rewrites the
generated part of the markdown file (everything above its first "## " heading) and keeps the hand-written sections
below it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import torch

from rcdm.adaptation import AdaptConfig, adapt
from rcdm.devices import cpu_has_native_bf16, cpu_model
from rcdm.diffusion import sampling_preset
from rcdm.encoders import create_encoder
from rcdm.encoders.base import state_digest
from rcdm.errors import RCDMError
from rcdm.files import write_text_atomic
from rcdm.loading import encoder_for, load_model, resolve_model_dir
from rcdm.pack.evaluation import evaluation_images, score_model
from rcdm.pack.rcdms import run_record

BASE = "cifar10-vicreg-backbone"
OTHER_BASES = ("cifar10-vicreg-projector", "cifar10-supervised")
REFERENCE_FOR = "pack supervised ResNet-20"  # its own RCDM is in the pack: the reference row
# what a cell records about the run that made its model, not about the model's score
NOT_THE_SCORE = (
    "how",
    "train_s",
    "cpu_s_train",
    "kept_step",
    "adapter_steps",
    "faithfulness",
    "faithfulness_map",
    "score_of",
)


def load(store: Path) -> dict:
    return json.loads(store.read_text()) if store.is_file() else {}


def save_cell(store: Path, key: str, record: dict) -> dict:
    """Add one cell to the store as it is now on disk (another process may have added cells since this one read
    it), atomically; the store's cells."""
    cells = {**load(store), key: record}
    write_text_atomic(store, json.dumps(cells, indent=2))
    return cells


def write_markdown(out: Path, table: str) -> None:
    """OUT becomes TABLE followed by OUT's hand-written sections (from its first "## " heading on)."""
    _, heading, kept = out.read_text().partition("\n## ") if out.is_file() else ("", "", "")
    write_text_atomic(out, table + (f"\n## {kept}" if heading else ""))


def same_as(cells: dict, cell: dict) -> str:
    """What a row whose score is another's says: which row scored the same weights."""
    other = cells.get(cell.get("score_of"), {}).get("how")
    return f" (the same weights as the row '{other}': its score)" if other else ""


def scored_as(cell: dict, sampling, images: list) -> bool:
    """Was CELL scored with this sampling on this many evaluation images?"""
    return (
        cell.get("num_images") == len(images)
        and cell.get("sampler") == sampling.sampler
        and cell.get("steps") == sampling.steps
        and cell.get("guidance") == sampling.guidance
    )


def training_cost(model_ref: str) -> str:
    """The reference RCDM's training CPU time: its card's (an installed pack's model) or its recipe run's (a run's
    model/ or checkpoint EMA folder, before it is packed)."""
    folder = resolve_model_dir(model_ref)
    cpu = None
    if (folder / "card.json").is_file():
        cpu = json.loads((folder / "card.json").read_text()).get("cpu_time_s")
    else:
        ckpt = folder.parent if folder.parent.parent.name == "checkpoints" else None
        run = ckpt.parent.parent if ckpt is not None else folder.parent
        step = json.loads((ckpt / "state.json").read_text())["step"] if ckpt is not None else None
        with contextlib.suppress(RCDMError, OSError, KeyError):
            cpu = run_record(run, step)[1].get("cpu_time_s")
    return f"{cpu / 3600:.1f} CPU h (pack)" if cpu else "the pack's training (time not recorded)"


def encoders(shared: Path) -> dict[str, str]:
    return {
        "pack supervised ResNet-20": "rcdm-cifar:cifar10-supervised-r20w1",
        "shared supervised ResNet-20": f"cifar-resnet20:{shared / 'resnet20-12fca82f.th'}",
        "pixels:8": "pixels:8",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", required=True, help="CIFAR-10 root (train/ and test/)")
    p.add_argument(
        "--shared", required=True, help="../shared/data/cifar-resnet (ResNet-20 and the ResNet-56 judge)"
    )
    p.add_argument("--work", required=True, help="run folders and the encoding cache")
    p.add_argument(
        "--cells",
        default=str(Path(__file__).parent / "results" / "adapt" / "cells.json"),
        help="the finished cells (default: benchmarks/results/adapt/cells.json)",
    )
    p.add_argument("--out", default=None, help="the markdown table (default: print it)")
    p.add_argument(
        "--budgets",
        type=float,
        nargs="*",
        default=[1, 5, 15],
        help="adapter minutes (cumulative); none given: the maps only",
    )
    p.add_argument(
        "--skip-map-cells",
        action="store_true",
        help="fit the maps but score only the adapter cells (another process scores the maps)",
    )
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--only", nargs="+", default=None, help="encoder labels to run (default: all)")
    p.add_argument(
        "--bases-for",
        default="shared supervised ResNet-20",
        help="encoder label tried on the two other bases (default: the one no pack RCDM is conditioned on, so no "
        "base is its own; 'none': no other base)",
    )
    p.add_argument(
        "--base-model",
        default=None,
        help=f"where to load the base ({BASE}) from, e.g. a retrained run's model folder before it is packed "
        "(default: the installed pack's); its cells keep the name",
    )
    p.add_argument(
        "--reference-model",
        default=None,
        help="likewise for the reference row's RCDM (default: the installed cifar10-supervised)",
    )
    p.add_argument(
        "--adapter",
        default=AdaptConfig.adapter,
        choices=("linear", "mlp"),
        help="rcdm adapt's default: mlp (its map: ridge + a regressed residual); linear: the ridge map's rows",
    )
    p.add_argument("--layers", type=int, default=AdaptConfig.layers, help="the mlp adapter's hidden layers")
    p.add_argument("--trainable", default="adapter+embedding", choices=("adapter", "adapter+embedding"))
    p.add_argument(
        "--loss-weighting", default="none", choices=("none", "min-snr"), help="of the adapter's loss"
    )
    p.add_argument(
        "--encoder-loss",
        type=float,
        default=AdaptConfig.encoder_loss,
        help="rcdm adapt --encoder-loss: the weight of the loss in the new encoder's space (0: off)",
    )
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = Path(args.cells)
    store.parent.mkdir(parents=True, exist_ok=True)
    images = evaluation_images(args.cifar, args.eval_images)
    judge = create_encoder(f"cifar-resnet56:{Path(args.shared) / 'resnet56-4bfd9763.th'}")
    sampling = replace(sampling_preset("fast"), guidance=args.guidance)

    def cell(key: str | None, model_dir: str | Path, extra: dict) -> None:
        # the store is read again before and after each cell: two processes (one per core, each its own --only)
        # can share one file without overwriting each other's cells
        if key is None or key in load(store):
            return
        model = load_model(model_dir)
        digest = state_digest(model.state_dict())
        cells = load(store)
        same = [
            k
            for k, c in cells.items()
            if c.get("weights_digest") == digest and scored_as(c, sampling, images)
        ]
        if same:
            # a run that kept its map (or an earlier budget's model), weight for weight a model already scored the
            # same way: the evaluation is deterministic (fixed noise per image), so its score is that cell's; 30-40
            # CPU minutes not spent sampling the same 1,000 images again
            score = {k: v for k, v in cells[same[0]].items() if k not in NOT_THE_SCORE}
            print(key, save_cell(store, key, {**score, **extra, "score_of": same[0]})[key], flush=True)
            return
        score = score_model(model, encoder_for(model), judge, images, sampling)
        made = {
            "machine": cpu_model(),
            "date": str(datetime.date.today()),
            "threads": torch.get_num_threads(),
            "weights_digest": digest,
        }
        print(key, save_cell(store, key, {**extra, **score.record(), **made})[key], flush=True)

    todo = {k: v for k, v in encoders(Path(args.shared)).items() if not args.only or k in args.only}
    if REFERENCE_FOR in todo:
        cell(
            "reference: the pack's supervised RCDM",
            args.reference_model or "cifar10-supervised",
            {
                "how": "its own RCDM",
                "train_s": None,
                "cost": training_cost(args.reference_model or "cifar10-supervised"),
            },
        )
    runs = [(label, spec, BASE) for label, spec in todo.items()]
    if args.bases_for in todo:
        runs += [(args.bases_for, todo[args.bases_for], base) for base in OTHER_BASES]
    # the adapter's settings, as they name its cells and run folders, and as the table describes them
    weighting = "" if args.loss_weighting == "none" else args.loss_weighting
    pulled = f"encoder-loss {args.encoder_loss:g}" if args.encoder_loss else ""
    layers = f"{args.layers} layers" if args.layers != 1 else ""
    kind = " ".join(filter(None, (args.adapter, layers, args.trainable, weighting, pulled)))
    trained = ", ".join(filter(None, (args.trainable, weighting, pulled)))
    for label, spec, base in runs:
        slug = f"{label.replace(' ', '-')}@{base}"
        budgets = args.budgets if base == BASE else args.budgets[:1]
        # the mlp adapter starts from its own map (ridge + a regressed residual): a cell of its own
        map_name = "map" if args.adapter == "linear" else f"{args.adapter} map"
        map_name = " ".join(filter(None, (map_name, layers)))
        keys = [f"{slug} {map_name}"] + [f"{slug} {kind} {m:g} min" for m in budgets]
        if args.skip_map_cells:
            keys = keys[1:]
        done = load(store)
        if all(k in done for k in keys):
            continue  # not even the map run again: its folder may be gone with an earlier machine
        cfg = AdaptConfig(
            model=args.base_model if base == BASE and args.base_model else base,
            encoder=spec,
            data=str(Path(args.cifar) / "train"),
            steps=0,
            adapter=args.adapter,
            layers=args.layers,
            cache=str(work / "cache"),  # encoded once per encoder: a budget below is spent on the adapter
            encoder_loss=0.0,  # no steps: the map is the same whatever loss the adapter trains under after it
        )
        # the map alone is the same whatever adapter trains after it: one run per encoder and base
        folder = work / f"{slug}-{map_name.replace(' ', '-')}"
        result = adapt(cfg, folder, resume=(folder / "adapt.json").is_file(), progress=False)
        cfg = replace(
            cfg,
            adapter=args.adapter,
            trainable=args.trainable,
            loss_weighting=args.loss_weighting,
            encoder_loss=args.encoder_loss,
        )
        extra = {"encoder": label, "base": base, "r2": result.r2_heldout, "r2_mlp": result.mlp_r2_heldout}
        how = "ridge map" if args.adapter == "linear" else f"ridge + {args.adapter} map (regression)"
        how += f" ({args.layers} hidden layers)" if args.layers != 1 else ""
        cell(
            f"{slug} {map_name}" if not args.skip_map_cells else None,
            result.model_dir,
            {**extra, "how": how, "train_s": result.wall_s, "cpu_s_train": result.cpu_s},
        )
        run = work / f"{slug}-{kind.replace(' ', '-')}"
        for minutes in budgets:
            key = f"{slug} {kind} {minutes:g} min"
            if key in load(store):
                continue
            cfg_b = replace(cfg, steps=None, minutes=minutes)
            result = adapt(cfg_b, run, resume=(run / "adapt.json").is_file(), progress=False)
            kept = "its map" if result.kept_step == 0 else f"step {result.kept_step} of {result.steps}"
            how = f"map + {args.adapter} adapter ({trained}; kept {kept}), {minutes:g} min"
            checks = {k: getattr(result, k) for k in ("kept_step", "faithfulness_map", "faithfulness")}
            checks["adapter_steps"] = result.steps  # "steps" is the sampler's, in the score
            checks["r2_mlp"] = result.mlp_r2_heldout  # this run's own map (a short budget may cut its fit)
            cell(
                key,
                result.model_dir,
                {**extra, **checks, "how": how, "train_s": result.wall_s, "cpu_s_train": result.cpu_s},
            )
    table = render(load(store), args)
    if args.out:
        write_markdown(Path(args.out), table)
    print(table)


def render(cells: dict, args: argparse.Namespace) -> str:
    lines = [
        "# rcdm adapt on the CPU",
        "",
        f"Made by `python benchmarks/adapt.py`, last on {datetime.date.today()}: {cpu_model()}"
        f"{' (native bf16)' if cpu_has_native_bf16() else ''}, load average at the end {os.getloadavg()[0]:.1f} "
        f"(each row names the machine, date and threads of its cell). {args.eval_images} class-balanced CIFAR-10 test images, one sample each, "
        f"dpm++ 20, guidance {args.guidance:g}; judge: the shared ResNet-56 (no RCDM is conditioned on it); chance: "
        f"class agreement 0.10, rank-1 {1 / args.eval_images:.4f}. Rank-1 (own): the same retrieval in the "
        "conditioning encoder's own space (for pixels:8, its 8x8 colours). Time: wall and CPU seconds of `rcdm adapt`, "
        "encoding included (budgets are wall minutes of one thread).",
        "",
        "| encoder | base | how | map R² (held out) | class agreement | rank-1 | rank-1 (own) | mean rank "
        "| Fréchet (ResNet-56) | adapt wall s | adapt CPU s | machine |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    order = [REFERENCE_FOR, *encoders(Path(args.shared))]
    bases = [BASE, *OTHER_BASES]

    def row_order(c: dict) -> tuple:
        budget = re.search(r"(\d+(?:\.\d+)?) min\b", c["how"])  # "..., 5 min": the map's rows first
        minutes = float(budget.group(1)) if budget else -1.0
        base = c.get("base", "cifar10-supervised")
        own = c.get("encoder") is None  # the reference row leads its encoder's rows
        return (
            order.index(c.get("encoder", REFERENCE_FOR)),
            not own,
            bases.index(base),
            not c["how"].startswith("ridge"),
            minutes,
        )

    for c in sorted(cells.values(), key=row_order):
        r2 = f"{c['r2']:.3f}" if c.get("r2") is not None else ""
        if c.get("r2_mlp") is not None:
            r2 += f", mlp {c['r2_mlp']:.3f}"
        cpu = f"{c['cpu_s_train']:.0f}" if c.get("cpu_s_train") is not None else ""
        # the first pack's reference cell predates "cost": its RCDM trained 3.7 CPU hours
        t = f"{c['train_s']:.0f}" if c.get("train_s") is not None else c.get("cost", "3.7 CPU h (pack)")
        lines.append(
            f"| {c.get('encoder', 'pack supervised ResNet-20')} | {c.get('base', 'cifar10-supervised')} | {c['how']}"
            f"{same_as(cells, c)} "
            f"| {r2} | {c['class_agreement']:.3f} | {c['rank1']:.3f} | {c['own_rank1']:.3f} | {c['mean_rank']:.1f} "
            f"| {c['frechet']:.2f} "
            f"| {t} | {cpu} | {c.get('machine', '').split(',')[0]} {c.get('date', '')}, {c.get('threads', '?')} thr |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
