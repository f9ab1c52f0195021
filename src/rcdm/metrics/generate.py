"""The resumable sample-generation job behind FID at scale (e.g. 50,000 samples on several GPUs).

Sample g (0 <= g < num_samples) is drawn from the representation of reference image g mod M with the
per-sample generator of global index g (`diffusion.sample_generators`), and written to
OUT/samples/<g // 1000:03d>/<g:06d>.png. The work is cut into fixed batches of `batch_size` consecutive
indices; a batch whose PNGs all exist is skipped, so a rerun (or a run with more processes, or a larger
num_samples) only draws what is missing and every image is the same whoever draws it. Processes launched by
`accelerate launch` or `torchrun` split the missing batches with `PartialState().split_between_processes`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import batched, files_digest, load_images
from ..devices import process_state
from ..diffusion import SamplingConfig, resolve_sampling, sample
from ..encoders import Encoder
from ..errors import RCDMError
from ..figures import to_pil
from ..files import atomic_file
from ..model import RCDM

MANIFEST = "generate.json"
SHARD = 1000


def sample_path(out_dir: str | Path, index: int) -> Path:
    """Where sample `index` lives: OUT/samples/<index // 1000:03d>/<index:06d>.png."""
    return Path(out_dir) / "samples" / f"{index // SHARD:03d}" / f"{index:06d}.png"


@dataclass
class GenerateResult:
    out_dir: Path
    num_samples: int  # samples in the folder now
    generated: int  # drawn by this call (all processes)
    skipped: int  # already there from an earlier run


def save_samples(out_dir: str | Path, first_index: int, images: torch.Tensor) -> None:
    """Write images[k] (values in [0, 1]) as sample first_index + k: an 8-bit PNG at `sample_path`."""
    for g, img in enumerate(images, start=first_index):
        path = sample_path(out_dir, g)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:  # a killed job never leaves a truncated PNG under the final name
            to_pil(img).save(tmp, format="PNG")


def _check_manifest(out_dir: Path, manifest: dict, references: list[str]) -> None:
    path = out_dir / MANIFEST
    if not path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, indent=2))
        (out_dir / "references.txt").write_text("\n".join(references) + "\n")
        return
    old = json.loads(path.read_text())
    keys = [k for k in manifest if k != "num_samples"]
    diff = [k for k in keys if old.get(k) != manifest[k]]
    if diff:
        k = diff[0]
        raise RCDMError(
            f"{str(out_dir)!r} holds samples made with {k}={old.get(k)!r}, not {manifest[k]!r}: "
            "use the same settings to resume, or a new --out folder"
        )
    if manifest["num_samples"] > old.get("num_samples", 0):
        old["num_samples"] = manifest["num_samples"]
        path.write_text(json.dumps(old, indent=2))


@torch.no_grad()
def generate_samples(
    model: RCDM,
    encoder: Encoder,
    references: Sequence[str | Path],
    out_dir: str | Path,
    *,
    num_samples: int,
    sampling: SamplingConfig | None = None,
    model_name: str = "",
    device: str | torch.device | None = None,  # None: this process's device (accelerate)
    progress: bool = False,
) -> GenerateResult:
    """Draw `num_samples` images conditioned on `references` (cycled) into `out_dir`, resumably.

    Call it in every process of an `accelerate launch`; each draws its share on its own device (the model and
    encoder are moved to `device`, default the process's). Images are written as 8-bit PNGs of the model's sample size, values from [0, 1].
    """
    cfg = resolve_sampling(model, sampling)
    refs = [Path(p) for p in references]
    if not refs:
        raise RCDMError("no reference images: pass --images FOLDER")
    if num_samples < 1:
        raise RCDMError(f"--num-samples {num_samples} must be at least 1")
    out_dir = Path(out_dir)
    state = process_state()
    manifest = {
        "model": model_name,
        "encoder": encoder.identity,
        "feature": encoder.feature,
        "num_references": len(refs),
        "num_samples": num_samples,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "sampler": cfg.sampler,
        "guidance": cfg.guidance,
        "precision": cfg.precision,  # bf16 and fp32 samples differ slightly; compile modes do not change them
        "batch_size": cfg.batch_size,
        "layout": "samples/<g // 1000:03d>/<g:06d>.png; sample g is conditioned on line (g mod num_references) "
        "of references.txt",
        "references_digest": files_digest(refs),
    }
    if state.is_main_process:
        _check_manifest(out_dir, manifest, [str(p) for p in refs])
    state.wait_for_everyone()
    spans = list(batched(num_samples, cfg.batch_size))
    todo = [(a, b) for a, b in spans if not all(sample_path(out_dir, g).is_file() for g in range(a, b))]
    model.to(device or state.device)
    encoder.to(device or state.device)
    size = encoder.preprocessing.input_size
    with state.split_between_processes(todo) as mine:
        bar = tqdm(total=len(todo), disable=not (progress and state.is_main_process), desc="generating")
        for a, b in mine:
            views = load_images(
                [refs[g % len(refs)] for g in range(a, b)], size, encoder.preprocessing.resample
            )
            save_samples(out_dir, a, sample(model, encoder.encode(views), cfg, first_index=a))
            bar.update(state.num_processes)  # the main process's view of everyone's progress
        bar.close()
    state.wait_for_everyone()
    generated = sum(b - a for a, b in todo)
    return GenerateResult(out_dir, num_samples, generated, num_samples - generated)


def sample_files(out_dir: str | Path, num_samples: int | None = None) -> list[Path]:
    """The PNGs of a generation folder, in index order (the first `num_samples`, default the manifest's)."""
    out_dir = Path(out_dir)
    if num_samples is None:
        path = out_dir / MANIFEST
        if not path.is_file():
            raise RCDMError(f"{str(out_dir)!r} has no {MANIFEST}: is it an `rcdm evaluate generate` folder?")
        num_samples = int(json.loads(path.read_text())["num_samples"])
    files = [sample_path(out_dir, g) for g in range(num_samples)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise RCDMError(
            f"{len(missing)} samples missing in {str(out_dir)!r} (first {missing[0]}): rerun generate"
        )
    return files
