"""`RCDMPipeline`: an rcdm model as a diffusers `DiffusionPipeline`, so that any compatible diffusers scheduler
can sample it (DDPM, DDIM, DPM-Solver++, Euler, UniPC, ...).

    pipe = RCDMPipeline.from_rcdm("runs/r20", scheduler=EulerDiscreteScheduler.from_config(...))
    images = pipe(images=[pil_image], num_samples=8, num_inference_steps=30).images

rcdm's own `diffusion.sample` is the fast path (projected representation, CPU timesteps, CUDA graphs); this is
the plain diffusers loop, for swapping schedulers and for users of diffusers' pipeline API.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput
from PIL import Image

from .data import center_square, load_image, resize
from .diffusion import SamplingConfig, sample
from .encoders import Encoder
from .errors import RCDMError
from .figures import to_pil
from .loading import encoder_for, load_model
from .losses import SCHEDULE
from .model import RCDM


class RCDMPipeline(DiffusionPipeline):
    """rcdm (an RCDM) + scheduler (a diffusers scheduler with the training schedule: T=1000, linear betas)."""

    def __init__(self, rcdm: RCDM, scheduler) -> None:
        super().__init__()
        self.register_modules(rcdm=rcdm, scheduler=scheduler)

    @classmethod
    def from_rcdm(cls, source, scheduler=None, device: str | torch.device | None = None) -> RCDMPipeline:
        """Any `rcdm.load_model` source; the default scheduler is the published DDPM (learned variance)."""
        model = load_model(source, device=device)
        if scheduler is None:
            scheduler = DDPMScheduler(
                **SCHEDULE,
                variance_type="learned_range" if model.learned_variance else "fixed_small",
                clip_sample=True,
                timestep_spacing="linspace",
                prediction_type=model.prediction_type,
            )
        return cls(model, scheduler)

    def _progress_enabled(self) -> bool:
        """Whether `set_progress_bar_config(disable=True)` left the progress bar on."""
        return not getattr(self, "_progress_bar_config", {}).get("disable", False)

    def _check_scheduler(self) -> None:
        cfg = self.scheduler.config
        schedule = {k: cfg.get(k) for k in SCHEDULE}
        wanted = self.rcdm.prediction_type
        if schedule != SCHEDULE or cfg.get("prediction_type", "epsilon") != wanted:
            raise RCDMError(
                f"scheduler {type(self.scheduler).__name__} has {schedule}, prediction "
                f"{cfg.get('prediction_type')!r}; this model is trained with {SCHEDULE} and prediction_type "
                f"{wanted!r}: build it with Scheduler.from_config(pipe.scheduler.config) or pass those values"
            )

    def encode(self, images: Sequence[Image.Image | str], encoder: Encoder | None = None) -> torch.Tensor:
        """Images (PIL or paths) -> (N, dim) representations by the model's own encoder (or `encoder`)."""
        enc = encoder_for(self.rcdm, encoder).to(self.device)
        size = enc.preprocessing.input_size
        views = []
        for im in images:
            pil = load_image(im) if isinstance(im, str) else im.convert("RGB")
            x = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255
            views.append(resize(center_square(x), size))
        with torch.no_grad():
            return enc(torch.stack(views).to(self.device)).float()

    @torch.no_grad()
    def __call__(
        self,
        images: Sequence[Image.Image | str] | None = None,
        representations: torch.Tensor | None = None,
        *,
        num_samples: int = 1,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        seed: int = 0,
        encoder: Encoder | None = None,
        output_type: str = "pil",
    ) -> ImagePipelineOutput:
        """num_samples images per input image (or representation row), in input order.

        rcdm's one sampling loop (`rcdm.diffusion.sample`) with this pipeline's scheduler: sample k's starting
        and step noise come from a CPU generator seeded by (seed, k), so a sample does not depend on the batch.
        guidance_scale: classifier-free guidance (needs a model trained with condition dropout); None: the
        model's recorded default, else 1. output_type: 'pil' or 'pt' ((N, 3, H, W) in [0, 1]).
        """
        if (images is None) == (representations is None):
            raise RCDMError("pass images or representations (one of the two)")
        self._check_scheduler()
        reps = self.encode(images, encoder) if images is not None else representations.float().to(self.device)
        reps = reps.repeat_interleave(num_samples, 0)
        settings = SamplingConfig(
            steps=num_inference_steps, seed=seed, guidance=guidance_scale, precision="fp32"
        )
        imgs = sample(self.rcdm, reps, settings, scheduler=self.scheduler, progress=self._progress_enabled())
        if output_type == "pt":
            return ImagePipelineOutput(images=imgs)
        return ImagePipelineOutput(images=[to_pil(im) for im in imgs])
