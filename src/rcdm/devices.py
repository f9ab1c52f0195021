"""How networks run on a device: the default device, the precision (autocast) rule, the compile modes of the
sampler's fast path (CUDA graph replay, torch.compile), the process group of a multi-process run, and what a run
records of where it ran (`device_name`, `cpu_seconds`, `git_commit`).

One precision vocabulary serves training, sampling and encoding: 'auto' | 'bf16' | 'fp32' ('auto' = bf16 autocast
on CUDA and on CPUs with native bf16, fp32 elsewhere). Training also accepts accelerate's 'no' (= 'fp32'), so
run.json files written before the vocabulary was shared still load.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import subprocess
import time
import weakref
from pathlib import Path
from typing import Literal

import torch
from accelerate import PartialState
from torch import nn

from .errors import RCDMError

Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")
Compile = Literal["auto", "off", "graphs", "default", "reduce-overhead"]
COMPILE_MODES: tuple[str, ...] = ("auto", "off", "graphs", "default", "reduce-overhead")
# What compile="auto" means on a CUDA device: "graphs" replays one captured CUDA graph of the bf16 UNet per step,
# which removes the launch gaps that make eager bf16 slow at batch 8, and costs a few forward passes to capture
# instead of torch.compile's minutes. benchmarks/speed.py times every mode side by side (docs/speed.md).
CUDA_DEFAULT_COMPILE = "graphs"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(text: str, what: str = "--device") -> torch.device:
    """A device the user named, checked before any work: one line when it is no device or is not on this machine
    (torch would fail later, at the first tensor moved, with a trace)."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise RCDMError(f"{what} {text!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RCDMError(
                f"{what} {text!r}: this machine has no CUDA GPU that torch can use: use --device cpu"
            )
        if device.index is not None and device.index >= count:
            raise RCDMError(
                f"{what} {text!r}: this machine has {count} CUDA GPU(s): use cuda:0 to cuda:{count - 1}"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise RCDMError(f"{what} {text!r}: Apple's MPS is not available here: use --device cpu")
    elif device.type != "cpu":
        raise RCDMError(f"{what} {text!r} is not a device rcdm runs on: use cpu, cuda, cuda:N or mps")
    return device


# cpuinfo flags of native bf16 matrix maths, with the names cards and tables print.
NATIVE_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}


def _cpuinfo() -> str | None:
    """/proc/cpuinfo's text, or None where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name as /proc/cpuinfo gives it ("AMD EPYC", "Intel(R) Xeon(R) ..."), with its native bf16
    extensions; the machine type (platform.machine()) where there is no cpuinfo. What a model card or a speed
    table needs to name the machine: `platform.processor()` is empty on Linux."""
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    if cpuinfo is None:
        return platform.machine() or "unknown CPU"
    name = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), ""
    )
    flags = cpuinfo.split()
    bf16 = [label for flag, label in NATIVE_BF16_FLAGS.items() if flag in flags]
    return ", ".join([name or platform.machine() or "unknown CPU", *bf16])


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matrix maths natively (x86 AMX-BF16 or AVX512-BF16, read from cpuinfo).

    Elsewhere bf16 is emulated and slower than fp32, so 'auto' stays fp32 there (docs/speed.md has the
    measurements). RCDM_CPU_BF16=0|1 overrides.
    """
    forced = os.environ.get("RCDM_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    flags = (_cpuinfo() or "").split()
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def resolve_precision(precision: Precision, device: torch.device | str) -> torch.dtype:
    """'auto' -> bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere; 'fp32' forces fp32.

    Returns the autocast dtype (float32: no autocast).
    """
    if precision not in PRECISIONS:
        raise RCDMError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        kind = torch.device(device).type
        native = kind == "cuda" or (kind == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def training_precision(precision: str) -> Precision:
    """A training precision ('auto' | 'bf16' | 'fp32', or 'no' as in accelerate and older run.json) -> Precision.

    Training runs its own autocast (`autocast_for`) instead of accelerate's mixed_precision: accelerate keeps one
    process-wide precision, so a second `train` call in one process with another precision would fail.
    """
    return "fp32" if precision == "no" else precision  # type: ignore[return-value]


def autocast(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> contextlib.AbstractContextManager:
    """bf16 autocast (weight-cast cache off, so that CUDA-graph capture is safe); float32: no autocast."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def autocast_for(device: torch.device, precision: Precision = "auto") -> contextlib.AbstractContextManager:
    """The autocast rcdm's networks run under on `device` (see `resolve_precision` for 'auto')."""
    return autocast(device, resolve_precision(precision, device))


