"""What a training run reports while it runs: RUN_DIR/metrics.jsonl always, a progress bar on a terminal or plain
log lines elsewhere (SLURM logs, nohup), accelerate's trackers (tensorboard, wandb) when asked, and sample grids.

Only the main process writes. metrics.jsonl has one JSON object per `log_every` steps: step, loss (mean over the
steps since the previous record), its terms (mse, vb), lr, images_per_s, grad_norm (before clipping), elapsed_s
(wall-clock seconds since this process started training) and cpu_s (CPU seconds of the process and its finished
data workers over the same span: unlike elapsed_s, not counting time the process was stopped or starved).
A resumed run first drops the records after its checkpoint, so every step appears once.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .devices import cpu_seconds
from .figures import grid

log = logging.getLogger(__name__)
LOG_INTERVAL_S = 30.0  # plain log lines: at most one per this many seconds (plus one per checkpoint)
METRICS_NAME = "metrics.jsonl"


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(line, record) of each whole record in a metrics.jsonl; a line cut by a kill mid-write is skipped."""
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            if isinstance(row, dict) and "step" in row:
                out.append((line, row))
        except ValueError:
            continue
    return out


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl in file order (none when it is missing)."""
    path = Path(run_dir) / METRICS_NAME
    return [row for _, row in _rows(path)] if path.is_file() else []


class TrainingMonitor:
    def __init__(
        self,
        run_dir: Path,
        *,
        start: int,
        total: int,
        log_every: int,
        progress: bool,
        main_process: bool,
        accelerator: Any = None,  # an accelerate.Accelerator with trackers initialised, or None
    ) -> None:
        self.run_dir, self.start, self.total, self.log_every = run_dir, start, total, max(1, log_every)
        self.main, self.acc = main_process, accelerator
        self.path = run_dir / METRICS_NAME
        if self.main:
            self._truncate_after(start)
        terminal = sys.stderr.isatty()
        self.bar = tqdm(
            total=total, initial=start, desc="train", disable=not (progress and main_process and terminal)
        )
        self.plain = main_process and not (progress and terminal)
        self.t_start = self.t_window = time.perf_counter()
        self.cpu_start = cpu_seconds()
        self.last_line = -float("inf")
        self.losses: list[float] = []
        self.terms: dict[str, list[float]] = {}
        self.images = 0

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        keep = [line for line, row in _rows(self.path) if row["step"] <= step]
        self.path.write_text("".join(f"{line}\n" for line in keep))

    def step(
        self,
        step: int,
        loss: float,
        images: int,
        *,
        terms: dict[str, float],
        lr: float,
        grad_norm: float | None,
    ) -> None:
        """After each optimizer step: `images` trained in it (all processes)."""
        self.losses.append(loss)
        for k, v in terms.items():
            self.terms.setdefault(k, []).append(v)
        self.images += images
        self.bar.update(1)
        if step % self.log_every and step != self.total:
            return
        now = time.perf_counter()
        record = {
            "step": step,
            "loss": sum(self.losses) / len(self.losses),
            **{k: sum(v) / len(v) for k, v in self.terms.items()},
            "lr": lr,
            "images_per_s": self.images / max(1e-9, now - self.t_window),
            "grad_norm": grad_norm,
            "elapsed_s": now - self.t_start,
            "cpu_s": cpu_seconds() - self.cpu_start,
        }
        self.losses, self.terms, self.images, self.t_window = [], {}, 0, now
        if not self.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.acc is not None and self.acc.trackers:
            self.acc.log({k: v for k, v in record.items() if v is not None and k != "step"}, step=step)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")
        if self.plain and now - self.last_line >= LOG_INTERVAL_S:
            self.last_line = now
            eta = (self.total - step) * (now - self.t_start) / max(1, step - self.start)
            log.info(
                "step %d/%d: loss %.4f, %.1f img/s, lr %.2e, grad norm %s, about %.0f min left",
                step,
                self.total,
                record["loss"],
                record["images_per_s"],
                lr,
                "n/a" if grad_norm is None else f"{grad_norm:.3f}",
                eta / 60,
            )

    def samples(self, step: int, originals: torch.Tensor, samples: torch.Tensor) -> Path | None:
        """originals (M, 3, H, W), samples (M, S, 3, H, W) in [0, 1] -> RUN_DIR/samples/step-N.png (+ trackers)."""
        if not self.main:
            return None
        rows = [[o, *s] for o, s in zip(originals, samples, strict=True)]
        cols = ["training image"] + [f"sample {i}" for i in range(samples.shape[1])]
        img = grid(rows, col_labels=cols, title=f"step {step}")
        path = self.run_dir / "samples" / f"step-{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        if self.acc is not None:
            for tracker in self.acc.trackers:
                if hasattr(tracker, "log_images"):
                    tracker.log_images({"samples": samples.flatten(0, 1).cpu()}, step=step)
        return path

    def close(self) -> None:
        self.bar.close()
        if self.acc is not None and self.acc.trackers:
            self.acc.end_training()
