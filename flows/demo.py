"""demo: the whole life cycle on the bundled public-domain portraits, with the embedded defaults.

split the portraits by person → build_dictionary (training people only) → train (a small residual network, minutes
on a CPU) → evaluate against bicubic on the held-out people → restore degraded copies of the held-out photos with
the demo model and with dfd's bundled model, and show them beside their originals. The portraits
(dfdcore/assets/portraits, ATTRIBUTION.md there) are people the bundled model never saw. ImageNet VGG19 weights are
used when given; otherwise the VGG is random and every output says so.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE

from dfd.flows.steps import merged, run_step
from dfdcore.io.hashing import sha256_json, sha256_path
from dfdcore.io.storage import join_uri


@dataclass(frozen=True)
class DemoConfig:
    """The demo's small network and its training recipe (chosen by measurement: bench/RESULTS.md, "Training
    recipe" and "The demo on the bundled portraits"): residual learning from a zero-initialised head, a per-image
    log-MSE pixel loss and the identity loss from the start (pixel-only, the demo model sharpened the faces but moved
    them away from their people: identity distance +0.022 against bicubic; the perceptual loss of a random VGG and
    the adversarial term did not help: ``warmup_fraction`` 1 keeps the adversarial term off), the random VGG trained
    too, warped/recoloured faces, an EMA copy, cosine decay, and the best validated generator kept."""

    face_size: int = 128
    ngf: int = 8
    d_dim: int = 8
    k: int = 16
    steps: int = 1000
    batch_size: int = 8
    workers: int = 2                      # 1 torch thread each: robust when the machine is busy
    degradation: str = "moderate"         # the reference's steps, downsampling ×2–4 (see dfdcore.data.degrade)
    lr: float = 1e-3
    pixel_weight: float = 1.0
    pixel_criterion: str = "psnr"         # per-image log-MSE: every face counts in dB
    perceptual_weight: float = 0.0
    adversarial_weight: float = 0.0
    warmup_fraction: float = 1.0          # share of the steps without the adversarial term
    identity_weight: float = 4.0          # dlib descriptors, restored vs original: at 0, 1, 2 identity drifts
    ema_decay: float = 0.99
    train_vgg: bool = True                # the VGG is random here: nothing to keep frozen
    augment: float = 0.5                  # some 90 training faces: warp and recolour them a little
    grad_clip: float = 1.0
    val_every: int = 250
    val_pairs: int = 16
    test_fraction: float = 0.3            # of the people: every photo of a held-out person is held out
    people: int | None = None             # use only this many of the portraits' people (a quicker look)
    test_pairs_per_face: int = 4          # each held-out face is scored under several degradations
    photo_factor: int = 2                 # degraded photo copies are 1/photo_factor of the original
    max_failures: int = 2                 # Ray Train restarts from the latest checkpoint (a busy machine)
    vgg_weights: str | None = None
    seed: int = 0


@dataclass
class DemoSummary:
    """The demo's figures: those the train and evaluate summaries share by name (``merged``), and its own."""

    dictionary_run: str = ""
    train_run: str = ""
    evaluate_run: str = ""
    model: str = ""
    train_faces: int = 0
    test_faces: int = 0
    pairs: int = 0
    metrics: dict = field(default_factory=dict)
    bicubic: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    warning: str = ""
    restored: int = 0
    photos: list = field(default_factory=list)
    outputs: str = ""
    label: str = ""
    bundled_label: str = ""
    people: dict = field(default_factory=dict)
    random_vgg: bool = True
    seconds: dict = field(default_factory=dict)


def demo_portraits() -> str:
    """The bundled portraits: ``<Bioguide ID>-<source>.jpg``, 121 photos of 76 people (ATTRIBUTION.md there)."""
    import dfdcore

    return str(Path(dfdcore.__file__).parent / "assets" / "portraits")


def person_of(relpath: str) -> str:
    """The person a portrait shows: its file name up to the first "-" (the Bioguide ID)."""
    return Path(relpath).stem.split("-", 1)[0]


