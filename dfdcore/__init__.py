"""dfdcore — the DFDNet face-restoration library (no orchestration imports: Prefect, Ray and MLflow live above)."""
from dfdcore.api import load_generator, load_weights, random_generator
from dfdcore.arch import CheckpointError, DFDNet, save_checkpoint
from dfdcore.components import part_boxes
from dfdcore.config import OFFICIAL, PARTS, GeneratorConfig
from dfdcore.dictionary.format import ComponentDictionary, DictionaryError

__version__ = "0.1.0"
__all__ = ["load_generator", "load_weights", "random_generator", "part_boxes", "DFDNet", "ComponentDictionary", "GeneratorConfig",
           "OFFICIAL", "PARTS", "CheckpointError", "DictionaryError", "save_checkpoint"]
