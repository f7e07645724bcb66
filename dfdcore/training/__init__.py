"""Training DFDNet: configuration, one training process, checkpoints (distribution lives in ``tasks.train``)."""
from .config import LossWeights, TrainConfig
from .loop import Trainer, build_generator, checkpoint_uri, latest_checkpoint

__all__ = ["LossWeights", "TrainConfig", "Trainer", "build_generator", "checkpoint_uri", "latest_checkpoint"]
