"""Speed table: training img/s and 8-sample visualisation time per preset; adm128 forward on GPU.

    python benchmarks/speed.py [--presets tiny cifar32] [--out benchmarks/results.md] [--gpu-forward]

Timings follow ../.library/device/METHOD.md practice: warm-up iterations first, CUDA synchronised around each
timed region, the median of several repeats. Prints one Markdown table and writes it to --out.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rcdm.diffusion import GaussianDiffusion, sample
from rcdm.model import RCDM


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_rate(preset: str, device: torch.device, batch: int, steps: int, dim: int = 512) -> float:
    """Images per second of one optimizer step with the published hybrid loss (encoder excluded)."""
    model = RCDM.from_preset(preset, representation_dim=dim).to(device).train()
    size = model.config.sample_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    diffusion = GaussianDiffusion()
    x0 = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    rep = torch.randn(batch, dim, device=device)
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = diffusion.losses(model, x0, rep, "hybrid", g).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = timed(lambda: [step() for _ in range(steps)], device, repeats=3)
    return batch * steps / seconds


def visualize_seconds(
    preset: str, device: torch.device, dim: int = 512, n: int = 8, steps: int = 20
) -> float:
    """Seconds to draw `n` samples of one representation with dpm++ at `steps` steps."""
    model = RCDM.from_preset(preset, representation_dim=dim).to(device).eval()
    rep = torch.randn(1, dim, device=device).expand(n, dim)
    return timed(lambda: sample(model, rep, steps=steps, sampler="dpm++"), device, repeats=3)


def forward_rates(device: torch.device, batches: tuple[int, ...]) -> list[tuple[str, int, float]]:
    """adm128 forward img/s: eager fp32 (baseline), eager bf16, compiled bf16."""
    model = RCDM.from_preset("adm128", representation_dim=2048).to(device).eval()
    rows = []
    compiled = torch.compile(model)
    for b in batches:
        x = torch.randn(b, 3, 128, 128, device=device)
        t = torch.randint(0, 1000, (b,), device=device)
        r = torch.randn(b, 2048, device=device)
        for name, m, bf16 in (
            ("eager fp32", model, False),
            ("eager bf16", model, True),
            ("compile bf16", compiled, True),
        ):

            def fwd(m=m, bf16=bf16, x=x, t=t, r=r) -> None:
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    m(x, t, r)

            seconds = timed(lambda: [fwd() for _ in range(10)], device, repeats=5, warmup=3)
            rows.append((name, b, 10 * b / seconds))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "cifar32"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--gpu-forward", action="store_true", help="also time adm128 forward (needs CUDA)")
    p.add_argument("--out", default=None, help="write the Markdown table here")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    card = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU ({platform.processor() or 'x86_64'}, {torch.get_num_threads()} threads)"
    )
    lines = [
        f"device: {card}; torch {torch.__version__}",
        "",
        f"| preset | train img/s (batch {args.batch_size}, hybrid loss) | 8 samples of one representation, dpm++ 20 steps (s) |",
        "| --- | ---: | ---: |",
    ]
    for preset in args.presets:
        rate = train_rate(preset, device, args.batch_size, args.train_steps)
        vis = visualize_seconds(preset, device)
        lines.append(f"| {preset} | {rate:.1f} | {vis:.2f} |")
    if args.gpu_forward:
        if device.type != "cuda":
            lines += ["", "adm128 forward: skipped (no CUDA device)"]
        else:
            rows = forward_rates(device, (8, 64))
            base = {b: r for n, b, r in rows if n == "eager fp32"}
            lines += [
                "",
                "| adm128 forward | batch | img/s | vs eager fp32 |",
                "| --- | ---: | ---: | ---: |",
            ]
            lines += [f"| {n} | {b} | {r:.0f} | {r / base[b]:.2f}x |" for n, b, r in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
