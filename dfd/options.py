"""Options and checks shared by dfd's commands: one name and one help text per concept."""
from __future__ import annotations

import dataclasses
import importlib.util

import click

PIPELINE_MODULES = ("prefect", "ray", "mlflow")

# The default model's name, as dfdcore.models.bundled.DEFAULT_MODEL says (written out here so that help texts need
# no torch import; tests/test_bundled.py checks they agree).
BUNDLED_DEFAULT = "dfd-pd-128"
BUNDLED_ABOUT = (f"{BUNDLED_DEFAULT}, trained by dfd only on public-domain official portraits of members of the US "
                 "Congress (128-px faces; docs/model-card.md)")

WEIGHTS_HELP = f"""\
Without model options dfd restores with its bundled model, {BUNDLED_ABOUT}.
Other generator weights come with their component dictionaries, both given; nothing is downloaded:
  * the official DFDNet release (CC BY-NC-SA 4.0, non-commercial use only):
      --weights checkpoints/facefh_dictionary/latest_net_G.pth --dictionary DictionaryCenter512/
  * a BasicSR-converted checkpoint (.pth with 'params') and dictionary (.pth), or dfd's own
      model.safetensors + dictionary.safetensors
  * or --random-weights to try the pipeline with a random, labelled network (the output is not a restoration)."""


DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
# dfdcore.restoration.precision.PRECISIONS, written out so that help texts need no torch import
# (tests/test_precision.py checks they agree).
PRECISIONS = ("fp32", "fp16", "bf16")
# dfdcore.face.colour.COLOR_MATCHES and dfdcore.face.blend.MASKS, and RestoreOptions' defaults of both, written out
# for the same reason (tests/test_blend.py checks they agree).
COLOR_MATCHES = ("none", "mean-std", "low-freq")
MASKS = ("square", "landmarks")
DEFAULT_COLOR_MATCH, DEFAULT_MASK = "mean-std", "landmarks"
PASTE_MODES, DEFAULT_PASTE = ("correction", "face"), "correction"  # RestoreOptions.paste (tests/test_blend.py checks)


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def check_spec(spec) -> None:
    """Refuse model options that cannot work, with a message saying what to give instead (naming no model is fine:
    that is the bundled one)."""
    if spec.registered and spec.name == "dfdnet":
        if spec.random_weights or not (spec.weights and spec.dictionary):  # resolve_model fetches them first
            raise click.UsageError(f"--registered {spec.registered}: the registered model's files are not fetched "
                                   "(resolve_model) or --random-weights was given beside it")
        return
    if spec.name == "dfdnet":
        if spec.random_weights and spec.weights:
            raise click.UsageError("--random-weights and --weights exclude each other")
        if not spec.random_weights and bool(spec.weights) != bool(spec.dictionary):
            given, missing = ("--weights", "--dictionary") if spec.weights else ("--dictionary", "--weights")
            raise click.UsageError(f"{given} without {missing}: a generator and the dictionary it was trained with "
                                   f"go together (give neither for the bundled model).\n" + WEIGHTS_HELP)
    if spec.bundled:  # its files checked here, before any worker starts (each process checks them once)
        from dfdcore.models.bundled import BundledModelError, bundled_model

        try:
            bundled_model(spec.bundled)
        except BundledModelError as exc:
            raise click.ClickException(str(exc)) from exc


def resolve_model(spec, command: str):
    """``spec`` with its registered model (``--registered NAME/VERSION`` or ``NAME@ALIAS``) fetched from MLflow's
    registry and pinned to a version; naming no model, the bundled one (``ModelSpec.resolved``); else unchanged.
    An unknown model, version or alias is a message."""
    if not spec.registered or spec.name != "dfdnet":
        return spec.resolved()
    given = [flag for flag, value in (("--weights", spec.weights), ("--dictionary", spec.dictionary),
                                      ("--random-weights", spec.random_weights)) if value]
    if given:
        raise click.UsageError(f"--registered brings its own files: leave out {', '.join(given)}")
    require_pipeline(f"{command} --registered")
    from dfd.flows.registry import RegistryError, resolve_registered, use_registry

    use_registry()
    try:
        return resolve_registered(spec)[0]
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc


