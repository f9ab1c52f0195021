"""The training-recipe options: v-prediction, Min-SNR-gamma weighting, logit-normal timesteps, warm-up, dropout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from rcdm.cli import main
from rcdm.diffusion import SamplingConfig, sample, sample_generators
from rcdm.errors import RCDMError
from rcdm.losses import GaussianDiffusion, draw_timesteps, v_to_epsilon
from rcdm.model import RCDM
from rcdm.monitor import read_metrics
from rcdm.pack.ab import VARIANTS, ABConfig, eval_steps, variant_config, with_images
from rcdm.train import learning_rate, train
from rcdm.train_config import validate_config
from training_for_tests import tiny_argv, tiny_config

D = GaussianDiffusion()


class Oracle(nn.Module):
    """A 'model' that returns a fixed output, so the loss of a known prediction error can be checked."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x, t, representation, drop=None):
        return self.out


def _batch(t: list[int]):
    torch.manual_seed(0)
    x0 = torch.rand(len(t), 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    return x0, noise, torch.tensor(t)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_exact_target_has_zero_error_and_the_other_target_does_not(prediction):
    x0, noise, t = _batch([300, 500, 990])  # at small t, v ~ epsilon
    ab = D.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    exact, other = (noise, v) if prediction == "epsilon" else (v, noise)
    rep = torch.zeros(3, 4)
    kw = dict(loss="simple", t=t, noise=noise, prediction=prediction)
    assert D.losses(Oracle(exact), x0, rep, **kw).abs().max() < 1e-6
    assert D.losses(Oracle(other), x0, rep, **kw).min() > 1e-3


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights_the_squared_error_by_min_snr_gamma(prediction):
    x0, noise, t = _batch([0, 200, 999])
    ab = D.alphas_cumprod[t].float()
    snr = ab / (1 - ab)
    target = (
        noise
        if prediction == "epsilon"
        else ab.sqrt().view(-1, 1, 1, 1) * noise - (1 - ab).sqrt().view(-1, 1, 1, 1) * x0
    )
    off = Oracle(target + 0.5)  # squared error 0.25 everywhere
    kw = dict(loss="simple", t=t, noise=noise, prediction=prediction)
    plain = D.losses(off, x0, torch.zeros(3, 4), **kw)
    terms: dict[str, float] = {}
    weighted = D.losses(off, x0, torch.zeros(3, 4), snr_gamma=5.0, terms=terms, **kw)
    expected = snr.clamp(max=5.0) / (snr if prediction == "epsilon" else snr + 1)
    torch.testing.assert_close(plain, torch.full((3,), 0.25), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weighted, 0.25 * expected, rtol=1e-4, atol=1e-7)
    assert weighted[0] < 0.01 * plain[0]  # t = 0: SNR ~ 1e4, weight gamma / SNR
    assert terms["mse"] == pytest.approx(0.25, rel=1e-5)  # the log keeps the unweighted error


def test_hybrid_loss_of_a_v_model_reads_its_variance_channels():
    x0, noise, t = _batch([0, 300, 700])
    ab = D.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    out_v = torch.cat([v, torch.zeros_like(v)], 1)
    out_eps = torch.cat([noise, torch.zeros_like(v)], 1)
    kw = dict(loss="hybrid", t=t, noise=noise)
    a = D.losses(Oracle(out_v), x0, torch.zeros(3, 4), prediction="v_prediction", **kw)
    b = D.losses(Oracle(out_eps), x0, torch.zeros(3, 4), prediction="epsilon", **kw)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # the same prediction in two parametrisations


def test_v_to_epsilon_inverts_the_v_of_a_known_epsilon():
    x0, noise, t = _batch([1, 400, 999])
    ab = D.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    torch.testing.assert_close(v_to_epsilon(v, xt, ab), noise, rtol=1e-4, atol=1e-4)
    extra = torch.randn(3, 3, 8, 8)
    both = v_to_epsilon(torch.cat([v, extra], 1), xt, ab)
    assert torch.equal(both[:, 3:], extra)


class _AsV(nn.Module):
    """An epsilon UNet re-expressed as a v UNet: v = (eps - sqrt(1 - abar) x) / sqrt(abar)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.inner = unet
        self.ab = D.alphas_cumprod.float()

    def forward(self, x, t, class_labels=None):
        out = self.inner(x, t, class_labels=class_labels).sample
        ab = self.ab[t.cpu()].view(-1, 1, 1, 1)
        v = (out[:, :3] - (1 - ab).sqrt() * x) / ab.sqrt()

        class Out:
            sample = torch.cat([v, out[:, 3:]], 1)

        return Out


@pytest.mark.parametrize("sampler", ["dpm++", "ddim", "ddpm"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_a_v_model_samples_what_the_same_function_as_epsilon_samples(sampler, guidance):
    torch.manual_seed(0)
    kw = dict(representation_dim=4, sample_size=16, null_representation=True)
    eps_model = RCDM.from_preset("tiny", **kw).eval()
    v_model = RCDM.from_preset("tiny", prediction_type="v_prediction", **kw).eval()
    assert v_model.prediction_type == "v_prediction"
    v_model.load_state_dict(eps_model.state_dict())
    v_model.unet = _AsV(v_model.unet)
    reps = torch.randn(2, 4)
    cfg = SamplingConfig(sampler=sampler, steps=5, guidance=guidance, seed=3, precision="fp32")
    a, b = sample(eps_model, reps, cfg), sample(v_model, reps, cfg)
    torch.testing.assert_close(a, b, rtol=0, atol=2e-4)


def test_logit_normal_timesteps_favour_the_middle_and_replay():
    gens = lambda: sample_generators(7, 0, 4000)  # noqa: E731
    t = draw_timesteps(gens(), 1000, "logit-normal")
    assert torch.equal(t, draw_timesteps(gens(), 1000, "logit-normal"))
    assert t.min() >= 0 and t.max() <= 999
    middle = ((t >= 250) & (t < 750)).float().mean()
    assert middle > 0.65  # uniform: 0.5; logit-normal(0, 1): 0.74
    u = draw_timesteps(gens(), 1000, "uniform")
    assert abs(float(((u >= 250) & (u < 750)).float().mean()) - 0.5) < 0.03
    first = torch.cat([torch.randint(0, 1000, (1,), generator=g) for g in gens()])
    assert torch.equal(u, first)  # uniform draws what runs drew before the option existed
    with pytest.raises(RCDMError, match="unknown timestep sampling 'beta'"):
        draw_timesteps(gens(), 1000, "beta")  # type: ignore[arg-type]


def test_warmup_rises_linearly_then_holds(tmp_path):
    cfg = tiny_config(tmp_path, lr=1e-3, warmup_steps=4)
    assert [learning_rate(cfg, s) for s in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]
    )
    assert learning_rate(tiny_config(tmp_path, lr=1e-3), 0) == 1e-3


def test_a_run_with_the_new_knobs_records_them_and_logs_the_warmup(few_images: Path, tmp_path):
    cfg = tiny_config(
        few_images,
        steps=4,
        prediction="v_prediction",
        loss_weighting="min-snr",
        timestep_sampling="logit-normal",
        warmup_steps=2,
        dropout=0.1,
        cond_drop=0.2,
        log_every=1,
    )
    train(cfg, tmp_path / "run", progress=False)
    model = RCDM.from_pretrained(tmp_path / "run" / "model")
    assert model.prediction_type == "v_prediction" and model.config.dropout == 0.1
    rows = read_metrics(tmp_path / "run")
    assert rows[0]["lr"] == pytest.approx(cfg.lr / 2)  # step 1 of a 2-step warm-up
    imgs = sample(
        model, torch.randn(2, model.config.representation_dim), SamplingConfig(steps=3, guidance=2.0)
    )
    assert torch.isfinite(imgs).all()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(prediction="x0"), "unknown --prediction 'x0'"),
        (dict(loss_weighting="p2"), "unknown --loss-weighting 'p2'"),
        (dict(snr_gamma=0.0), "--snr-gamma 0.0 must be a positive number"),
        (dict(snr_gamma=math.nan), "--snr-gamma nan"),
        (dict(timestep_sampling="cosine"), "unknown --timestep-sampling 'cosine'"),
        (dict(warmup_steps=-1), "--warmup-steps -1 is out of range"),
        (dict(dropout=1.0), "--dropout 1.0 is out of range"),
    ],
)
def test_bad_knob_values_are_refused_naming_them(tmp_path, changes, message):
    with pytest.raises(RCDMError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate_config(tiny_config(tmp_path, **changes))


def test_cli_flags_reach_the_run_and_bad_ones_exit_2(few_images: Path, tmp_path, capsys):
    argv = tiny_argv(few_images)
    assert main([*argv, "--steps", "2", "--snr-gamma", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "--snr-gamma -1.0 must be a positive number" in capsys.readouterr().err
    flags = ["--prediction", "v_prediction", "--loss-weighting", "min-snr", "--warmup-steps", "3"]
    assert main([*argv, "--steps", "2", *flags, "--out", str(tmp_path / "run")]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (run["prediction"], run["loss_weighting"], run["warmup_steps"]) == ("v_prediction", "min-snr", 3)
    assert run["model"]["prediction_type"] == "v_prediction"


def test_ab_variants_share_everything_but_their_change(tmp_path):
    ab = ABConfig(data=str(tmp_path))
    base = variant_config(ab, "baseline")
    assert (base.preset, base.batch_size, base.lr, base.cond_drop, base.steps) == (
        "cifar32-small",
        64,
        5e-4,
        0.1,
        2000,
    )
    both = variant_config(ab, "min-snr+v-prediction")
    assert (both.loss_weighting, both.prediction) == ("min-snr", "v_prediction")
    assert {k: v for k, v in both.__dict__.items() if k not in ("loss_weighting", "prediction")} == {
        k: v for k, v in base.__dict__.items() if k not in ("loss_weighting", "prediction")
    }
    big = variant_config(ab, "lr1e-3-batch128")
    assert big.steps * big.batch_size == base.steps * base.batch_size  # equal images seen
    assert eval_steps(ab, "lr1e-3-batch128") == {64_000: 500, 128_000: 1000}
    assert eval_steps(ab, "baseline") == {64_000: 1000, 128_000: 2000}
    for name in ("baseline", "lr1e-3-batch128"):  # every evaluation point is a kept checkpoint
        cfg = variant_config(ab, name)
        assert all(s % cfg.save_every == 0 for s in eval_steps(ab, name).values())
        assert cfg.keep_checkpoints * cfg.save_every >= cfg.steps
    assert set(VARIANTS) >= {"baseline", "min-snr", "v-prediction", "logit-normal", "dropout", "cifar32"}
    with pytest.raises(RCDMError, match="unknown A/B variant 'edm'"):
        variant_config(ab, "baseline+edm")
    with pytest.raises(RCDMError, match="not a whole number of batches"):
        variant_config(with_images(ab, 1000), "baseline")