@task(cache_policy=NONE)
def split_by_person(photos: str, folder: str, test_fraction: float, seed: int, people: int | None = None) -> dict:
    """Copy the photos of ``test_fraction`` of the people (of the first ``people`` in a seeded order; None: all)
    into ``folder``/test and the others into ``folder``/train: nobody is on both sides → {"train": photos,
    "test": photos, "people": {"train": n, "test": n}}."""
    from dfdcore.data.faceset import assign_split
    from dfdcore.io.hashing import sha256_bytes
    from dfdcore.io.storage import list_images, read_bytes, write_bytes_atomic

    sources = list_images([photos])
    chosen = sorted({person_of(source.relpath) for source in sources},
                    key=lambda person: sha256_bytes(f"{seed}:{person}".encode()))[:people]
    sources = [source for source in sources if person_of(source.relpath) in chosen]
    split = assign_split(chosen, test_fraction, seed)
    counts = {"train": 0, "test": 0}
    for source in sources:
        side = split[person_of(source.relpath)]
        write_bytes_atomic(join_uri(folder, f"{side}/{source.relpath}"), read_bytes(source.uri))
        counts[side] += 1
    people_per_side = {side: sum(1 for s in split.values() if s == side) for side in counts}
    return {**counts, "people": people_per_side}


def held_out_photos(faceset: str) -> list[str]:
    """URIs of the photos whose faces the faceset holds out (never seen in training)."""
    import io

    import pyarrow.parquet as pq

    from dfdcore.io.storage import read_bytes

    table = pq.read_table(io.BytesIO(read_bytes(faceset)), columns=["uri", "split"]).to_pylist()
    return sorted({row["uri"] for row in table if row["split"] == "test"})