def build_model(spec):
    """Build the model of a ModelSpec, turning bad weights or dictionaries, or a precision the device cannot run, into
    a message, not a traceback."""
    import dfdcore
    from dfdcore.restoration.precision import PrecisionError

    check_spec(spec)
    try:
        return spec.build()
    except (dfdcore.CheckpointError, dfdcore.DictionaryError, PrecisionError) as exc:
        raise click.ClickException(str(exc)) from exc


def _apply(func, options):
    for option in reversed(options):
        func = option(func)
    return func


def model_options(func):
    """--weights, --dictionary, --random-weights (and its --k, --seed, --face-size, --ngf), --device, --dict-dtype,
    --fidelity, --precision, --registered, --bundled: the fields of a ``ModelSpec`` but its name (``model_spec``
    builds it); none of --weights, --dictionary, --random-weights, --registered, --bundled: the bundled default
    model."""
    return _apply(func, [
        click.option("--weights", type=click.Path(exists=False, dir_okay=False),
                     help="Generator checkpoint: official latest_net_G.pth, BasicSR .pth or dfd .safetensors (with "
                          f"its --dictionary). Default: the bundled model, {BUNDLED_ABOUT}."),
        click.option("--dictionary", type=click.Path(exists=False),
                     help="Component dictionaries of --weights: official DictionaryCenter512/ folder or dfd "
                          ".safetensors."),
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
        click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
                     help="Arithmetic of the generator: fp32, or bf16 / fp16 under autocast, on CUDA and on the CPU "
                          "(dictionary matching and paste-back stay float32; a 16-bit precision is recorded in the "
                          "outputs and the manifest). On a CPU, bf16 paid only at the official size (1.4-1.8x on a "
                          "bfloat16-capable Xeon; none for dfd-pd-128) and fp16 was slower than fp32: "
                          "bench/RESULTS.md, 'Half precision'."),
        click.option("--registered", callback=_registered_ref,
                     help="A model of MLflow's registry instead of --weights/--dictionary: NAME/VERSION "
                          "(dfd-generator/3) or NAME@ALIAS (dfd-generator@champion: the version it points to now)."),
        click.option("--bundled", metavar="NAME",
                     help=f"A model shipped with dfd, by name; its files are checked against their recorded sha256. "
                          f"Default when no other model is named: {BUNDLED_DEFAULT}."),
    ])


