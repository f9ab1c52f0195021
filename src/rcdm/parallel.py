"""The process group of a multi-process run (accelerate launch / torchrun), on GPUs or on CPUs."""

from __future__ import annotations

import torch


def process_state():
    """accelerate's PartialState, with CPU processes joined through gloo when there is no GPU.

    accelerate treats a torchrun on a CPU-only machine as one process per rank unless it is told `cpu=True`;
    then every rank would redo all the work instead of its share.
    """
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())
