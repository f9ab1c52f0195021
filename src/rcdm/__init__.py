"""rcdm: Representation-Conditional Diffusion Models (Bordes, Balestriero, Vincent, TMLR 2022)."""

# ruff: noqa: E402  (the wait policy is chosen before the imports below load torch)
from .openmp import choose_wait_policy

choose_wait_policy()  # before anything imports torch: OpenMP reads its wait policy once (rcdm/openmp.py)

from .adaptation import AdaptConfig, adapt
from .diffusion import SAMPLING_PRESETS, SamplingConfig, sample, sample_many
from .encoders import Encoder, Preprocessing, create_encoder, list_encoders, register_encoder
from .errors import NonFiniteLossError, RCDMError
from .loading import encoder_for, load_model, register_model_source
from .losses import GaussianDiffusion
from .model import PRESETS, RCDM
from .train import TrainConfig, train
from .visualize import Visualization, save_visualization, visualize

__version__ = "0.1.0"
__all__ = [
    "PRESETS",
    "RCDM",
    "SAMPLING_PRESETS",
    "AdaptConfig",
    "Encoder",
    "GaussianDiffusion",
    "NonFiniteLossError",
    "Preprocessing",
    "RCDMError",
    "SamplingConfig",
    "TrainConfig",
    "Visualization",
    "adapt",
    "create_encoder",
    "encoder_for",
    "list_encoders",
    "load_model",
    "register_encoder",
    "register_model_source",
    "sample",
    "sample_many",
    "save_visualization",
    "train",
    "visualize",
]
