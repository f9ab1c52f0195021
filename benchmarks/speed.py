"""Speed of the fast path (docs/speed.md): forward, 8 samples of one representation, training; one table.

    python benchmarks/speed.py --out speed.md                 # CUDA: adm128 at 128 px, every variant
    python benchmarks/speed.py --preset tiny --quick --out x.md  # CPU: the same table shape, small model

Every variant runs in the same process on the same card, next to its baseline (eager fp32), so the ratio
column compares like with like. Timing follows ../.library/device/METHOD.md: the first call is timed on its
own (it holds compilation / graph capture), then warm-up calls, then `--repeats` timed repeats with the device
synchronised around each; the table shows the median and the spread (max - min over median). Inputs are
random, never zeros. Each row also reports how far its output is from eager fp32 on the same inputs
(relative L2 error: images for sampling, the output for the forward pass, the first step's loss for
training), so a fast variant that computes something else shows it.

Variants run in priority order (the targets first) and stop starting once `--budget-s` has passed; the rest
are listed as skipped. The Markdown file is rewritten after every row, so a run killed by a time limit still
leaves its table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rcdm.devices import resolve_compile
from rcdm.diffusion import SamplingConfig, denoiser, sample
from rcdm.losses import GaussianDiffusion
from rcdm.model import RCDM

SECTIONS = ("forward", "sample", "train", "data")
COLUMNS = (
    "section",
    "variant",
    "batch",
    "time (ms)",
    "img/s",
    "vs eager fp32",
    "first call (s)",
    "error vs fp32",
    "spread",
)
BF16, FP32 = torch.bfloat16, torch.float32


@dataclass
class Row:
    section: str
    variant: str
    batch: int
    seconds: float | None = None  # median per call
    images: int = 0  # images per call
    first: float | None = None  # the first call, compilation / capture included
    error: float | None = None  # relative L2 distance to eager fp32
    spread: float | None = None
    note: str = ""  # why there is no number
    baseline: str = "eager fp32"

    @property
    def rate(self) -> float | None:
        return self.images / self.seconds if self.seconds else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], object], device: torch.device, repeats: int, warmup: int
) -> tuple[float, float, float]:
    """(first call s, median s, spread) of `fn`: first call alone, `warmup` untimed, `repeats` timed."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return first, med, (max(times) - min(times)) / med


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float().cpu() - ref.float().cpu()).norm() / ref.float().cpu().norm().clamp_min(1e-12))


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB)"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# --- the variants ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    dtype: torch.dtype = FP32
    mode: str = "off"  # a compile mode of rcdm.diffusion (off, graphs, default, reduce-overhead)
    attention: str = "auto"  # auto (SDPA picks), math, flash
    channels_last: bool = False
    cuda_only: bool = False
    compiles: bool = False  # uses torch.compile (skipped on the CPU unless --cpu-compile)


FORWARD = (
    Variant("eager fp32"),
    Variant("eager bf16", BF16),
    Variant("eager bf16, math attention", BF16, attention="math"),
    Variant("eager bf16, flash attention only", BF16, attention="flash", cuda_only=True),
    Variant("bf16 + CUDA graph", BF16, "graphs", cuda_only=True),
    Variant("fp32 + compile", FP32, "default", compiles=True),
    Variant("bf16 + compile", BF16, "default", compiles=True),
    Variant("bf16 + compile + channels_last", BF16, "default", channels_last=True, compiles=True),
    Variant("bf16 + compile + CUDA graphs", BF16, "reduce-overhead", cuda_only=True, compiles=True),
)
SAMPLE = (
    Variant("eager fp32"),
    Variant("eager bf16", BF16),
    Variant("bf16 + CUDA graph", BF16, "graphs", cuda_only=True),
    Variant("fp32 + compile", FP32, "default", compiles=True),
    Variant("bf16 + compile", BF16, "default", compiles=True),
    Variant("bf16 + compile + CUDA graphs", BF16, "reduce-overhead", cuda_only=True, compiles=True),
)
TRAIN = (
    "eager fp32",
    "bf16",
    "bf16 + fused AdamW",
    "bf16 + fused AdamW + compile",
    "fp32 + compile",
    "bf16 + compile",
)


