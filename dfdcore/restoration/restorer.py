"""Whole-photograph restoration: detect and align every face, restore faces in batches across images, paste them
back into the (optionally upscaled) photograph.

``Restorer`` works on decoded images in memory; ``restore_sources`` adds storage (any fsspec URL), outputs written
atomically, a manifest with one row per input and resumable reruns. Neither imports an orchestrator: the CLI, the
Prefect flows and Ray actors all call these.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import PurePosixPath
from typing import Literal

import numpy as np
import torch
from torch import nn

from dfdcore.face import AlignedFace, align_faces
from dfdcore.face.detect import DETECTORS
from dfdcore.face.blend import DEFAULT_MASK, MASKS, lost_detail, prepare_faces
from dfdcore.face.colour import COLOR_MATCHES, DEFAULT_COLOR_MATCH
from dfdcore.face.paste import paste_faces, upscale_image
from dfdcore.face.pipeline import align_crop, resize_face
from dfdcore.face.strength import AUTO, check_strength, faces_to_paste
from dfdcore.io.hashing import sha256_json
from dfdcore.io.images import DecodedImage, ImageDecodeError, decode_image, encode_image
from dfdcore.io.pixels import images_to_tensor, tensor_to_images
from dfdcore.restoration.background import TILE_PAD, load_background_upsampler, upsampler_identity
from dfdcore.restoration.outline import BOX_COLOUR, SQUARE_COLOUR, draw_outlines, face_outline, line_width  # noqa: F401
from dfdcore.restoration.precision import PRECISIONS, forward_at, with_precision


class IdentityModel(nn.Module):
    """Returns the aligned faces unchanged: checks detection, alignment and paste-back geometry on their own."""

    def __init__(self, face_size: int = 512) -> None:
        super().__init__()
        self.face_size = face_size
        self.provenance = {"model": "identity", "random_weights": False}

    def forward(self, faces: torch.Tensor, part_boxes: torch.Tensor) -> torch.Tensor:
        return faces


def resolve_device(device: str) -> str:
    """"auto" → cuda when available, then mps, then cpu; anything else as given."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu"


