"""Ray work for the dictionary flow: scanning, landmarks and feature extraction over batches.

Functions take and return plain rows and URIs (never images or tensors): the data stays in storage, the driver
only sees what it writes into the tables. Actors keep their models loaded across batches.
"""
from __future__ import annotations

from collections.abc import Sequence

import ray

from dfd.tasks.devices import place_worker
from dfdcore.io.storage import Source


@ray.remote
def scan_batch(sources: Sequence[Source]) -> list[dict]:
    """``images.parquet`` rows of ``sources`` (sha256, size, format; a failure is a row with its reason)."""
    from dfdcore.dictionary.collection import scan_image

    return [scan_image(source) for source in sources]


@ray.remote
def landmarks_batch(image_rows: Sequence[dict], upsample: int = 1) -> list[dict]:
    """``faces.parquet`` rows of the faces found in ``image_rows`` (detector ``upsample``-times upsampled)."""
    from dfdcore.dictionary.collection import detect_image_faces

    return [row for image in image_rows for row in detect_image_faces(image, upsample=upsample)]


@ray.remote
class FeatureWorker:
    """Holds the VGG19 extractor (``vgg_weights``, or seeded random weights when ``random_seed`` is given) on the GPU
    Ray assigned the actor, else the CPU; turns batches of selected faces into feature shards."""

    def __init__(self, vgg_weights: str | None, random_seed: int | None, face_size: int, ngf: int) -> None:
        from dfdcore.arch.vgg_weights import load_vgg
        from dfdcore.config import GeneratorConfig

        self.where = place_worker("auto" if ray.get_gpu_ids() else "cpu")  # threads from Ray's CPUs as well
        self.config = GeneratorConfig(face_size=face_size, ngf=ngf)
        self.vgg, self.extractor_checksum, self.random_vgg = load_vgg(vgg_weights, width=ngf, random_seed=random_seed)
        self.vgg = self.vgg.to(self.where.device)

    def extract(self, faces: Sequence[dict], root: str, shard: str, flip: bool) -> int:
        from dfdcore.dictionary.extract import extract_shard

        return extract_shard(self.vgg, self.extractor_checksum, self.random_vgg, self.config, faces, root, shard,
                             flip, device=self.where.device)

    def placement(self):
        """Where this worker runs (``dfd.tasks.devices.Placement``)."""
        return self.where

    def extractor(self) -> tuple[str, bool]:
        """(extractor_checksum, random_vgg) of the loaded VGG19."""
        return self.extractor_checksum, self.random_vgg