def _attention(kind: str) -> contextlib.AbstractContextManager:
    if kind == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH if kind == "math" else SDPBackend.FLASH_ATTENTION)


def unavailable(v: Variant, device: torch.device, cpu_compile: bool) -> str:
    if v.cuda_only and device.type != "cuda":
        return "n/a: needs CUDA"
    if v.compiles and device.type != "cuda" and not cpu_compile:
        return "not run: CPU compile is slow (--cpu-compile)"
    return ""


@contextlib.contextmanager
def memory_format(model: nn.Module, channels_last: bool):
    if not channels_last:
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        self.rows: dict[tuple[str, str, int], Row] = {}
        self.order: list[tuple[str, str, int]] = []
        self.t0 = time.perf_counter()
        self._model: RCDM | None = None
        self._encoder: nn.Module | None = None
        self.refs: dict[tuple[str, int], torch.Tensor] = {}

    # ---- bookkeeping
    def declare(self, section: str, variant: str, batch: int) -> None:
        key = (section, variant, batch)
        self.order.append(key)
        self.rows[key] = Row(section, variant, batch, note="skipped: time budget")

    def over_budget(self) -> bool:
        return time.perf_counter() - self.t0 > self.args.budget_s

    def wanted(self, section: str, variant: str) -> bool:
        return (
            section in self.args.sections and re.search(self.args.only, f"{section}: {variant}") is not None
        )

    @property
    def model(self) -> RCDM:
        if self._model is None:
            torch.manual_seed(0)
            self._model = RCDM.from_preset(
                self.args.preset, representation_dim=self.args.dim, **self.size_override()
            )
            self._model.to(self.device).eval().requires_grad_(False)
        return self._model

    def size_override(self) -> dict:
        return {"sample_size": self.args.image_size} if self.args.image_size else {}

    @property
    def encoder(self) -> nn.Module:
        """ResNet-50 (random weights: the timing does not depend on them), pooled 2048-d output."""
        if self._encoder is None:
            from torchvision.models import resnet50

            torch.manual_seed(0)
            enc = resnet50(weights=None)
            enc.fc = nn.Identity()
            if self.args.dim != 2048:
                enc.fc = nn.Linear(2048, self.args.dim)
            self._encoder = enc.to(self.device).eval().requires_grad_(False)
        return self._encoder

    # ---- forward
    def forward(self, v: Variant, batch: int) -> Row:
        m, dev = self.model, self.device
        size = m.config.sample_size
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 3, size, size, generator=g).to(dev)
        t = torch.randint(0, 1000, (batch,), generator=g).to(dev)
        rep = torch.randn(batch, self.args.dim, generator=g).to(dev)
        with torch.no_grad():
            cond = m.condition(rep, batch).float()
            run = denoiser(m, resolve_compile(v.mode, dev), v.dtype)
            with memory_format(m, v.channels_last), _attention(v.attention):
                xin = x.contiguous(memory_format=torch.channels_last) if v.channels_last else x
                out = run(xin, t, cond)
                first, sec, spread = timed(
                    lambda: [run(xin, t, cond) for _ in range(self.args.inner)],
                    dev,
                    self.args.repeats,
                    self.args.warmup,
                )
        key = ("forward", batch)
        if v.name == "eager fp32":
            self.refs[key] = out.cpu()
        err = rel_err(out, self.refs[key]) if key in self.refs else None
        n = self.args.inner
        return Row("forward", v.name, batch, sec / n, batch, first, err, spread)

    # ---- 8 samples of one representation, end to end
    def sample(self, v: Variant, sampler: str, steps: int) -> Row:
        m, enc, dev, n = self.model, self.encoder, self.device, self.args.num_samples
        g = torch.Generator().manual_seed(1)
        image = torch.rand(1, 3, self.args.encoder_size, self.args.encoder_size, generator=g)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

        def visualize() -> torch.Tensor:
            # image (CPU, [0, 1]) -> encoder -> one representation, repeated -> n samples (CPU, [0, 1])
            x = ((image - mean) / std).to(dev, non_blocking=True)
            with torch.no_grad(), torch.autocast(dev.type, dtype=BF16, enabled=v.dtype == BF16):
                rep = enc(x).float()
            precision = "bf16" if v.dtype == BF16 else "fp32"
            cfg = SamplingConfig(sampler=sampler, steps=steps, seed=0, compile=v.mode, precision=precision)
            return sample(m, rep.expand(n, -1), cfg)

        out = visualize()
        first, sec, spread = timed(visualize, dev, self.args.sample_repeats, 0)
        key = (f"sample {sampler}", n)
        if v.name == "eager fp32":
            self.refs[key] = out
        err = rel_err(out, self.refs[key]) if key in self.refs else None
        return Row(
            "sample",
            f"{sampler}-{steps}, {v.name}",
            n,
            sec,
            n,
            first,
            err,
            spread,
            baseline=f"{sampler}-{steps}, eager fp32",
        )

    # ---- training steps with the published hybrid loss
    def train(self, variant: str, batch: int) -> Row:
        dev, args = self.device, self.args
        bf16 = variant.startswith("bf16")  # fp32 + compile: the CPUs without native bf16 (AVX2 only)
        fused = "fused" in variant
        if fused and dev.type != "cuda":
            return Row("train", variant, batch, note="n/a: fused AdamW needs CUDA")
        if "compile" in variant and dev.type != "cuda" and not args.cpu_compile:
            return Row("train", variant, batch, note="not run: CPU compile is slow (--cpu-compile)")
        from diffusers.training_utils import EMAModel

        torch.manual_seed(0)
        model = RCDM.from_preset(args.preset, representation_dim=args.dim, **self.size_override()).to(dev)
        model.train()
        if "compile" in variant:
            model.unet.compile(dynamic=False)
        ema = EMAModel(model.parameters(), decay=0.9999, foreach=dev.type == "cuda")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=fused or None)
        diffusion = GaussianDiffusion()
        size = model.config.sample_size
        g = torch.Generator().manual_seed(2)
        x0 = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(dev)
        rep = torch.randn(batch, args.dim, generator=g).to(dev)
        losses = []

        def step() -> None:
            gen = torch.Generator().manual_seed(len(losses))
            with torch.autocast(dev.type, dtype=BF16, enabled=bf16):
                loss = diffusion.losses(model, x0, rep, "hybrid", gen).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.step(model.parameters())
            losses.append(loss.detach())

        first, sec, spread = timed(
            lambda: [step() for _ in range(args.train_steps)], dev, args.repeats, args.warmup
        )
        first_loss = losses[0].float().cpu().view(1)
        if variant == "eager fp32":
            self.refs[("train", batch)] = first_loss
        ref = self.refs.get(("train", batch))
        err = rel_err(first_loss, ref) if ref is not None else None
        s = args.train_steps
        return Row("train", variant, batch, sec / s, batch, first / s, err, spread)

    # ---- the data loader that feeds training
    def data(self, workers: int, batch: int) -> Row:
        from PIL import Image
        from torch.utils.data import DataLoader

        from rcdm.data import PairedViews, StepBatchSampler

        size = self.model.config.sample_size
        with tempfile.TemporaryDirectory() as tmp:
            g = torch.Generator().manual_seed(3)
            files = []
            for i in range(self.args.data_files):
                # smooth random images (JPEG decoding of pure noise would be unrepresentatively slow)
                low = torch.rand(1, 3, 8, 8, generator=g)
                img = F.interpolate(low, size=(2 * size, 2 * size), mode="bicubic").clamp(0, 1)[0]
                arr = (img.permute(1, 2, 0) * 255).byte().numpy()
                path = Path(tmp) / f"{i:05d}.jpg"
                Image.fromarray(arr).save(path, quality=90)
                files.append(path)
            ds = PairedViews(files, size, self.args.encoder_size)
            steps = len(files) // batch
            loader = DataLoader(  # the settings of rcdm.train
                ds,
                batch_sampler=StepBatchSampler(len(files), batch, 0, 0, steps),
                num_workers=workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
            )

            def epoch() -> None:
                for b in loader:
                    b["image"].to(self.device, non_blocking=True)
                    b["enc_image"].to(self.device, non_blocking=True)

            first, sec, spread = timed(epoch, self.device, self.args.repeats, 0)
        return Row(
            "data",
            f"PairedViews, {workers} workers",
            batch,
            sec,
            steps * batch,
            first,
            None,
            spread,
            baseline="",
        )


