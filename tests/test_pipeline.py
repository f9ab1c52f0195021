"""RCDMPipeline: the model behind diffusers' pipeline API, with any compatible scheduler."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from rcdm.diffusion import SamplingConfig, sample
from rcdm.errors import RCDMError
from rcdm.model import RCDM
from rcdm.pipeline import RCDMPipeline


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    torch.manual_seed(0)
    m = RCDM.from_preset(
        "tiny", representation_dim=12, sample_size=16, encoder="pixels:2", feature="backbone"
    )
    folder = tmp_path_factory.mktemp("m") / "model"
    m.save_pretrained(folder)
    return str(folder)


def test_the_default_pipeline_is_rcdms_published_sampler(model):
    pipe = RCDMPipeline.from_rcdm(model)
    pipe.set_progress_bar_config(disable=True)
    reps = torch.randn(2, 12)
    got = pipe(representations=reps, num_samples=1, num_inference_steps=4, seed=3, output_type="pt").images
    want = sample(pipe.rcdm, reps, SamplingConfig(sampler="ddpm", steps=4, seed=3, precision="fp32"))
    assert got.shape == (2, 3, 16, 16) and (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler])
def test_any_compatible_scheduler_samples_images(model, few_images, scheduler_cls):
    base = RCDMPipeline.from_rcdm(model)
    pipe = RCDMPipeline(base.rcdm, scheduler_cls.from_config(base.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        images=[str(p) for p in sorted(few_images.iterdir())[:2]], num_samples=2, num_inference_steps=3
    )
    assert len(out.images) == 4 and all(im.size == (16, 16) for im in out.images)


def test_a_scheduler_with_another_schedule_is_refused(model):
    base = RCDMPipeline.from_rcdm(model)
    pipe = RCDMPipeline(base.rcdm, DDIMScheduler(beta_schedule="scaled_linear"))
    with pytest.raises(RCDMError, match="scaled_linear"):
        pipe(representations=torch.randn(1, 12), num_inference_steps=2)


def test_a_saved_pipeline_loads_back_with_diffusers(model, tmp_path):
    pipe = RCDMPipeline.from_rcdm(model)
    pipe.save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / "rcdm" / "diffusion_pytorch_model.rcdm.safetensors").is_file()
    back = RCDMPipeline.from_pretrained(tmp_path / "pipe")
    want, got = pipe.rcdm.state_dict(), back.rcdm.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_a_v_prediction_model_gets_a_v_scheduler_and_samples_as_rcdm_does(tmp_path):
    torch.manual_seed(0)
    m = RCDM.from_preset("tiny", representation_dim=12, sample_size=16, prediction_type="v_prediction")
    m.save_pretrained(tmp_path / "v")
    pipe = RCDMPipeline.from_rcdm(str(tmp_path / "v"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    reps = torch.randn(2, 12)
    got = pipe(representations=reps, num_inference_steps=4, seed=3, output_type="pt").images
    want = sample(pipe.rcdm, reps, SamplingConfig(sampler="ddpm", steps=4, seed=3, precision="fp32"))
    assert (got - want).abs().max() < 1e-4
    eps = RCDMPipeline(pipe.rcdm, DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="epsilon"))
    with pytest.raises(RCDMError, match="prediction_type 'v_prediction'"):
        eps(representations=reps, num_inference_steps=2)


def test_guidance_scale_is_rcdms_guidance(tmp_path):
    torch.manual_seed(0)
    m = RCDM.from_preset("tiny", representation_dim=12, sample_size=16, null_representation=True)
    with torch.no_grad():
        m.null_rep.normal_()
    m.save_pretrained(tmp_path / "g")
    pipe = RCDMPipeline.from_rcdm(str(tmp_path / "g"))
    pipe.set_progress_bar_config(disable=True)
    reps = torch.randn(2, 12)
    kw = dict(representations=reps, num_inference_steps=4, seed=3, output_type="pt")
    guided = pipe(guidance_scale=3.0, **kw).images
    want = sample(
        pipe.rcdm, reps, SamplingConfig(sampler="ddpm", steps=4, guidance=3.0, seed=3, precision="fp32")
    )
    assert (guided - want).abs().max() < 1e-4
    assert (guided - pipe(guidance_scale=1.0, **kw).images).abs().max() > 1e-2
