"""The fast sampling / training path (docs/speed.md): same images as the plain path, same seeds, CLI switches,
and the speed benchmark's table. CUDA-only modes are tested under `-m gpu` (scripts/gpu_fast_path.sh)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from rcdm import devices
from rcdm.cli import main
from rcdm.devices import resolve_compile, resolve_precision
from rcdm.diffusion import (
    SAMPLERS,
    SamplingConfig,
    _StepNoise,
    ddpm_step,
    denoiser,
    make_scheduler,
    sample,
    sample_generators,
    sample_many,
)
from rcdm.encoders import create_encoder
from rcdm.errors import RCDMError
from rcdm.model import RCDM

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()


def tiny(learned_variance: bool = True, null: bool = True) -> RCDM:
    torch.manual_seed(0)
    m = RCDM.from_preset(
        "tiny",
        representation_dim=6,
        sample_size=16,
        learned_variance=learned_variance,
        null_representation=null,
    )
    if null:
        with torch.no_grad():
            m.null_rep.normal_()
    return m.eval()


@pytest.fixture(scope="module")
def model() -> RCDM:
    return tiny()


@torch.no_grad()
def reference_sample(
    model: RCDM, reps: torch.Tensor, steps: int, sampler: str, seed: int, guidance: float = 1.0
):
    """The plain loop: the full model every step, diffusers' own step with per-sample CPU generators."""
    b, size = reps.shape[0], model.config.sample_size
    gens = sample_generators(seed, 0, b)
    x = torch.cat([torch.randn((1, 3, size, size), generator=g) for g in gens])
    sched = make_scheduler(sampler, model.learned_variance)
    sched.set_timesteps(steps)
    kw = {"use_clipped_model_output": True, "eta": 0.0} if sampler == "ddim" else {}
    if sampler == "ddpm":
        kw["generator"] = gens
    for t in sched.timesteps:
        tt = torch.full((b,), int(t), dtype=torch.long)
        if guidance != 1.0:
            drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)])
            cond, uncond = model(
                torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([reps, reps]), drop=drop
            ).chunk(2)
            out = cond.clone()
            out[:, :3] = uncond[:, :3] + guidance * (cond[:, :3] - uncond[:, :3])
        else:
            out = model(x, tt, reps)
        if sampler != "ddpm" or not model.learned_variance:
            out = out[:, :3]
        x = sched.step(out, t, x, **kw).prev_sample
    return ((x.clamp(-1, 1) + 1) / 2).cpu()


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_sample_equals_the_plain_loop_bit_for_bit(model, sampler, guidance):
    # Projecting the representation once, CPU timesteps, drawing ddpm's noise ourselves: the same arithmetic.
    reps = torch.randn(3, 6)
    fast = sample(
        model, reps, SamplingConfig(sampler=sampler, steps=5, guidance=guidance, seed=4, precision="fp32")
    )
    plain = reference_sample(model, reps, 5, sampler, 4, guidance)
    assert torch.equal(fast, plain)


def test_ddpm_without_learned_variance_equals_the_plain_loop():
    m = tiny(learned_variance=False, null=False)
    reps = torch.randn(2, 6)
    assert torch.equal(
        sample(m, reps, SamplingConfig(sampler="ddpm", steps=4, seed=1, precision="fp32")),
        reference_sample(m, reps, 4, "ddpm", 1),
    )