def _registered_ref(ctx, param, value):
    from dfdcore.restoration.restorer import registered_ref

    if value is not None:
        try:
            registered_ref(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    return value


def restore_options(func):
    """The fields of a ``RestoreOptions``: what changes a restored photograph (``restore_options_of`` builds it)."""
    return _apply(func, [
        click.option("-s", "--upscale", default=2, show_default=True, type=click.IntRange(1, 8),
                     help="Scale of the whole output image (with --aligned: of the crop's size)."),
        click.option("--only-largest", is_flag=True, help="Restore only the largest face of each image."),
        click.option("--only-center", is_flag=True, help="Restore only the face closest to the image centre."),
        click.option("--min-face", default=0, show_default=True, type=click.IntRange(0),
                     help="Ignore faces whose detection box is smaller (px)."),
        click.option("--upsample", default=1, show_default=True, type=click.IntRange(0, 3),
                     help="Detector upsampling steps (1 finds faces down to ~40 px; 0 is faster)."),
        click.option("--detector", type=click.Choice(["hog", "cnn", "yunet", "yunet+hog"]),
                     default=_default_detector, show_default=True,
                     help="dlib HOG (fast), dlib MMOD CNN (finds more profile faces; ~100x slower on a CPU), OpenCV "
                          "YuNet (finds faces down to ~10 px) or yunet+hog (YuNet finds, HOG places the box where it "
                          "sees the face too). Default: RestoreOptions.detector (see bench/RESULTS.md)."),
        click.option("--min-score", type=float, default=None,
                     help="Detection score threshold. Default: the detector's own — hog 0.2 (SVM margin), cnn 0.2 "
                          "(confidence), yunet and yunet+hog 0.6 (YuNet's probability)."),
        click.option("--aligned", is_flag=True,
                     help="Inputs are aligned face crops (FFHQ-like, any size): each is resized to the model's face "
                          "size and restored whole (no detection box cut out, no paste-back), then written at its "
                          "own size × --upscale."),
        click.option("--draw-box", is_flag=True,
                     help="Outline each restored face in the output: detection box green, aligned square magenta."),
        click.option("--color-match", type=click.Choice(COLOR_MATCHES), default=DEFAULT_COLOR_MATCH,
                     show_default=True,
                     help="Match each restored face's colour to its input face's, over the skin (no eyes, no mouth), "
                          "in CIELAB, before paste-back: none, mean-std (per-channel mean and deviation), low-freq "
                          "(the input's low frequencies; keeps the model's detail). bench/RESULTS.md, 'Seams and "
                          "colour shift (issue 27)'."),
        click.option("--mask", type=click.Choice(MASKS), default=DEFAULT_MASK, show_default=True,
                     help="Paste-back weight: square (the aligned square, feathered) or landmarks (the face's outline "
                          "from its 68 landmarks, jaw to lower forehead, grown and feathered; no square edge)."),
        click.option("--paste", type=click.Choice(PASTE_MODES), default=DEFAULT_PASTE, show_default=True,
                     help="correction: add what the model changed (restored face − its input crop) to the photo, so "
                          "a face larger than the model's keeps its finer detail; face: replace the photo under "
                          "the mask with the restored face."),
        click.option("--strength", default="auto", show_default=True, callback=_strength,
                     help="How much of the model's change each face keeps: a number from 0 (the photo left as it "
                          "is) to 1 (all of it), or auto: less where the face the model sees is already sharp, so a "
                          "clean or mildly degraded face is not made worse (bench/RESULTS.md, 'A strength gate for "
                          "pasted faces'). With --aligned, auto keeps all of it."),
        click.option("--bg-upsampler", default="bicubic", show_default=True,
                     help="Upscaling of the background (outside the faces): bicubic, lanczos, or the path of a "
                          "PyTorch SR model file (Real-ESRGAN/ESRGAN state dict or TorchScript)."),
        click.option("--bg-tile", default=256, show_default=True, type=click.IntRange(48),
                     help="Input pixels per tile of a --bg-upsampler model (bounds its memory)."),
        click.option("--ext", type=click.Choice(["auto", "png", "jpg"]), default="auto", show_default=True,
                     help="Output format; auto keeps JPEG for 8-bit opaque JPEG inputs and writes PNG otherwise."),
        click.option("--suffix", default="", help="Appended to each output file name (before the extension)."),
    ])


def _strength(ctx, param, value: str) -> float | str:
    from dfdcore.face.strength import check_strength

    try:
        return check_strength(value, "--strength")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _default_detector() -> str:
    from dfdcore.restoration.restorer import DEFAULT_DETECTOR

    return DEFAULT_DETECTOR


RUN_OPTIONS = {
    "batch_size": click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1),
                               help="Faces per forward pass, across images."),
    "workers": click.option("--workers", default=0, show_default=True, type=click.IntRange(0),
                            help="Ray workers, each with its own model (0 = this process). RAY_ADDRESS selects a "
                                 "cluster."),
    "gpus_per_worker": click.option("--gpus-per-worker", default=0.0, show_default=True, type=click.FloatRange(0, 1),
                                    help="GPUs Ray gives each of --workers (0.5: two workers share a GPU); each "
                                         "worker runs on the GPU Ray assigns it. 0: the workers run on the CPU."),
    "chunk": click.option("--chunk", default=8, show_default=True, type=click.IntRange(1),
                          help="Images handed to a Ray worker at a time (with --workers): a worker that dies "
                               "redoes at most this many."),
    "force": click.option("--force", is_flag=True,
                          help="Redo images already in the manifest with the same content and config."),
    "save_faces": click.option("--save-faces", is_flag=True, help="Also write cropped_faces/ and restored_faces/."),
    "cmp": click.option("--cmp", is_flag=True, help="Also write cmp/: input | output side by side."),
    "max_pixels": click.option("--max-pixels", type=click.IntRange(1), default=None,
                               help="Refuse larger images (width × height) before decoding them. Default: what half "
                                    "of this machine's memory holds at this --upscale (about 45 + 48·upscale² bytes "
                                    "per pixel; see the summary), shared among --workers."),
    "max_bytes": click.option("--max-bytes", default=512 * 2**20, show_default=True, type=click.IntRange(1),
                              help="Refuse larger input files."),
    "segment_seconds": click.option("--segment-seconds", default=2.0, show_default=True,
                                    type=click.FloatRange(0, min_open=True),
                                    help="Videos: seconds of frames restored and written together; an interrupted "
                                         "run resumes from the last finished segment."),
}