@task(cache_policy=NONE)
def degraded_copies(photos: list[str], out: str, face_size: int, factor: int, seed: int) -> dict:
    """Each photo scaled so that its largest face fills the model's ``face_size`` crop (the original shown), and
    a degraded copy at 1/``factor`` of that (the input) → {"copies": [{name, original, lq, face_box}, …]}, one per
    photo with a face."""
    import cv2
    import numpy as np

    from dfdcore.data.degrade import degrade_photo
    from dfdcore.face import align_faces
    from dfdcore.io.images import decode_image, write_image
    from dfdcore.io.storage import read_bytes

    made = []
    for index, uri in enumerate(photos):
        rgb = decode_image(read_bytes(uri), name=uri).rgb8
        faces = align_faces(rgb, face_size=face_size)
        if not faces:
            print(f"{uri}: no face found, left out of the restoration demo")
            continue
        face = max(faces, key=lambda f: f.detection.area)
        scale = float(np.sqrt(abs(np.linalg.det(face.matrix[:, :2]))))  # photo pixels → face-crop pixels
        h, w = (int(round(n * scale)) // factor * factor for n in rgb.shape[:2])
        original = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        name = Path(uri.rsplit("/", 1)[-1]).stem
        paths = {"original": join_uri(out, f"original/{name}.png"), "lq": join_uri(out, f"lq/{name}.png")}
        write_image(paths["original"], original)
        write_image(paths["lq"], degrade_photo(original, factor, seed=seed + index))
        box = tuple(int(round(v * scale)) for v in face.detection.box)
        made.append({"name": name, **paths, "face_box": box})
    return {"copies": made}


@task(cache_policy=NONE)
def comparisons(copies: list[dict], outputs: dict[str, str], cmp_out: str, factor: int) -> list[dict]:
    """cmp/NAME.png = LQ (bicubic ×factor) | each restored output | original, for each copy; ``outputs``: caption →
    the restore_sources folder holding that model's results. → rows {name, psnr_bicubic, psnr: {caption: dB}}: PSNR
    of the face region against the original."""
    import numpy as np

    from dfdcore.evaluation.metrics import psnr
    from dfdcore.face.paste import upscale_image
    from dfdcore.io.images import decode_image, write_image
    from dfdcore.io.pixels import uint8_to_unit, unit_to_uint8
    from dfdcore.io.storage import exists, read_bytes
    from dfdcore.viz import side_by_side

    rows = []
    for copy in copies:
        restored_uris = {caption: join_uri(folder, f"restored_imgs/{copy['name']}.png")
                         for caption, folder in outputs.items()}
        missing = [caption for caption, uri in restored_uris.items() if not exists(uri)]
        if missing:
            print(f"{copy['name']}: not restored by {', '.join(missing)} (see the manifest there)")
            continue
        original = decode_image(read_bytes(copy["original"])).rgb8
        lq = decode_image(read_bytes(copy["lq"])).rgb8
        images = [unit_to_uint8(upscale_image(uint8_to_unit(lq), factor)),
                  *(decode_image(read_bytes(uri)).rgb8 for uri in restored_uris.values()), original]
        h, w = (min(a.shape[i] for a in images) for i in (0, 1))
        images = [a[:h, :w] for a in images]
        zoom = max(1, -(-320 // w))  # small photos are shown enlarged (nearest: every pixel stays visible)
        write_image(join_uri(cmp_out, f"cmp/{copy['name']}.png"), side_by_side(
            [np.repeat(np.repeat(a, zoom, 0), zoom, 1) for a in images],
            [f"input (degraded, x{factor} bicubic)", *outputs, "original"]))
        x1, y1, x2, y2 = (max(0, v) for v in copy["face_box"])
        face = (slice(y1, min(y2, h)), slice(x1, min(x2, w)))
        rows.append({"name": copy["name"], "psnr_bicubic": psnr(images[0][face], images[-1][face]),
                     "psnr": {caption: psnr(a[face], images[-1][face])
                              for caption, a in zip(outputs, images[1:-1])}})
    return rows


@task(cache_policy=NONE)
def restore_photos(model, lq_folder: str, restored_out: str, factor: int) -> dict:
    """Every face of the photos in ``lq_folder`` restored (×``factor``) and pasted back into ``restored_out``,
    incrementally (its manifest) → {"restored": n, "label": the model's label}."""
    from dfdcore.io.storage import list_images
    from dfdcore.restoration.bulk import RunOptions, restore_sources
    from dfdcore.restoration.restorer import RestoreOptions, Restorer, model_identity, model_label

    built = model.build()
    run = RunOptions(batch_size=4, save_faces=True)
    restorer = Restorer(built, RestoreOptions(upscale=factor, upsample=2), batch_size=run.batch_size)
    restored = restore_sources(list_images([lq_folder]), restored_out, restorer, run)
    return {"restored": restored.restored, "label": model_label(model_identity(built))}


def dictionary_config(config: DemoConfig):
    """The demo's dictionary build: every face of the training photos, flipped too, k-means with ``config.k``."""
    from dfd.flows.build_dictionary import DictionaryConfig
    from dfdcore.dictionary.kmeans import KMeansOptions

    return DictionaryConfig(kmeans=KMeansOptions(k=config.k, niter=10, seed=config.seed), select=10_000, flip=True,
                            face_size=config.face_size, ngf=config.ngf, vgg_weights=config.vgg_weights,
                            random_vgg=config.vgg_weights is None, seed=config.seed, workers=1)


def train_config(config: DemoConfig, out: str, dictionary: str):
    """The demo's training (its recipe: ``DemoConfig``), in ``out`` with ``dictionary``."""
    from dfdcore.training import TrainConfig

    random_vgg = config.vgg_weights is None
    return TrainConfig(
        faceset=join_uri(out, "faceset.parquet"), dictionary=dictionary, out=out,
        face_size=config.face_size, ngf=config.ngf, vgg_weights=config.vgg_weights, random_vgg=random_vgg,
        steps=config.steps, batch_size=config.batch_size, workers=config.workers, d_dim=config.d_dim,
        degradation=config.degradation, lr=config.lr, lr_schedule="cosine", constant_fraction=0.0, residual=True,
        train_vgg=config.train_vgg and random_vgg, augment=config.augment, grad_clip=config.grad_clip,
        pixel_weight=config.pixel_weight, pixel_criterion=config.pixel_criterion,
        perceptual_weight=config.perceptual_weight,
        adversarial_weight=config.adversarial_weight, adversarial_start=int(config.warmup_fraction * config.steps),
        identity_weight=config.identity_weight,
        ema_decay=config.ema_decay, val_every=config.val_every, val_pairs=config.val_pairs,
        checkpoint_every=max(1, config.steps // 3), sample_every=max(1, config.steps // 3),
        log_every=10, seed=config.seed)


@flow(name="demo", log_prints=True)
def demo(out: str = "dfd-results/demo", config: DemoConfig = DemoConfig()) -> DemoSummary:
    """The whole life cycle on the bundled portraits into ``out``: each stage is its own flow and MLflow run."""
    from dfd.flows.build_dictionary import build_dictionary
    from dfd.flows.evaluate import evaluate
    from dfd.flows.train import train
    from dfdcore.restoration.restorer import ModelSpec

    photos, clock = demo_portraits(), _Clock()
    # The held-out people are chosen first and kept out of the dictionary too: nothing of their faces reaches the
    # model, and nobody is on both sides (several people have more than one portrait).
    split_folder = join_uri(out, "photos")
    split = run_step(out, "split-by-person", sha256_json([sha256_path(photos), config.test_fraction, config.seed,
                                                          config.people]),
                     split_by_person, photos, split_folder, config.test_fraction, config.seed, config.people)
    # Each training face gives two rows per part (flipped too); k-means needs at least k (a --people N run has few).
    dictionary_build = dictionary_config(replace(config, k=max(1, min(config.k, 2 * split["train"]))))
    built = build_dictionary(join_uri(split_folder, "train"), join_uri(out, "dictionary"), dictionary_build)
    clock.lap("dictionary")

    dictionary = join_uri(out, "dictionary/dictionary.safetensors")
    cfg = train_config(config, join_uri(out, "train"), dictionary)
    trained = train(cfg, source=join_uri(split_folder, "train"), held_out=join_uri(split_folder, "test"),
                    register_as="dfd-demo-generator", max_failures=config.max_failures)
    clock.lap("train")

    model = ModelSpec(weights=trained.generator, dictionary=dictionary, face_size=config.face_size, ngf=config.ngf)
    evaluated = evaluate(model, join_uri(out, "testset"), faceset=cfg.faceset,
                         count=config.test_pairs_per_face * trained.test_faces, degradation=config.degradation,
                         label=f"demo model (best of {config.steps} steps)")
    clock.lap("evaluate")

    # Restoration where restoration happens: degraded copies of the held-out photos, restored by the demo model and
    # by the bundled one, compared with the originals.
    copies_out, restored_out = join_uri(out, "held-out"), join_uri(out, "restored")
    held_out = held_out_photos(cfg.faceset)
    copies = run_step(out, "degraded-copies", sha256_json([held_out, config.face_size, config.photo_factor,
                                                           config.seed]),
                      degraded_copies, held_out, copies_out, config.face_size, config.photo_factor, config.seed)
    restored = restore_photos(model, join_uri(copies_out, "lq"), restored_out, config.photo_factor)
    bundled_out = join_uri(out, "restored-bundled")
    bundled = restore_photos(ModelSpec().resolved(), join_uri(copies_out, "lq"), bundled_out, config.photo_factor)
    photo_rows = comparisons(copies["copies"], {restored["label"]: restored_out, bundled["label"]: bundled_out},
                             restored_out, config.photo_factor)
    clock.lap("restore")
    return merged(DemoSummary, trained, evaluated, dictionary_run=built.run_id, train_run=trained.run_id,
                  evaluate_run=evaluated.run_id, model=f"{trained.model_name}/{trained.model_version}",
                  validation=trained.validation or {}, restored=restored["restored"], photos=photo_rows,
                  outputs=restored_out, label=restored["label"], bundled_label=bundled["label"],
                  people=split["people"], random_vgg=config.vgg_weights is None, seconds=clock.seconds)


class _Clock:
    """Seconds per stage, each lap measured from the end of the one before."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage], self.last = now - self.last, now