Job = tuple[int, str, str, int, Variant | None, Callable[[], Row]]


def plan(bench: Bench) -> list[Job]:
    """(priority, section, variant, batch, Variant, run) for every row; lower priorities run first."""
    a = bench.args
    jobs: list[Job] = []

    def add(prio: int, section: str, variant: str, batch: int, fn: Callable[[], Row], v=None) -> None:
        bench.declare(section, variant, batch)
        jobs.append((prio, section, variant, batch, v, fn))

    # The targets first (eager baselines, CUDA graphs, compile + CUDA graphs, compiled forward and training),
    # then the variants that only explain (channels_last, fp32 compile).
    def priority(v: Variant, section: str) -> int:
        if v.mode == "off":
            return 0 if section == "forward" else 1
        base = {"graphs": 20, "reduce-overhead": 30, "default": 40 if section == "forward" else 50}[v.mode]
        if v.dtype == FP32:
            base = 60
        return base + (15 if v.channels_last else 0) + (1 if section == "sample" else 0)

    for b in a.forward_batches:
        for v in FORWARD:
            prio = priority(v, "forward")
            add(prio, "forward", v.name, b, lambda v=v, b=b: bench.forward(v, b), v)
    for sampler, steps in (("ddpm", a.ddpm_steps), ("dpm++", a.dpm_steps)):
        for v in SAMPLE:
            prio = priority(v, "sample")
            name = f"{sampler}-{steps}, {v.name}"
            add(prio, "sample", name, a.num_samples, lambda v=v, s=sampler, k=steps: bench.sample(v, s, k), v)
    for variant in TRAIN:
        prio = 42 if "compile" in variant else 2
        add(prio, "train", variant, a.train_batch, lambda v=variant: bench.train(v, a.train_batch))
    add(
        3,
        "data",
        f"PairedViews, {a.data_workers} workers",
        a.train_batch * 4,
        lambda: bench.data(a.data_workers, a.train_batch * 4),
    )
    return jobs


