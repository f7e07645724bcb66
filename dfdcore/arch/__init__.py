"""DFDNet network: generator, its blocks, VGG19 taps, checkpoint I/O, and the literal (official) reference path."""
from .checkpoint import IGNORED_KEY_PREFIXES, CheckpointError, save_checkpoint
from .generator import DFDNet
from .literal import literal_forward, raw_dictionary
from .vgg import VGGFeatures

__all__ = ["DFDNet", "VGGFeatures", "CheckpointError", "IGNORED_KEY_PREFIXES", "save_checkpoint",
           "literal_forward", "raw_dictionary"]
