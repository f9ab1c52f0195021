"""Adversarial robustness: PGD on the input pushes the representation, and samples show what it became
(the paper's finding 3: samples from an attacked supervised representation drift to another class; SSL ones stay).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..data import load_views, resize
from ..deadline import check_deadline
from ..devices import autocast_for
from ..diffusion import SamplingConfig, resolve_sampling, sample_many
from ..encoders import Encoder
from ..errors import RCDMError
from ..figures import fmt, grid, number
from ..model import RCDM
from ._common import image_paths, representation_shift, result_label

Attack = Literal["untargeted", "targeted", "label"]
ATTACKS: tuple[str, ...] = ("untargeted", "targeted", "label")
# The attack's L-infinity radius unless told otherwise, for images in [0, 1]: every command, the demo and the app
# take it from here.
DEFAULT_EPS = 4 / 255
DEFAULT_PGD_STEPS = 10


def pgd(
    encoder: Encoder,
    images: torch.Tensor,
    *,
    attack: Attack = "untargeted",
    eps: float = DEFAULT_EPS,
    steps: int = DEFAULT_PGD_STEPS,
    step_size: float | None = None,  # None: 2.5 * eps / steps (Madry et al. 2018)
    targets: torch.Tensor | None = None,
    random_start: bool = True,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """L-infinity PGD (Madry et al. 2018): x_{k+1} = clip_{x, eps}(x_k + step_size * sign(grad loss)).

    images: (B, 3, H, W) in [0, 1] at the encoder's input size. Loss maximised per attack:
    'untargeted' ||rep(x') - rep(x)||^2; 'targeted' -||rep(x') - rep(target)||^2 with targets (B, 3, H, W);
    'label' cross-entropy of the encoder's classifier against its clean prediction.
    Returns (B, 3, H, W) in [0, 1] with |x' - x| <= eps everywhere, on the CPU.
    """
    if attack not in ATTACKS:
        raise RCDMError(f"unknown attack {attack!r}: choose one of {', '.join(ATTACKS)}")
    if not 0 < eps <= 1 or steps < 1:
        raise RCDMError(
            f"PGD needs 0 < eps <= 1 and steps >= 1; got eps={eps:g}, steps={steps}: eps is an L-infinity radius "
            "on pixels in [0, 1], so 2/255 is written 2/255 (or 0.0078)"
        )
    if attack == "targeted" and (targets is None or targets.shape != images.shape):
        raise RCDMError("a targeted attack needs one target image per image: pass --target IMG or 2+ images")
    if attack == "label" and encoder.classifier is None:
        raise RCDMError(f"encoder {encoder.spec!r} has no classifier: use --attack untargeted or targeted")
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    device = encoder.device
    g = torch.Generator().manual_seed(seed)
    out = []
    chunks = list(range(0, images.shape[0], batch_size))
    bar = tqdm(total=len(chunks) * steps, disable=None if progress else True, desc=f"PGD {attack}")
    for s in chunks:
        x = images[s : s + batch_size].float()
        start = (torch.rand(x.shape, generator=g) * 2 - 1) * eps if random_start else torch.zeros_like(x)
        x, delta = x.to(device), start.to(device)
        with torch.no_grad(), autocast_for(device):
            if attack == "untargeted":
                anchor = encoder(x).float()
            elif attack == "targeted":
                assert targets is not None
                anchor = encoder(targets[s : s + batch_size].float().to(device)).float()
            else:
                anchor = encoder.logits(x).float().argmax(-1)
        delta = ((x + delta).clamp(0, 1) - x).detach()
        for _ in range(steps):
            check_deadline()
            delta.requires_grad_(True)
            with autocast_for(device):
                xa = x + delta
                if attack == "label":
                    loss = F.cross_entropy(encoder.logits(xa).float(), anchor, reduction="sum")
                else:
                    dist = (encoder(xa).float() - anchor).pow(2).sum()
                    loss = dist if attack == "untargeted" else -dist
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = (delta + step_size * grad.sign()).clamp(-eps, eps)
                delta = ((x + delta).clamp(0, 1) - x).detach()
            bar.update()
        out.append((x + delta).detach().cpu())
    bar.close()
    return torch.cat(out)


@dataclass
class AdversarialResult:
    """M images, N samples each, images in [0, 1].

    originals / attacked (M, 3, S, S) (the attacked encoder view, resized for display); clean_samples /
    adv_samples (M, N, 3, S, S); shift (M,) = ||rep(x') - rep(x)||, relative_shift = shift / typical distance
    between the images' representations; cosine (M,) = cos(rep(x'), rep(x)); clean_labels / adv_labels (M,)
    the classifier's predictions (None without a classifier); linf (M,) the perturbation's max |x' - x|.
    """

    label: str
    names: list[str]
    attack: str
    eps: float
    originals: torch.Tensor
    attacked: torch.Tensor
    clean_samples: torch.Tensor
    adv_samples: torch.Tensor
    shift: torch.Tensor
    relative_shift: torch.Tensor
    cosine: torch.Tensor
    linf: torch.Tensor
    clean_labels: torch.Tensor | None
    adv_labels: torch.Tensor | None
    settings: dict = field(default_factory=dict)
    class_names: tuple[str, ...] = ()  # the classifier's, index order, when known

    def class_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else f"class {index}"

    @property
    def label_flip_rate(self) -> float:
        """Fraction of images whose predicted class changed (NaN without a classifier)."""
        if self.clean_labels is None or self.adv_labels is None:
            return math.nan
        return float((self.clean_labels != self.adv_labels).float().mean())

    def summary(self) -> dict:
        return {
            "label": self.label,
            "attack": self.attack,
            "eps": self.eps,
            "relative_shift": number(self.relative_shift.mean()),
            "shift": number(self.shift.mean()),
            "cosine_to_clean": number(self.cosine.mean()),
            "label_flip_rate": number(self.label_flip_rate),
            "per_image": {
                n: {
                    "shift": number(self.shift[i]),
                    "relative_shift": number(self.relative_shift[i]),
                    "cosine_to_clean": number(self.cosine[i]),
                    "linf": number(self.linf[i]),
                    "clean_label": None if self.clean_labels is None else int(self.clean_labels[i]),
                    "adv_label": None if self.adv_labels is None else int(self.adv_labels[i]),
                    "clean_class": None
                    if self.clean_labels is None
                    else self.class_name(int(self.clean_labels[i])),
                    "adv_class": None
                    if self.adv_labels is None
                    else self.class_name(int(self.adv_labels[i])),
                }
                for i, n in enumerate(self.names)
            },
            "settings": self.settings,
        }


def adversarial(
    model: RCDM,
    encoder: Encoder,
    images: Sequence[str | Path],
    *,
    attack: Attack = "untargeted",
    eps: float = DEFAULT_EPS,
    pgd_steps: int = DEFAULT_PGD_STEPS,
    step_size: float | None = None,
    targets: Sequence[str | Path] | None = None,
    num_samples: int = 4,
    sampling: SamplingConfig | None = None,
    label: str | None = None,
    progress: bool = False,
) -> AdversarialResult:
    """Attack each image's representation with PGD and sample from the clean and attacked representations.

    Targeted attacks aim at `targets` (one file, or one per image); by default image i aims at image i + 1.
    """
    cfg = resolve_sampling(model, sampling)
    paths = image_paths(images, 2 if attack == "targeted" and not targets else 1, "a targeted attack")
    size, enc_size = model.config.sample_size, encoder.preprocessing.input_size
    originals, enc_views = load_views(paths, size, enc_size, encoder.preprocessing.resample)
    m = originals.shape[0]
    target_views = None
    if attack == "targeted":
        if targets:
            tpaths = image_paths(targets)
            if len(tpaths) not in (1, m):
                raise RCDMError(
                    f"got {len(tpaths)} targets for {m} images: pass one target, or one per image"
                )
            target_views = (
                load_views(tpaths, size, enc_size, encoder.preprocessing.resample)[1]
                .expand(m, -1, -1, -1)
                .contiguous()
            )
        else:
            target_views = enc_views.roll(-1, dims=0)
    adv = pgd(
        encoder,
        enc_views,
        attack=attack,
        eps=eps,
        steps=pgd_steps,
        step_size=step_size,
        targets=target_views,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        progress=progress,
    )
    reps, adv_reps = encoder.encode(enc_views), encoder.encode(adv)
    both = torch.cat([reps, adv_reps])
    samples = sample_many(
        model, both, num_samples, cfg, shared_noise=True, progress=progress, desc="adversarial"
    )
    clean_labels = adv_labels = None
    if encoder.classifier is not None:
        with torch.no_grad():
            dev = encoder.device
            clean_labels = encoder.logits(enc_views.to(dev)).argmax(-1).cpu()
            adv_labels = encoder.logits(adv.to(dev)).argmax(-1).cpu()
    shift, relative_shift, cosine = representation_shift(reps, adv_reps)
    return AdversarialResult(
        class_names=encoder.class_names,
        label=result_label(encoder, label),
        names=[Path(p).stem for p in paths],
        attack=attack,
        eps=eps,
        originals=originals,
        attacked=resize(adv, size),
        clean_samples=samples[:m],
        adv_samples=samples[m:],
        shift=shift,
        relative_shift=relative_shift,
        cosine=cosine,
        linf=(adv - enc_views).abs().flatten(1).amax(1),
        clean_labels=clean_labels,
        adv_labels=adv_labels,
        settings=dict(
            pgd_steps=pgd_steps,
            step_size=step_size if step_size is not None else 2.5 * eps / pgd_steps,
            num_samples=num_samples,
            **cfg.record(),
        ),
    )


def adversarial_figure(results: Sequence[AdversarialResult]) -> Image.Image:
    """One row per image, as the paper lays it out: the input, then per result [k] its attacked input, the samples
    of the clean representation and those of the attacked one (same noise). The row label carries each result's
    relative shift d and, with a classifier, its label before -> after the attack."""
    first = results[0]
    n = first.clean_samples.shape[1]
    columns = ["input"]
    for k in range(len(results)):
        columns += [
            f"[{k}] x'",
            *(f"[{k}] c{j}" for j in range(n)),
            *(f"[{k}] a{j}" for j in range(n)),
        ]

    def label(i: int) -> str:
        parts = [first.names[i]]
        for k, res in enumerate(results):
            flip = ""
            if res.clean_labels is not None and res.adv_labels is not None:
                before, after = (
                    res.class_name(int(res.clean_labels[i])),
                    res.class_name(int(res.adv_labels[i])),
                )
                flip = f" {before}" if before == after else f" {before}->{after}"
            parts.append(f"[{k}] d={fmt(float(res.relative_shift[i]))}{flip}")
        return "  ".join(parts)

    rows = [
        [
            first.originals[i],
            *(x for res in results for x in (res.attacked[i], *res.clean_samples[i], *res.adv_samples[i])),
        ]
        for i in range(len(first.names))
    ]
    who = " vs ".join(f"[{k}] {res.label}" for k, res in enumerate(results))
    title = (
        f"{first.attack} PGD, eps={first.eps * 255:.1f}/255: {who}. x' = the attacked input; cj / aj = sample j of "
        "the clean / attacked representation (same noise); d = relative representation shift"
    )
    return grid(rows, row_labels=[label(i) for i in range(len(rows))], col_labels=columns, title=title)
