"""demo: the whole life cycle on the bundled public-domain photos, with the embedded defaults.

build_dictionary → train (a small network, minutes on a CPU) → evaluate against bicubic on held-out faces →
restore the sample photos with the trained model. ImageNet VGG19 weights are used when given; otherwise the VGG is
random and every output says so. Six photos are a demonstration of the pipeline, not a training set.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow

from dfdcore.io.storage import join_uri


@dataclass(frozen=True)
class DemoConfig:
    face_size: int = 128
    ngf: int = 8
    d_dim: int = 8
    k: int = 8
    steps: int = 300
    batch_size: int = 2
    workers: int = 1
    test_fraction: float = 0.3
    vgg_weights: str | None = None
    seed: int = 0


@dataclass
class DemoSummary:
    dictionary_run: str = ""
    train_run: str = ""
    evaluate_run: str = ""
    model: str = ""
    train_faces: int = 0
    test_faces: int = 0
    metrics: dict = field(default_factory=dict)
    bicubic: dict = field(default_factory=dict)
    restored: int = 0
    outputs: str = ""
    random_vgg: bool = True
    seconds: dict = field(default_factory=dict)


def sample_photos() -> str:
    import dfdcore

    return str(Path(dfdcore.__file__).parent / "assets")


@flow(name="demo", log_prints=True)
def demo(out: str = "dfd-results/demo", config: DemoConfig = DemoConfig()) -> DemoSummary:
    from dfdcore.bulk import restore_sources
    from dfdcore.io.storage import list_images
    from dfdcore.restore import ModelSpec, Restorer, RestoreOptions
    from dfdcore.training import TrainConfig
    from flows.build_dictionary import DictionaryConfig, build_dictionary
    from flows.evaluate import evaluate
    from flows.train import train

    random_vgg = config.vgg_weights is None
    seconds, started = {}, time.perf_counter()
    photos, dictionary_out = sample_photos(), join_uri(out, "dictionary")
    built = build_dictionary(photos, dictionary_out, DictionaryConfig(
        k=config.k, select=10_000, flip=True, face_size=config.face_size, ngf=config.ngf,
        vgg_weights=config.vgg_weights, random_weights=random_vgg, seed=config.seed, niter=10, workers=1))
    seconds["dictionary"] = time.perf_counter() - started

    train_out = join_uri(out, "train")
    dictionary = join_uri(dictionary_out, "dictionary.safetensors")
    trained = train(TrainConfig(
        faceset=join_uri(train_out, "faceset.parquet"), dictionary=dictionary, out=train_out,
        face_size=config.face_size, ngf=config.ngf, vgg_weights=config.vgg_weights, random_vgg=random_vgg,
        steps=config.steps, batch_size=config.batch_size, workers=config.workers, d_dim=config.d_dim,
        checkpoint_every=max(1, config.steps // 3), sample_every=max(1, config.steps // 3),
        log_every=10, lr=1e-3, seed=config.seed), source=dictionary_out, test_fraction=config.test_fraction,
        register_as="dfd-demo-generator")
    seconds["train"] = time.perf_counter() - started - sum(seconds.values())

    model = ModelSpec(weights=trained.generator, dictionary=dictionary, face_size=config.face_size, ngf=config.ngf)
    evaluated = evaluate(model, join_uri(out, "testset"), faceset=join_uri(train_out, "faceset.parquet"),
                         label=f"demo model ({config.steps} steps)")
    seconds["evaluate"] = time.perf_counter() - started - sum(seconds.values())

    restored_out = join_uri(out, "restored")
    restorer = Restorer(model.build(), RestoreOptions(upscale=2), batch_size=4)
    restored = restore_sources(list_images([photos]), restored_out, restorer, save_faces=True, cmp=True)
    seconds["restore"] = time.perf_counter() - started - sum(seconds.values())
    return DemoSummary(dictionary_run=built.run_id, train_run=trained.run_id, evaluate_run=evaluated.run_id,
                       model=f"{trained.model_name}/{trained.model_version}", train_faces=trained.train_faces,
                       test_faces=trained.test_faces, metrics=evaluated.metrics, bicubic=evaluated.bicubic,
                       restored=restored.restored, outputs=restored_out, random_vgg=random_vgg, seconds=seconds)