def run_options(*names: str):
    """Decorator adding the ``RunOptions`` fields ``names`` as options (all of them without names); the fields a
    command leaves out are given to ``run_options_of`` instead."""
    unknown = set(names) - set(RUN_OPTIONS)
    if unknown:
        raise ValueError(f"no run options {sorted(unknown)}; there are {list(RUN_OPTIONS)}")
    return lambda func: _apply(func, [RUN_OPTIONS[name] for name in names or RUN_OPTIONS])


def _take(cls, kwargs: dict, **fixed):
    """A ``cls`` dataclass from the click ``kwargs`` named like its fields (taken out of ``kwargs``) and ``fixed``."""
    values = {f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls) if f.name in kwargs}
    return cls(**values, **fixed)


def model_spec(kwargs: dict, name: str = "dfdnet"):
    """The ``ModelSpec`` of ``model_options``' values in ``kwargs`` (taken out); options that exclude each other
    (--bundled beside --weights, ...) are a usage error."""
    from dfdcore.restoration.restorer import ModelSpec

    try:
        return _take(ModelSpec, kwargs, name=name)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def spec_label(spec) -> str:
    """How a command names the model of a (resolved) ``spec`` in its summary: identity, random, registered
    NAME/VERSION, NAME (bundled), or the weights' path; with ", bf16" or ", fp16" when it runs in 16 bits."""
    if spec.name == "identity":
        return "identity"
    if spec.random_weights:
        return "RANDOM WEIGHTS (not a restoration)"
    if spec.registered:
        label = f"registered {spec.registered}"
    else:
        label = f"{spec.bundled} (bundled)" if spec.bundled else str(spec.weights)
    return label if spec.precision == "fp32" else f"{label}, {spec.precision}"


def restore_options_of(kwargs: dict):
    """The ``RestoreOptions`` of ``restore_options``' values in ``kwargs`` (taken out)."""
    from dfdcore.restoration.restorer import RestoreOptions

    return _take(RestoreOptions, kwargs)


def run_options_of(kwargs: dict, **fixed):
    """The ``RunOptions`` of ``run_options``' values in ``kwargs`` (taken out) and ``fixed`` (those a command sets
    itself, e.g. ``dfd sample`` always writing comparisons)."""
    from dfdcore.restoration.bulk import RunOptions

    try:
        return _take(RunOptions, kwargs, **fixed)
    except ValueError as exc:  # options that exclude each other (--gpus-per-worker without --workers)
        raise click.UsageError(str(exc)) from exc


def use_all_cores() -> None:
    """Torch threads for every CPU this process may use (its affinity and cgroup quota, not the machine's count)."""
    import torch

    from dfdcore.runtime import available_cpus

    torch.set_num_threads(available_cpus())


def spec_warning(spec) -> str:
    """``worse_than_bicubic_warning`` of a (resolved) ``spec``: a bundled model's validation is its model.json's."""
    if not spec.bundled:
        return worse_than_bicubic_warning(spec.weights)
    from dfdcore.models.bundled import BundledModelError, bundled_model

    try:
        return worse_than_bicubic_warning(None, bundled_model(spec.bundled, verify=False).validation)
    except BundledModelError as exc:
        raise click.ClickException(str(exc)) from exc


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


def echo_model_warning(weights, spec, model: dict, registered: bool) -> None:
    """An evaluation's warning line: a registered version whose validation was worse than bicubic, else the
    model's own (random weights, a demo model)."""
    warning = worse_than_bicubic_warning(weights, _registered_validation(model["registered_model"])) \
        if registered else spec_warning(spec)
    if warning:
        click.echo(f"  warning    {warning}")


def _registered_validation(registered: str) -> dict:
    """The validation figures a registered version was tagged with (``val_*``, ``bicubic_*``, ``step``)."""
    from dfd.flows.registry import find_version

    tags = find_version(registered).tags
    figures = {}
    for key, value in tags.items():
        if key.startswith(("val_", "bicubic_")) or key == "step":
            try:
                figures[key] = float(value) if key != "step" else int(float(value))
            except ValueError:
                continue
    return figures
