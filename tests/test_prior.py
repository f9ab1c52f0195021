"""rcdm prior and rcdm generate: a diffusion model of representations, and images drawn from its samples."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rcdm.errors import RCDMError
from rcdm.loading import encoder_for, load_model
from rcdm.prior import (
    PriorConfig,
    RepresentationPrior,
    check_prior_matches,
    load_prior,
    sample_representations,
    train_prior,
)

TINY = dict(width=32, depth=2, batch_size=16)  # a tiny prior: tests only


@pytest.fixture(scope="module")
def prior_run(tiny_run, few_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "run"
    train_prior(
        PriorConfig(model=str(tiny_run), data=str(few_images), steps=40, save_every=20, **TINY),
        out,
        progress=False,
    )
    return out


def test_a_prior_learns_a_known_distribution():
    """Trained directly on 2-d points around two centres, its samples land near the centres, not between them."""
    torch.manual_seed(0)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0]])
    data = centres[torch.randint(0, 2, (2000,))] + 0.3 * torch.randn(2000, 2)
    net = RepresentationPrior(2, width=64, depth=2)
    net.rep_mean.copy_(data.mean(0))
    net.rep_std.copy_(data.std(0))
    z = (data - net.rep_mean) / net.rep_std
    from diffusers import DDPMScheduler

    from rcdm.prior import SCHEDULE

    sched = DDPMScheduler(**SCHEDULE)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for _ in range(1500):
        idx, t = torch.randint(0, 2000, (256,)), torch.randint(0, 1000, (256,))
        noise = torch.randn(256, 2)
        loss = torch.nn.functional.mse_loss(net(sched.add_noise(z[idx], noise, t), t), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    samples = sample_representations(net.eval(), 400, steps=50, seed=1)
    nearest = torch.cdist(samples, centres).min(1).values
    assert float(nearest.median()) < 1.0  # the middle (0, 0) is 4 away from both
    assert 0.3 < float((samples[:, 0] > 0).float().mean()) < 0.7  # both modes drawn
    torch.testing.assert_close(samples, sample_representations(net, 400, steps=50, seed=1))


def test_training_writes_a_loadable_prior_and_resumes_where_it_stopped(prior_run, tiny_run, few_images):
    prior, record = load_prior(prior_run)
    model = load_model(tiny_run)
    enc = encoder_for(model)
    assert record["representations"] == 8 and record["steps"] == 40
    assert prior.config.representation_dim == model.config.representation_dim
    check_prior_matches(record, enc)
    assert (prior_run / "prior" / "README.md").read_text().startswith("# Representation prior")
    rows = [json.loads(line) for line in (prior_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 40
    # Resuming from the step-20 checkpoint replays steps 21..40 exactly.
    state = load_file(prior_run / "checkpoints" / "step-00000040" / "prior.safetensors")
    resumed = prior_run.parent / "resumed"
    cfg = PriorConfig(model=str(tiny_run), data=str(few_images), steps=20, save_every=20, **TINY)
    train_prior(cfg, resumed, progress=False)
    train_prior(PriorConfig(**{**cfg.__dict__, "steps": 40}), resumed, resume=True, progress=False)
    again = load_file(resumed / "checkpoints" / "step-00000040" / "prior.safetensors")
    for k in state:
        torch.testing.assert_close(again[k], state[k], rtol=0, atol=1e-6)
    with pytest.raises(RCDMError, match="--resume: lr differ"):
        train_prior(PriorConfig(**{**cfg.__dict__, "lr": 5e-4}), resumed, resume=True, progress=False)
    with pytest.raises(RCDMError, match="not empty"):
        train_prior(cfg, resumed, progress=False)


def test_sigterm_saves_the_step_under_way_and_the_resume_ends_where_an_unbroken_run_does(
    prior_run, tiny_run, few_images, tmp_path, monkeypatch
):
    import os
    import signal

    import rcdm.prior
    from rcdm.errors import TrainingInterrupted

    draws = rcdm.prior.sample_generators

    def term_in_step_7(seed, step, n):  # a scheduler's notice while step 7 is under way
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return draws(seed, step, n)

    monkeypatch.setattr(rcdm.prior, "sample_generators", term_in_step_7)
    cfg = PriorConfig(model=str(tiny_run), data=str(few_images), steps=40, save_every=20, **TINY)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="SIGTERM: stopped at the checkpoint of step 7 of 40"):
        train_prior(cfg, run, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000007"]
    assert not (run / "prior").exists()
    # the time the stopped process spent travels with its checkpoint into the finished prior's record (set here
    # to values no 33-step tiny run reaches, so the sum shows)
    state_file = run / "checkpoints" / "step-00000007" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["step"] == 7 and {"wall_time_s", "cpu_time_s"} <= state.keys()
    state_file.write_text(json.dumps({**state, "wall_time_s": 5000.0, "cpu_time_s": 4000.0}))
    monkeypatch.setattr(rcdm.prior, "sample_generators", draws)
    train_prior(cfg, run, resume=True, progress=False)
    _, record = load_prior(run)
    assert 5000 < record["wall_time_s"] < 5000 + 600 and 4000 < record["cpu_time_s"] < 4000 + 1200
    rows = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1] == 40
    want = load_file(prior_run / "checkpoints" / "step-00000040" / "prior.safetensors")
    got = load_file(run / "checkpoints" / "step-00000040" / "prior.safetensors")
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6)


def test_a_prior_of_another_encoder_is_refused(prior_run, tiny_run):
    _, record = load_prior(prior_run)
    enc = encoder_for(load_model(tiny_run))
    with pytest.raises(RCDMError, match="train a prior with this model"):
        check_prior_matches({**record, "encoder_identity": "something-else"}, enc)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_prior_encodes_its_images_on_the_gpu_when_there_is_one(
    tiny_run, few_images, tmp_path, monkeypatch
):
    import rcdm.prior

    seen, real = [], rcdm.prior.cached_representations
    monkeypatch.setattr(
        rcdm.prior,
        "cached_representations",
        lambda enc, *a, **kw: seen.append(enc.device.type) or real(enc, *a, **kw),
    )
    cfg = PriorConfig(model=str(tiny_run), data=str(few_images), steps=2, save_every=2, **TINY)
    train_prior(cfg, tmp_path / "run", progress=False)
    assert seen == ["cuda"]