def resolve_compile(compile: Compile, device: torch.device) -> str:
    """'auto' -> CUDA_DEFAULT_COMPILE on CUDA, 'off' elsewhere; CUDA-graph modes refuse other devices."""
    if compile not in COMPILE_MODES:
        raise RCDMError(f"unknown compile mode {compile!r}: choose one of {', '.join(COMPILE_MODES)}")
    if compile == "auto":
        return CUDA_DEFAULT_COMPILE if device.type == "cuda" else "off"
    if compile in ("graphs", "reduce-overhead") and device.type != "cuda":
        raise RCDMError(
            f"compile mode {compile!r} replays CUDA graphs but the model is on {device}: "
            "use 'default' (torch.compile) or 'off' there"
        )
    return compile


# model's UNet -> {mode: torch.compile'd UNet}; weak keys: the cache dies with the model.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# model's UNet -> {(batch, dtype, weights fingerprint): _GraphedUNet}; at most _MAX_GRAPHS per model.
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MAX_GRAPHS = 4


def compiled_unet(unet: nn.Module, mode: str = "default") -> nn.Module:
    """torch.compile(unet, mode) once per (UNet, mode); static shapes (one compile per batch size)."""
    per_model = _COMPILED.setdefault(unet, {})
    if mode not in per_model:
        per_model[mode] = torch.compile(unet, mode=mode, dynamic=False)
    return per_model[mode]


class _GraphedUNet:
    """One CUDA graph of `unet(x, t, class_labels=cond)` at a fixed batch size, replayed per sampler step.

    Inputs are copied into static buffers, the graph is replayed, and the output is copied out (float32), so
    callers may keep the result across steps. Weights are read in place: in-place updates (optimizer, EMA,
    load_state_dict) are seen; moving the model re-captures (the cache key holds the weights' addresses).
    """

    def __init__(self, unet: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, dtype) -> None:
        self.x, self.t, self.cond = x.clone(), t.clone(), cond.clone()
        device = x.device

        def run() -> torch.Tensor:
            with autocast(device, dtype):
                return unet(self.x, self.t, class_labels=self.cond).sample

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph: cuDNN/cuBLAS choose their kernels here
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = run()

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.t.copy_(t)
        self.cond.copy_(cond)
        self.graph.replay()
        return self.out.float().clone() if self.out.dtype == torch.float32 else self.out.float()


def graphed_unet(
    unet: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, dtype
) -> _GraphedUNet:
    per_model = _GRAPHS.setdefault(unet, {})
    key = (tuple(x.shape), dtype, hash(tuple(p.data_ptr() for p in unet.parameters())))
    if key not in per_model:
        while len(per_model) >= _MAX_GRAPHS:
            per_model.pop(next(iter(per_model)))
        per_model[key] = _GraphedUNet(unet, x, t, cond, dtype)
    return per_model[key]


def process_state() -> PartialState:
    """accelerate's PartialState, with CPU processes joined through gloo when there is no GPU.

    accelerate treats a torchrun on a CPU-only machine as one process per rank unless it is told `cpu=True`;
    then every rank would redo all the work instead of its share.
    """
    return PartialState(cpu=not torch.cuda.is_available())


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this process and of its finished children (data workers), in s.

    Unlike wall time it does not count time the process was stopped (SIGSTOP) or waiting for a busy CPU.
    """
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class RunClock:
    """Wall and CPU seconds a run has spent across its resumes: what its checkpoint recorded (`wall_s`, `cpu_s`;
    0 for a fresh run) plus this process's since the clock was made."""

    def __init__(self, wall_s: float = 0.0, cpu_s: float = 0.0) -> None:
        self.before_wall_s, self.before_cpu_s = float(wall_s), float(cpu_s)
        self.t0, self.c0 = time.perf_counter(), cpu_seconds()

    def wall_s(self) -> float:
        return self.before_wall_s + (time.perf_counter() - self.t0)

    def cpu_s(self) -> float:
        # the parentheses matter: (40 + c1) - c0 with c1 == c0 rounds to 39.99999999999994
        return self.before_cpu_s + (cpu_seconds() - self.c0)


# `git archive` writes the archived commit into this file (.gitattributes: export-subst); in a checkout it holds the
# placeholder. So a run from an archive of the source (the CPU pack trains from one) still names its commit.
ARCHIVE_COMMIT = Path(__file__).resolve().parent / "assets" / "archive-commit.txt"


def git_commit() -> str | None:
    """The rcdm source tree's git commit (with '+dirty' when modified); outside a checkout, the commit a `git
    archive` of the source was made from (with '+archive'); else None."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return archived_commit()
    return sha + ("+dirty" if dirty else "")


def archived_commit(path: Path | None = None) -> str | None:
    """The commit `git archive` wrote into PATH (default ARCHIVE_COMMIT; 40 hex digits, then '+archive'), else
    None (a checkout's placeholder, or no such file)."""
    try:
        text = (path or ARCHIVE_COMMIT).read_text().strip()
    except OSError:
        return None
    return f"{text}+archive" if re.fullmatch(r"[0-9a-f]{40}", text) else None


def device_name(device: torch.device) -> str:
    """The device as a card or run.json names it: the GPU's model, or the CPU's with the cores visible."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({os.cpu_count()} cores visible, {cpu_model()})"
