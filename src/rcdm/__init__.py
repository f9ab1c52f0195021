"""rcdm: Representation-Conditional Diffusion Models (Bordes, Balestriero, Vincent, TMLR 2022)."""

import os

# OpenMP threads that wait for work sleep rather than spin, unless the user says otherwise. Set before torch loads
# its OpenMP runtime, which reads it once (so it has no effect when torch was imported first). Spinning threads
# are what make two torch threads on a core that another process shares run several-fold slower: 32 samples of
# dpm++ 15 at guidance 5 on 2 threads, beside two busy one-thread jobs on a 2-core Xeon, took 60 s spinning and
# 5.1 s sleeping; on the idle machine 5.9 s and 6.2 s, within that machine's run-to-run spread (README, "Speed
# switches").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