def table(bench: Bench, header: list[str]) -> str:
    lines = [*header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * 2 + "---:|" * (len(COLUMNS) - 2)]
    rates = {(r.section, r.variant, r.batch): r.rate for r in bench.rows.values()}
    for key in sorted(bench.order, key=lambda k: (SECTIONS.index(k[0]), bench.order.index(k))):
        r = bench.rows[key]
        if r.seconds is None:
            cells = [r.section, r.variant, str(r.batch), r.note, "", "", "", "", ""]
        else:
            base = rates.get((r.section, r.baseline, r.batch)) if r.baseline else None
            cells = [
                r.section,
                r.variant,
                str(r.batch),
                f"{r.seconds * 1e3:.1f}",
                f"{r.rate:.1f}",
                f"{r.rate / base:.2f}x" if base else "",
                f"{r.first:.2f}" if r.first is not None else "",
                f"{r.error:.1e}" if r.error is not None else "",
                f"{100 * r.spread:.0f}%" if r.spread is not None else "",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default=None, help="default: adm128 on CUDA, tiny on the CPU")
    p.add_argument("--image-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--dim", type=int, default=2048, help="representation size (ResNet-50: 2048)")
    p.add_argument("--encoder-size", type=int, default=224, help="encoder input side")
    p.add_argument("--forward-batches", type=int, nargs="+", default=[8, 64])
    p.add_argument("--num-samples", type=int, default=8, help="samples of one representation")
    p.add_argument("--ddpm-steps", type=int, default=100, help="the published sampler")
    p.add_argument("--dpm-steps", type=int, default=20)
    p.add_argument("--train-batch", type=int, default=8, help="published: 8 per GPU")
    p.add_argument("--train-steps", type=int, default=5, help="optimizer steps per timed repeat")
    p.add_argument("--data-workers", type=int, default=8)
    p.add_argument("--data-files", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sample-repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--inner", type=int, default=10, help="forward calls per timed repeat")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--only", default="", help="regex on 'section: variant': run only the matching rows")
    p.add_argument("--budget-s", type=float, default=float("inf"), help="start no variant after this")
    p.add_argument("--cpu-compile", action="store_true", help="also run torch.compile variants on the CPU")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CPU smoke scale: 1 repeat, few steps, small inputs (not a measurement)",
    )
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="write the Markdown table here")
    c = p.add_argument_group("--cpu-table: the CPU path a user gets (benchmarks/cpu_table.py)")
    c.add_argument("--cpu-table", action="store_true", help="write the CPU table instead")
    c.add_argument("--cifar", default="~/.cache/rcdm/cifar10", help="CIFAR-10 root (train/<class>/)")
    c.add_argument(
        "--encoder",
        default="cifar-resnet20:../shared/data/cifar-resnet/resnet20-12fca82f.th",
        help="encoder spec for the train and feature-cache rows",
    )
    c.add_argument("--cpu-presets", nargs="+", default=["cifar32-small", "cifar32"])
    c.add_argument("--cpu-train-images", type=int, default=2560)
    c.add_argument("--cpu-train-batch", type=int, default=64)
    c.add_argument("--cpu-train-steps", type=int, default=8)
    c.add_argument("--cpu-train-warmup", type=int, default=2)
    args = p.parse_args(argv)
    if args.quick:
        for k, v in dict(
            repeats=1,
            sample_repeats=1,
            warmup=0,
            inner=1,
            ddpm_steps=4,
            dpm_steps=2,
            train_steps=1,
            forward_batches=[2],
            num_samples=2,
            train_batch=2,
            encoder_size=64,
            data_workers=0,
            data_files=8,
            cpu_train_images=40,
            cpu_train_batch=4,
            cpu_train_steps=2,
            cpu_train_warmup=1,
        ).items():
            setattr(args, k, v)
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    if args.cpu_table:
        from cpu_table import cpu_table  # benchmarks/ is on sys.path when this file runs as a script

        text = cpu_table(args)
        print(text)
        return text
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.preset = args.preset or ("adm128" if device.type == "cuda" else "tiny")
    # Every variant and batch size is one more compiled entry for the same UNet code: raise dynamo's limit so
    # that none silently falls back to eager.
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    bench = Bench(args, device)
    jobs = plan(bench)
    m = bench.model
    import diffusers

    header = [
        f"card: {card_name(device)}; torch {torch.__version__}; diffusers {diffusers.__version__}; "
        f"{datetime.date.today().isoformat()}",
        f"model: preset {args.preset} ({sum(p.numel() for p in m.parameters()) / 1e6:.1f}M parameters) at "
        f"{m.config.sample_size} px, {args.dim}-d representation; sample rows: {args.num_samples} samples of "
        f"one representation end to end (ResNet-50, random weights, at {args.encoder_size} px, included); "
        f"train rows: published hybrid loss, AdamW, grad clip 1, EMA, representation given (as with "
        f"--feature-cache)" + ("; QUICK SMOKE RUN: not a measurement" if args.quick else ""),
    ]
    for _, section, variant, batch, v, fn in sorted(jobs, key=lambda j: j[0]):
        key = (section, variant, batch)
        if not bench.wanted(section, variant):
            bench.rows[key].note = "not run (--only / --sections)"
            continue
        if bench.over_budget():
            continue
        reason = unavailable(v, device, args.cpu_compile) if v is not None else ""
        if reason:
            bench.rows[key].note = reason
            continue
        try:
            bench.rows[key] = fn()
            if section == "train" and device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as e:  # a failing variant is a result too: keep going with the others
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:120].replace("|", "/")
            bench.rows[key].note = f"failed: {msg}"
        text = table(bench, header)
        if args.out:
            Path(args.out).write_text(text + "\n")
    text = table(bench, header)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
