"""dfdcore — the DFDNet face-restoration library (no orchestration imports: Prefect, Ray and MLflow live above)."""
from .api import load_generator, load_weights, random_generator
from .arch import DFDNet, CheckpointError, save_checkpoint
from .components import part_boxes
from .config import OFFICIAL, PARTS, GeneratorConfig
from .dictionary import ComponentDictionary, DictionaryError

__version__ = "0.1.0"
__all__ = ["load_generator", "load_weights", "random_generator", "part_boxes", "DFDNet", "ComponentDictionary", "GeneratorConfig",
           "OFFICIAL", "PARTS", "CheckpointError", "DictionaryError", "save_checkpoint"]
