"""Training DFDNet: configuration, one training process, checkpoints (distribution lives in ``tasks.train``)."""
from dfdcore.training.config import LossWeights, TrainConfig
from dfdcore.training.loop import (
    Trainer,
    build_generator,
    checkpoint_step,
    checkpoint_steps,
    checkpoint_uri,
    latest_checkpoint,
)

__all__ = ["LossWeights", "TrainConfig", "Trainer", "build_generator", "checkpoint_step", "checkpoint_steps",
           "checkpoint_uri", "latest_checkpoint"]