@pytest.mark.parametrize("variance_type", ["learned_range", "fixed_small"])
def test_ddpm_step_is_diffusers_step(variance_type):
    sched = make_scheduler("ddpm", variance_type == "learned_range")
    sched.set_timesteps(10)
    ts = [int(t) for t in sched.timesteps]
    c = 6 if variance_type == "learned_range" else 3
    for i in (0, 4, len(ts) - 1):  # first, middle and the last (t = 0: no noise) step
        g = torch.Generator().manual_seed(i)
        out, x = torch.randn(2, c, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
        gens = sample_generators(7, 0, 2)
        want = DDPMScheduler.step(sched, out, torch.tensor(ts[i]), x, generator=gens)
        noise = torch.cat([torch.randn((1, 3, 8, 8), generator=g) for g in sample_generators(7, 0, 2)])
        prev_t = ts[i + 1] if i + 1 < len(ts) else -1
        got, x0 = ddpm_step(sched, out, ts[i], prev_t, x, noise if ts[i] > 0 else None)
        assert torch.equal(got, want.prev_sample) and torch.equal(x0, want.pred_original_sample)


def test_noise_drawn_ahead_on_a_thread_is_the_same_noise():
    inline = _StepNoise(sample_generators(3, 0, 4), (3, 8, 8), torch.device("cpu"), ahead=False)
    ahead = _StepNoise(sample_generators(3, 0, 4), (3, 8, 8), torch.device("cpu"), ahead=True)
    try:
        for k in range(5):
            assert torch.equal(inline.take(prefetch=k < 4), ahead.take(prefetch=k < 4))
    finally:
        ahead.close()
    # and it is what a per-sample draw gives (diffusers' order: sample by sample)
    gens = sample_generators(3, 0, 4)
    first = _StepNoise(sample_generators(3, 0, 4), (3, 8, 8), torch.device("cpu"), ahead=False).take(False)
    assert torch.equal(first, torch.cat([torch.randn((1, 3, 8, 8), generator=g) for g in gens]))


def test_modes_resolve_and_refuse_with_the_fix():
    cpu = torch.device("cpu")
    assert resolve_compile("auto", cpu) == "off"
    assert resolve_compile("auto", torch.device("cuda")) == devices.CUDA_DEFAULT_COMPILE
    assert resolve_precision("auto", cpu) == (
        torch.bfloat16 if devices.cpu_has_native_bf16() else torch.float32
    )
    assert resolve_precision("auto", torch.device("cuda")) == torch.bfloat16
    for mode in ("graphs", "reduce-overhead"):
        with pytest.raises(RCDMError, match=f"'{mode}'.*CUDA.*'default'"):
            resolve_compile(mode, cpu)
    with pytest.raises(RCDMError, match=r"'turbo'.*auto, off, graphs"):
        sample(tiny(), torch.randn(1, 6), SamplingConfig(compile="turbo"))
    with pytest.raises(RCDMError, match=r"'fp8'.*bf16"):
        sample(tiny(), torch.randn(1, 6), SamplingConfig(precision="fp8"))


def test_denoiser_is_the_model(model):
    x, t, rep = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), torch.randn(2, 6)
    with torch.no_grad():
        want = model(x, t, rep)
        got = denoiser(model, "off", torch.float32)(x, t, model.condition(rep, 2))
    assert torch.equal(got, want)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_bf16_on_the_cpu_is_bf16_rounding_and_keeps_seeds(model, sampler):
    reps = torch.randn(2, 6)
    fp32 = sample(model, reps, SamplingConfig(sampler=sampler, steps=3, seed=2, precision="fp32"))
    bf16 = sample(model, reps, SamplingConfig(sampler=sampler, steps=3, seed=2, precision="bf16"))
    assert torch.equal(
        bf16, sample(model, reps, SamplingConfig(sampler=sampler, steps=3, seed=2, precision="bf16"))
    )
    other = sample(model, reps, SamplingConfig(sampler=sampler, steps=3, seed=3, precision="fp32"))
    # Mean distance: ~0.002 to fp32, ~0.45 to another seed (the max is not a fair measure: one pixel near the
    # x0 clip of an untrained model can flip).
    assert (bf16 - fp32).abs().mean() < 0.02 < 0.2 < (other - fp32).abs().mean()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    with torch.no_grad():
        cond = model.condition(reps, 2)
        lo = denoiser(model, "off", torch.bfloat16)(x, t, cond)
        hi = denoiser(model, "off", torch.float32)(x, t, cond)
    assert 0 < (lo - hi).abs().max() < 0.1 * hi.abs().max()  # bf16 did run, and rounds only


@pytest.mark.slow  # torch.compile on a CPU takes over a minute for the tiny UNet (measured: 76 s, 2 cores)
@pytest.mark.parametrize("sampler", ["ddpm", "dpm++"])
def test_compiled_sampling_matches_eager_on_the_cpu(model, sampler):
    import shutil

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler")
    reps = torch.randn(2, 6)
    eager = sample_many(model, reps, 2, SamplingConfig(sampler=sampler, steps=4, seed=9, batch_size=4))
    comp = sample_many(
        model, reps, 2, SamplingConfig(sampler=sampler, steps=4, seed=9, batch_size=4, compile="default")
    )
    split = sample_many(
        model, reps, 2, SamplingConfig(sampler=sampler, steps=4, seed=9, batch_size=2, compile="default")
    )
    assert (comp - eager).abs().mean() < 1e-3
    assert (split - comp).abs().mean() < 1e-3  # compiled per batch size; a sample does not depend on it


# --- CUDA (run by scripts/gpu_fast_path.sh: pytest -m gpu tests/test_fast_path.py) ----------------------

gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cuda_model() -> RCDM:
    """One model for all modes: its compiled UNet and captured graphs are reused across tests (compile time)."""
    return tiny().cuda()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("mode", ["graphs", "reduce-overhead", "default"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_cuda_fast_modes_match_eager_bf16(cuda_model, mode, sampler):
    m = cuda_model
    reps = torch.randn(4, 6)
    eager = sample(m, reps, SamplingConfig(sampler=sampler, steps=6, seed=3, compile="off"))
    fast = sample(m, reps, SamplingConfig(sampler=sampler, steps=6, seed=3, compile=mode))
    again = sample(m, reps, SamplingConfig(sampler=sampler, steps=6, seed=3, compile=mode))
    assert torch.equal(fast, again)  # same seed, same images
    assert (fast - eager).abs().mean() < 0.02, (fast - eager).abs().mean()  # rounding; another seed: ~0.45
    guided = sample(m, reps, SamplingConfig(sampler=sampler, steps=6, guidance=2.0, seed=3, compile=mode))
    plain = sample(m, reps, SamplingConfig(sampler=sampler, steps=6, guidance=2.0, seed=3, compile="off"))
    assert (guided - plain).abs().mean() < 0.02


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_cuda_default_path_is_batch_independent_and_near_fp32(sampler):
    m = tiny().cuda()
    reps = torch.randn(2, 6)
    whole = sample_many(m, reps, 3, SamplingConfig(sampler=sampler, steps=4, seed=5, batch_size=6))
    split = sample_many(m, reps, 3, SamplingConfig(sampler=sampler, steps=4, seed=5, batch_size=4))
    assert (whole - split).abs().mean() < 0.02
    fp32 = sample_many(
        m,
        reps,
        3,
        SamplingConfig(sampler=sampler, steps=4, seed=5, batch_size=6, compile="off", precision="fp32"),
    )
    cpu = sample_many(tiny(), reps, 3, SamplingConfig(sampler=sampler, steps=4, seed=5, batch_size=6))
    assert (
        fp32 - cpu
    ).abs().mean() < 5e-3  # the same noise on every device: CUDA fp32 ~ CPU fp32 (TF32 convs)
    assert (whole - fp32).abs().mean() < 0.02


@pytest.mark.gpu
@gpu
def test_cuda_graph_follows_weight_updates_and_moves():
    m = tiny().cuda()
    reps = torch.randn(2, 6)
    a = sample(m, reps, SamplingConfig(steps=3, seed=0, compile="graphs"))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.9)  # in place, as an optimizer or EMA copy does
    b = sample(m, reps, SamplingConfig(steps=3, seed=0, compile="graphs"))
    assert (b - sample(m, reps, SamplingConfig(steps=3, seed=0, compile="off"))).abs().mean() < 0.02
    assert not torch.allclose(a, b)
    m.cpu().cuda()  # new storage: the cached graph must not be replayed on the old weights
    assert (sample(m, reps, SamplingConfig(steps=3, seed=0, compile="graphs")) - b).abs().mean() < 0.02


# --- CLI ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    enc = create_encoder("pixels:2", "backbone")
    torch.manual_seed(0)
    m = RCDM.from_preset("tiny", sample_size=16, **enc.describe())
    folder = tmp_path_factory.mktemp("model")
    m.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "a.png"
    Image.fromarray((torch.rand(24, 24, 3) * 255).byte().numpy()).save(path)
    return path


def test_cli_switches(model_dir, image, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["sample", "--model", str(model_dir), "--images", str(image), "--num-samples", "2", "--steps", "2"]
    assert main([*base, "--no-compile", "--precision", "fp32", "--out", str(out)]) == 0
    settings = json.loads((out / "sample.json").read_text())
    assert settings["compile"] == "off" and settings["precision"] == "fp32"
    if not CUDA:
        capsys.readouterr()
        assert main([*base, "--compile", "graphs", "--device", "cpu", "--out", str(tmp_path / "g")]) == 2
        err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("rcdm ")]
        assert len(err) == 1 and "graphs" in err[0] and "CUDA" in err[0], err
    with pytest.raises(SystemExit) as e:
        main([*base, "--compile", "turbo", "--out", str(tmp_path / "t")])
    assert e.value.code == 2
    assert "invalid choice: 'turbo'" in capsys.readouterr().err


def test_train_compile_flag(monkeypatch, tmp_path):
    from rcdm.commands import train as train_cmd
    from rcdm.train import TrainResult

    seen = []

    def fake_train(cfg, out, **kw):
        seen.append(cfg)
        return TrainResult(Path(out), steps=1, last_loss=0.0, images_per_second=0.0, history=[0.0])

    monkeypatch.setattr(train_cmd, "train", fake_train)
    argv = ["train", "--data", str(tmp_path), "--encoder", "pixels:2", "--out", str(tmp_path / "r")]
    assert main([*argv, "--compile"]) == 0 and main(argv) == 0
    assert seen[0].compile is True and seen[1].compile is False


# --- the benchmark --------------------------------------------------------------------------------------


def test_speed_benchmark_writes_the_table_on_the_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("rcdm_speed_bench", ROOT / "benchmarks" / "speed.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "speed.md"
    text = bench.main(["--quick", "--device", "cpu", "--out", str(out)])
    assert out.read_text().strip() == text.strip()
    lines = text.splitlines()
    assert lines[0].startswith("card: CPU") and f"torch {torch.__version__}" in lines[0]
    head = next(i for i, ln in enumerate(lines) if ln.startswith("| section"))
    assert [c.strip() for c in lines[head].strip("|").split("|")] == list(bench.COLUMNS)
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[head + 2 :]]
    by = {(r[0], r[1]): r for r in rows}
    for key in [("forward", "eager fp32"), ("sample", "ddpm-4, eager fp32"), ("sample", "dpm++-2, eager fp32"),
                ("train", "eager fp32")]:  # fmt: skip
        r = by[key]
        assert float(r[3]) > 0 and float(r[4]) > 0 and r[5] == "1.00x" and float(r[7]) == 0.0, r
    bf16 = by[("sample", "dpm++-2, eager bf16")]
    assert bf16[5].endswith("x") and 0 < float(bf16[7]) < 0.2  # measured, and the same pictures up to bf16
    assert by[("forward", "bf16 + CUDA graph")][3].startswith("n/a")
    # trained under bf16 autocast: the fp32 row's first loss up to bf16
    assert 0 < float(by[("train", "bf16")][7]) < 0.2
    assert by[("train", "fp32 + compile")][3].startswith("not run: CPU compile")  # --cpu-compile runs it
    assert {r[0] for r in rows} == {"forward", "sample", "train", "data"}
    assert float(by[("data", "PairedViews, 0 workers")][4]) > 0


def test_attention_runs_through_sdpa():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    m = RCDM.from_preset("cifar32", representation_dim=8)
    attn = [a for a in m.modules() if isinstance(a, Attention)]
    assert attn and all(isinstance(a.processor, AttnProcessor2_0) for a in attn)
    # the published layout: 4 heads of C/4 channels; SDPA's default scale is then the published one
    assert all(a.heads == 4 and a.scale == (a.inner_dim // 4) ** -0.5 for a in attn)


@pytest.mark.parametrize(("flag", "want"), [("1", torch.bfloat16), ("0", torch.float32)])
def test_auto_precision_on_the_cpu_follows_native_bf16(monkeypatch, flag, want):
    # auto = bf16 where the CPU has native bf16 (AMX / AVX512-BF16), fp32 elsewhere; fp32 always forces fp32.
    from rcdm.devices import cpu_has_native_bf16, resolve_precision, training_precision

    monkeypatch.setenv("RCDM_CPU_BF16", flag)
    cpu_has_native_bf16.cache_clear()
    try:
        assert resolve_precision("auto", torch.device("cpu")) == want
        assert resolve_precision("fp32", torch.device("cpu")) == torch.float32
        assert resolve_precision(training_precision("auto"), "cpu") == want
        assert training_precision("fp32") == training_precision("no") == "fp32"  # "no": old run.json files
    finally:
        cpu_has_native_bf16.cache_clear()


def test_cpu_bf16_detection_reads_the_cpu_flags(monkeypatch):
    from rcdm.devices import cpu_has_native_bf16

    monkeypatch.delenv("RCDM_CPU_BF16", raising=False)
    cpu_has_native_bf16.cache_clear()
    try:
        cpuinfo = Path("/proc/cpuinfo")
        flags = cpuinfo.read_text().split() if cpuinfo.exists() else []
        assert cpu_has_native_bf16() == ("amx_bf16" in flags or "avx512_bf16" in flags)
    finally:
        cpu_has_native_bf16.cache_clear()


def test_the_cpu_is_named_by_its_model_and_bf16_extensions():
    # Cards and speed tables name the machine: platform.processor() is empty on Linux, so cpuinfo is read.
    from rcdm.devices import cpu_model, device_name

    xeon = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx512f amx_bf16 avx512_bf16\n"
    assert cpu_model(xeon) == "Intel(R) Xeon(R) Platinum 8480+, AMX-BF16, AVX512-BF16"
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f\n") == "AMD EPYC"
    assert cpu_model("processor\t: 0\n")  # no model name: the machine type, never an empty name
    assert device_name(torch.device("cpu")) == f"cpu ({os.cpu_count()} cores visible, {cpu_model()})"