@dataclass(frozen=True)
class ModelSpec:
    """How to build the face model — in this process or inside a worker (paths travel, weights do not)."""

    name: Literal["dfdnet", "identity"] = "dfdnet"  # identity: faces pasted back unchanged
    weights: str | None = None     # generator checkpoint (official, BasicSR or dfd)
    dictionary: str | None = None  # component dictionaries (official folder or dfd .safetensors)
    random_weights: bool = False   # a seeded random network (tests, trying dfd; outputs are labelled)
    k: int = 512                   # entries per random dictionary
    seed: int = 0                  # seed of the random network
    face_size: int = 512           # face size of a random network
    ngf: int = 64                  # channel width of a random network
    device: str = "auto"           # auto | cpu | cuda | cuda:1 | mps
    dict_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # dictionaries' storage type on the device
    fidelity: float = 1.0          # weight of the dictionary contribution: 1 = official DFDNet, 0 = none
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # generator arithmetic (16-bit: autocast, precision.py)
    # A registered model, NAME/VERSION or NAME@ALIAS: the orchestration layer (dfd.flows.registry) fetches its files
    # into weights + dictionary and pins it to NAME/VERSION before anything is built; outputs record that version.
    registered: str | None = None
    # A model shipped with dfd, by name (dfdcore.models.bundled): its files are found and checked where it is built,
    # so the name travels to workers, not this install's paths. A dfdnet spec naming no model means the default.
    bundled: str | None = None

    def __post_init__(self) -> None:
        _check_choice("ModelSpec.name", self.name, ("dfdnet", "identity"))
        _check_choice("ModelSpec.dict_dtype", self.dict_dtype, ("float32", "float16", "bfloat16"))
        _check_choice("ModelSpec.precision", self.precision, PRECISIONS)
        if not 0.0 <= self.fidelity <= 1.0:
            raise ValueError(f"ModelSpec.fidelity must be in [0, 1], got {self.fidelity}")
        if self.registered is not None:
            registered_ref(self.registered)  # refuse a malformed reference before any work
        if self.bundled is not None:
            given = [f for f in ("weights", "dictionary", "random_weights", "registered") if getattr(self, f)]
            if given or self.name != "dfdnet":
                raise ValueError(f"ModelSpec.bundled={self.bundled!r} brings its own files: leave out "
                                 f"{', '.join(given) or f'name={self.name!r}'}")

    def resolved(self) -> ModelSpec:
        """The spec as it is built: a dfdnet spec naming no model (no weights, dictionary, random weights, registered
        or bundled model) → the same with ``bundled`` = the default bundled model; any other spec unchanged."""
        from dfdcore.models.bundled import DEFAULT_MODEL

        named = self.weights or self.dictionary or self.random_weights or self.registered or self.bundled
        return self if named or self.name != "dfdnet" else replace(self, bundled=DEFAULT_MODEL)

    def build(self) -> nn.Module:
        """The model on its device, run at ``precision``; a spec naming no model builds the bundled default
        (``resolved``). Raises CheckpointError (BundledModelError too) / DictionaryError for bad weights or
        dictionaries, PrecisionError for a precision the device cannot autocast to."""
        return with_precision(self._network(), self.precision)

    def _network(self) -> nn.Module:
        """``build`` but the precision: the network of this spec on its device."""
        from dfdcore.api import load_generator, random_generator
        from dfdcore.models.bundled import load_bundled

        if self.name == "identity":
            return IdentityModel(self.face_size)
        device, dtype = resolve_device(self.device), getattr(torch, self.dict_dtype)
        if self.random_weights:
            return random_generator(self.dictionary, k=self.k, seed=self.seed, face_size=self.face_size,
                                    ngf=self.ngf, device=device, dict_dtype=dtype, fidelity=self.fidelity)
        if self.registered and not self.weights:
            raise ValueError(f"ModelSpec.registered={self.registered!r} has no files yet: resolve it first "
                             f"(dfd.flows.registry.resolve_registered fetches its weights and dictionary)")
        if bool(self.weights) != bool(self.dictionary):
            raise ValueError(f"ModelSpec: weights and dictionary go together (a generator and the dictionary it was "
                             f"trained with), got weights={self.weights!r}, dictionary={self.dictionary!r}")
        bundled = self.resolved().bundled
        if bundled:  # BundledModelError (a CheckpointError) for a missing or altered file
            return load_bundled(bundled, device=device, dict_dtype=dtype, fidelity=self.fidelity)
        model = load_generator(self.weights, self.dictionary, device=device, dict_dtype=dtype,
                               fidelity=self.fidelity)
        if self.registered:
            model.provenance["registered"] = self.registered  # into model_id, the outputs' metadata, the manifest
        return model


def registered_ref(text: str) -> tuple[str, str, str]:
    """A registered-model reference → (name, "version" or "alias", the version or alias).

    ``NAME/VERSION`` (a number), ``NAME@ALIAS``, each optionally prefixed ``models:/`` as MLflow writes them."""
    ref = text.removeprefix("models:/")
    if "@" in ref:
        name, _, alias = ref.rpartition("@")
        if name and alias and "/" not in alias:
            return name, "alias", alias
    elif "/" in ref:
        name, _, version = ref.rpartition("/")
        if name and version.isdigit():
            return name, "version", version
    raise ValueError(f"a registered model is NAME/VERSION (e.g. dfd-generator/3) or NAME@ALIAS (e.g. "
                     f"dfd-generator@champion), got {text!r}")


