"""Options and checks shared by dfd's commands: one name and one help text per concept."""
from __future__ import annotations

import importlib.util
import os

import click

PIPELINE_MODULES = ("prefect", "ray", "mlflow")

WEIGHTS_HELP = """\
dfd needs generator weights and component dictionaries; nothing is downloaded.
  * the official DFDNet release (CC BY-NC-SA 4.0, non-commercial use only):
      --weights checkpoints/facefh_dictionary/latest_net_G.pth --dictionary DictionaryCenter512/
  * a BasicSR-converted checkpoint (.pth with 'params') and dictionary (.pth), or dfd's own
      model.safetensors + dictionary.safetensors
  * or --random-weights to try the pipeline with a random, labelled network (the output is not a restoration)."""


DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def check_spec(spec) -> None:
    """Refuse model options that cannot work, with a message saying what to give instead."""
    if spec.name == "dfdnet":
        if spec.random_weights and spec.weights:
            raise click.UsageError("--random-weights and --weights exclude each other")
        if not spec.random_weights and not (spec.weights and spec.dictionary):
            raise click.UsageError("no model given.\n" + WEIGHTS_HELP + "\n  * or --model identity (dfd restore) to "
                                   "check the geometry: faces pasted back unchanged.")


def build_model(spec):
    """Build the model of a ModelSpec, turning bad weights or dictionaries into a message, not a traceback."""
    import dfdcore

    check_spec(spec)
    try:
        return spec.build()
    except (dfdcore.CheckpointError, dfdcore.DictionaryError) as exc:
        raise click.ClickException(str(exc)) from exc


def model_options(func):
    options = [
        click.option("--weights", type=click.Path(exists=False, dir_okay=False),
                     help="Generator checkpoint: official latest_net_G.pth, BasicSR .pth or dfd .safetensors."),
        click.option("--dictionary", type=click.Path(exists=False),
                     help="Component dictionaries: official DictionaryCenter512/ folder or dfd .safetensors."),
        click.option("--random-weights", is_flag=True,
                     help="Use a seeded random network and dictionary (for trying dfd; outputs are labelled)."),
        click.option("--k", default=512, show_default=True, help="Entries per random dictionary."),
        click.option("--seed", default=0, show_default=True, help="Seed of the random network."),
        click.option("--face-size", default=512, show_default=True, help="Face size of a random network."),
        click.option("--ngf", default=64, show_default=True, help="Channel width of a random network."),
        click.option("--device", default="auto", show_default=True, help="auto (cuda, then mps, then cpu), cpu, "
                     "cuda, cuda:1, mps."),
        click.option("--dict-dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True,
                     help="Storage type of the dictionaries on the device (float16 halves their memory)."),
        click.option("--fidelity", type=click.FloatRange(0, 1), default=1.0, show_default=True,
                     help="Weight of the dictionary contribution: 1 = official DFDNet, 0 = none."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def use_all_cores() -> None:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))


def worse_than_bicubic_warning(weights: str | None, validation: dict | None = None) -> str:
    """A sentence when the model's own validation (stored in its file, or given) was worse than bicubic, else ""."""
    from dfdcore.api import trained_validation
    from dfdcore.evaluation.pairs import worse_than_bicubic

    validation = validation if validation is not None else trained_validation(weights)
    worse = worse_than_bicubic(validation)
    if not worse:
        return ""
    step = f" at step {validation['step']}" if "step" in validation else ""
    return (f"this model's own validation{step} was worse than bicubic upsampling ({'; '.join(worse)}): its "
            f"outputs are likely worse than a plain resize")


def require_pipeline(command: str) -> None:
    """Refuse ``command`` with the install line when the pipeline extra (Prefect, Ray, MLflow) is missing: the library
    and single-machine restoration work without it."""
    missing = [name for name in PIPELINE_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(f"`{command}` runs on the pipeline ({', '.join(missing)} not installed): "
                                   "pip install 'dfd[pipeline]'")
