"""DFDNet network: generator, its blocks, VGG19 taps, checkpoint I/O, and the literal (official) reference path."""
from dfdcore.arch.checkpoint import IGNORED_KEY_PREFIXES, CheckpointError, save_checkpoint
from dfdcore.arch.generator import DFDNet
from dfdcore.arch.literal import literal_forward, raw_dictionary
from dfdcore.arch.vgg import VGGFeatures

__all__ = ["DFDNet", "VGGFeatures", "CheckpointError", "IGNORED_KEY_PREFIXES", "save_checkpoint",
           "literal_forward", "raw_dictionary"]