def _check_choice(what: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")


def model_face_size(model: nn.Module) -> int:
    return model.config.face_size if hasattr(model, "config") else model.face_size


def model_identity(model: nn.Module) -> dict:
    """What produced an output: weights/dictionary paths, random or not; stable, JSON-serialisable."""
    provenance = dict(getattr(model, "provenance", {}))
    provenance.setdefault("model", type(model).__name__)
    if hasattr(model, "fidelity"):
        provenance["fidelity"] = model.fidelity
    return json.loads(json.dumps(provenance, default=str, sort_keys=True))


def model_label(identity: dict) -> str:
    """What a picture made by this model should be captioned: never plain "DFDNet" for a random or demo network."""
    if identity.get("random_weights"):
        return "RANDOM WEIGHTS - not a restoration"
    if identity.get("model") == "identity":
        return "identity (faces pasted back unchanged)"
    if identity.get("bundled"):
        return f"{identity['bundled']} (bundled)"
    if identity.get("trained_by") == "dfd" or "step" in identity:
        if identity.get("random_vgg"):
            return "restored: demo model (random VGG" + (f", step {identity['step']})" if "step" in identity else ")")
        return "restored: dfd-trained DFDNet" + (f", step {identity['step']}" if "step" in identity else "")
    return "DFDNet"


# YuNet finds the small faces HOG misses; HOG's boxes where it sees a face keep dlib's landmarks as good as before
# (bench/RESULTS.md, "Face detectors": no photo with fewer faces than HOG, precision 1.0, HOG's error on its faces).
DEFAULT_DETECTOR = "yunet+hog"
# How a restored face goes back: "correction" adds what the model changed (restored − its input crop) to the
# photo, keeping detail finer than the model's face size; "face" replaces the photo under the mask (as before).
PASTE_MODES = ("correction", "face")


@dataclass(frozen=True)
class RestoreOptions:
    """Everything that changes the output for a given input (hashed into ``config_hash``)."""

    upscale: int = 2            # scale of the whole output image (1-8), an aligned crop's too
    only_largest: bool = False
    only_center: bool = False
    min_face: int = 0           # minimum detection box side in input pixels
    upsample: int = 1           # detector upsampling steps (0-3; 1 finds faces down to ~40 px; yunet ignores it)
    min_score: float | None = None  # detection score threshold; None: the detector's own (detect.DEFAULT_MIN_SCORE)
    detector: Literal["hog", "cnn", "yunet", "yunet+hog"] = DEFAULT_DETECTOR  # detect.DETECTORS
    aligned: bool = False       # inputs are aligned face crops: each is resized to the face size, restored whole
    draw_box: bool = False      # outline each restored face (its detection box and aligned square) in the output
    color_match: Literal["none", "mean-std", "low-freq"] = DEFAULT_COLOR_MATCH  # restored → input colour (colour.py)
    mask: Literal["square", "landmarks"] = DEFAULT_MASK  # paste-back weight: the square alone or the face's outline
    paste: Literal["correction", "face"] = "correction"  # add restored − input crop to the photo, or replace it
    strength: float | str = AUTO  # fraction of the model's change kept per face; auto: less where already sharp
    bg_upsampler: str = "bicubic"  # the background's upscaling: bicubic | lanczos | path of an SR model file
    bg_tile: int = 256          # input pixels per tile of an SR model (bounds its memory)
    ext: Literal["auto", "png", "jpg"] = "auto"  # auto: keep JPEG for 8-bit opaque JPEG inputs, else PNG
    suffix: str = ""            # appended to each output file name (before the extension)

    def __post_init__(self) -> None:
        _check_choice("RestoreOptions.detector", self.detector, DETECTORS)
        _check_choice("RestoreOptions.ext", self.ext, ("auto", "png", "jpg"))
        _check_choice("RestoreOptions.color_match", self.color_match, COLOR_MATCHES)
        _check_choice("RestoreOptions.mask", self.mask, MASKS)
        _check_choice("RestoreOptions.paste", self.paste, PASTE_MODES)
        # "0.5" → 0.5, "AUTO" → "auto" (frozen: set once, here)
        object.__setattr__(self, "strength", check_strength(self.strength, "RestoreOptions.strength"))
        if not self.bg_upsampler:
            raise ValueError("RestoreOptions.bg_upsampler must be 'bicubic', 'lanczos' or a model file's path, got ''")
        for name, low, high in (("upscale", 1, 8), ("upsample", 0, 3), ("min_face", 0, None),
                                ("bg_tile", 2 * TILE_PAD, None)):
            value = getattr(self, name)
            if value < low or (high is not None and value > high):
                raise ValueError(f"RestoreOptions.{name} must be in [{low}, {high or '∞'}], got {value}")
        if "/" in self.suffix:
            raise ValueError(f"RestoreOptions.suffix goes into file names: no '/', got {self.suffix!r}")

    def config_hash(self, model_id: dict) -> str:
        """Hash of the options, the model and the background upsampler (a model file's content: a retrained file at
        the same path redoes the outputs)."""
        background = upsampler_identity(self.bg_upsampler)
        return sha256_json({"options": asdict(self), "model": model_id, "background": background})


@dataclass
class ImageResult:
    """One photograph restored: the output pixels and what was found."""

    restored: np.ndarray                 # (H·s, W·s, 3) float32 in [0, 1]
    alpha: np.ndarray | None             # (H·s, W·s) float32 or None
    faces: list[AlignedFace]
    restored_faces: list[np.ndarray]     # (S, S, 3) uint8 each
    seconds: dict[str, float] = field(default_factory=dict)
    note: str | None = None              # what the manifest row should say (an aligned crop's landmark source)
    strengths: list[float] = field(default_factory=list)  # the fraction of the model's change kept, per face


def select_faces(faces: list[AlignedFace], shape: tuple[int, int], options: RestoreOptions) -> list[AlignedFace]:
    """Apply --min-face, --only-center and --only-largest; keep a stable order (largest first)."""
    faces = [f for f in faces if min(f.detection.box[2] - f.detection.box[0],
                                     f.detection.box[3] - f.detection.box[1]) >= options.min_face]
    if options.only_center and faces:
        cy, cx = shape[0] / 2, shape[1] / 2
        faces = [min(faces, key=lambda f: ((f.detection.box[0] + f.detection.box[2]) / 2 - cx) ** 2
                     + ((f.detection.box[1] + f.detection.box[3]) / 2 - cy) ** 2)]
    if options.only_largest and faces:
        faces = faces[:1]
    return faces


class Restorer:
    """Batches the faces of many photographs through a face model and pastes them back.

    ``model(faces (B, 3, S, S) in [-1, 1], part_boxes (B, 4, 4)) → (B, 3, S, S)``: a DFDNet generator or
    ``IdentityModel``.
    """

    def __init__(self, model: nn.Module, options: RestoreOptions = RestoreOptions(), batch_size: int = 4,
                 device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.options = options
        self.batch_size = max(1, batch_size)
        self.device = torch.device(device)
        self.face_size = model_face_size(model)
        # loaded once here (SRModelError for a bad file); the module caches a model by path, size, mtime and device
        self.upscale_background = load_background_upsampler(options.bg_upsampler, str(self.device))

    @classmethod
    def from_spec(cls, spec: ModelSpec, options: RestoreOptions, batch_size: int = 4) -> Restorer:
        """Build ``spec``'s model on its device (CheckpointError / DictionaryError for bad files) and wrap it."""
        return cls(spec.build(), options, batch_size=batch_size, device=resolve_device(spec.device))

    @torch.inference_mode()
    def restore_faces(self, faces: Sequence[AlignedFace]) -> list[np.ndarray]:
        """Aligned faces → restored (S, S, 3) uint8 faces, ``batch_size`` at a time."""
        restored: list[np.ndarray] = []
        for start in range(0, len(faces), self.batch_size):
            chunk = faces[start:start + self.batch_size]
            batch = images_to_tensor([f.image for f in chunk]).to(self.device)
            boxes = torch.from_numpy(np.stack([f.boxes for f in chunk]))
            restored.extend(tensor_to_images(forward_at(self.model, batch, boxes)))  # float32 out
        return restored

    def find_faces(self, image: DecodedImage) -> list[AlignedFace]:
        """The faces to restore: those detected in a photo, selected by the options; an aligned crop is one face."""
        if self.options.aligned:
            return [align_crop(image.rgb8, self.face_size, upsample=self.options.upsample,
                               min_score=self.options.min_score, detector=self.options.detector)]
        found = align_faces(image.rgb8, face_size=self.face_size, upsample=self.options.upsample,
                            min_score=self.options.min_score, detector=self.options.detector)
        return select_faces(found, image.rgb8.shape[:2], self.options)

    def compose(self, image: DecodedImage, faces: list[AlignedFace], restored: list[np.ndarray]) -> ImageResult:
        """Paste restored faces, colour-matched to their inputs, into the upscaled photograph under the ``mask``
        (full precision background by ``bg_upsampler``, alpha bicubic); an aligned crop's restored face,
        colour-matched too, is the whole output, resized to the crop's size × upscale."""
        scale, note, options = self.options.upscale, None, self.options
        height, width = image.rgb.shape[0] * scale, image.rgb.shape[1] * scale
        strengths, pasting, kept = faces_to_paste(faces, restored, options.strength, options.aligned)
        pairs, shapes = prepare_faces(pasting, kept, scale, (height, width), options.mask, options.color_match)
        if options.aligned:
            pasted = resize_face(pairs[0][0], width, height)
            note = f"aligned input; landmarks: {faces[0].landmarks_source}"
        else:
            background = self.upscale_background(image.rgb, scale, tile=options.bg_tile)
            pasted = paste_faces(background, pairs, shapes=shapes) if pasting else background
            if pasting and options.paste == "correction":  # keep the photo's detail finer than the model's faces
                bicubic = background if options.bg_upsampler == "bicubic" else None
                pasted += lost_detail(image.rgb, pasting, pairs, shapes, scale, bicubic)
        alpha = None if image.alpha is None else upscale_image(image.alpha, scale).astype(np.float32)
        pasted = np.clip(pasted, 0.0, 1.0)
        if self.options.draw_box:
            draw_outlines(pasted, alpha, [face_outline(f, scale) for f in faces])
        return ImageResult(pasted, alpha, faces, restored, note=note, strengths=strengths)

    def restore_images(self, images: Iterable[tuple[object, DecodedImage]]
                       ) -> Iterator[tuple[object, ImageResult | Exception]]:
        """Restore many photographs, batching faces across them; yields (key, result or the error) in input
        order. A failure in one photograph is yielded as its exception and never stops the others."""
        pending: list[tuple[object, DecodedImage, list[AlignedFace], float]] = []
        queued = 0
        for key, image in images:
            started = time.perf_counter()
            try:
                faces = self.find_faces(image)
            except Exception as exc:  # noqa: BLE001 - reported per image
                yield key, exc
                continue
            pending.append((key, image, faces, time.perf_counter() - started))
            queued += len(faces)
            if queued >= self.batch_size:
                yield from self._flush(pending)
                pending, queued = [], 0
        yield from self._flush(pending)

    def _flush(self, pending) -> Iterator[tuple[object, ImageResult | Exception]]:
        started = time.perf_counter()
        all_faces = [f for _, _, faces, _ in pending for f in faces]
        try:
            restored = self.restore_faces(all_faces)
        except Exception as exc:  # noqa: BLE001 - a failed batch fails its images, not the run
            for key, *_ in pending:
                yield key, exc
            return
        per_face = (time.perf_counter() - started) / max(1, len(all_faces))
        cursor = 0
        for key, image, faces, detect_seconds in pending:
            mine, cursor = restored[cursor:cursor + len(faces)], cursor + len(faces)
            t0 = time.perf_counter()
            try:
                result = self.compose(image, faces, mine)
            except Exception as exc:  # noqa: BLE001
                yield key, exc
                continue
            result.seconds = {"detect": detect_seconds, "restore": per_face * len(faces),
                              "paste": time.perf_counter() - t0}
            yield key, result


def output_name(stem: str, image: DecodedImage, options: RestoreOptions) -> str:
    """Relative output path: ``stem`` (the input's relative path without extension, see ``plan``) with the
    suffix and the chosen extension."""
    if options.ext == "auto":
        ext = ".jpg" if image.format == "JPEG" and image.alpha is None and image.bit_depth == 8 else ".png"
    else:
        ext = "." + options.ext
    return f"{stem}{options.suffix}{ext}"


def encode_result(result: ImageResult, image: DecodedImage, name: str, text: dict[str, str]) -> bytes:
    ext = PurePosixPath(name).suffix.lstrip(".")
    return encode_image(result.restored, alpha=result.alpha, grey=image.grey, bit_depth=image.bit_depth,
                        ext=ext, text=text)


def decode_or_error(data: bytes, name: str, max_pixels: int) -> DecodedImage | ImageDecodeError:
    try:
        return decode_image(data, name=name, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        return exc
