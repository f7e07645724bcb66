"""The data a flow run used, as MLflow dataset inputs (``mlflow.log_input``): a name, a digest, the source (path or
URI) and a profile holding the row count, shown under the run's "Datasets" in the MLflow UI and in
``run.inputs.dataset_inputs``.

Only an index of each dataset is given to MLflow (one row per face, pair or listed file, no pixels): MLflow keeps
its schema and profile, never the rows. The digests reuse dfd's own content hashes: the faceset's ``image_id``
(sha256 of each photo) with the face index, the test set file's sha256, each listed object's signature (ETag, or
size and mtime) — the same data gives the same digest in every run, whatever the path it was read from.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

from dfdcore.io.hashing import sha256_json

DIGEST_LENGTH = 32  # hex digits of sha256 kept: MLflow's SQL stores hold at most 36 characters of a digest
FACESET_COLUMNS = ("image_id", "face_index", "uri", "split")
PAIRS_COLUMNS = ("pair", "image_id", "face_index", "params")
LISTING_COLUMNS = ("uri", "relpath", "listing", "skip")


def dataset_source(uri: str):
    """MLflow's dataset source for ``uri`` (local path, s3://, gs://, http(s)://, ...); a generic URI source for the
    schemes MLflow has no resolver of (memory://, az://)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.exceptions import MlflowException

    with warnings.catch_warnings():  # file:// matches two equivalent local resolvers; MLflow warns and takes one
        warnings.simplefilter("ignore", UserWarning)
        try:
            return resolve_dataset_source(uri)
        except MlflowException:
            return _uri_source_class()(uri)


def log_dataset(rows: Sequence[dict], columns: Sequence[str], *, source: str, name: str, digest: str,
                context: str, tags: dict | None = None) -> None:
    """Log the dataset whose index is ``rows`` (only ``columns`` of each) to the active run as an input of
    ``context`` (training, validation, testing, inference): ``name``, ``digest`` (cut to ``DIGEST_LENGTH``),
    ``source``; its profile counts the rows."""
    import mlflow
    import pandas as pd

    frame = pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=list(columns))
    with warnings.catch_warnings():  # "integer columns cannot hold missing values": a model-schema hint, not ours
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        dataset = mlflow.data.from_pandas(frame, source=dataset_source(source), name=name,
                                          digest=digest[:DIGEST_LENGTH])
        mlflow.log_input(dataset, context=context, tags={k: str(v) for k, v in (tags or {}).items()})


def faceset_index(faceset: str) -> list[dict]:
    """The rows of a faceset table without their pixels: image_id, face_index, uri, split."""
    import io

    import pyarrow.parquet as pq

    from dfdcore.io.storage import read_bytes

    return pq.read_table(io.BytesIO(read_bytes(faceset)), columns=list(FACESET_COLUMNS)).to_pylist()


def faces_digest(rows: Sequence[dict], face_size: int | str) -> str:
    """The content hash of a set of faces: the photos' sha256 (``image_id``) and face indices, and the crop size."""
    return sha256_json([face_size, sorted((r["image_id"], r["face_index"]) for r in rows)], 64)


def log_faceset(faceset: str, face_size: int) -> dict[str, int]:
    """The faceset's training faces (context training) and held-out faces (context validation: the training's
    validation pairs are made from them) as two dataset inputs → {split: rows}."""
    rows = faceset_index(faceset)
    counts = {}
    for split, context in (("train", "training"), ("test", "validation")):
        chosen = [r for r in rows if r["split"] == split]
        counts[split] = len(chosen)
        log_dataset(chosen, FACESET_COLUMNS, source=faceset, name=f"faceset-{split}",
                    digest=faces_digest(chosen, face_size), context=context,
                    tags={"split": split, "faces": len(chosen), "face_size": face_size})
    return counts


def log_test_set(pairs_uri: str, sha256: str) -> int:
    """The evaluation's test set (pairs.parquet, whose file sha256 the flow keeps) as a dataset input of context
    testing → its pairs."""
    import io

    import pyarrow.parquet as pq

    from dfdcore.io.storage import read_bytes

    table = pq.read_table(io.BytesIO(read_bytes(pairs_uri)), columns=list(PAIRS_COLUMNS))
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    rows = table.to_pylist()
    log_dataset(rows, PAIRS_COLUMNS, source=pairs_uri, name="testset", digest=sha256, context="testing",
                tags={"pairs": len(rows), "sha256": sha256} | {k: meta[k] for k in ("face_size", "degradation",
                                                                                      "seed") if k in meta})
    return len(rows)


def log_listing(source: str, sources: Sequence, name: str = "bucket", context: str = "inference") -> int:
    """The files a run listed under ``source`` (``storage.Source``: uri, relpath, listing signature, skip) as a
    dataset input (a bulk run's: context inference) → their count. Its digest: the relative paths and listing
    signatures (ETag, or size and mtime)."""
    rows = [{"uri": s.uri, "relpath": s.relpath, "listing": s.listing, "skip": s.skip} for s in sources]
    digest = sha256_json(sorted((r["relpath"], r["listing"] or "", r["skip"] or "") for r in rows), 64)
    log_dataset(rows, LISTING_COLUMNS, source=source, name=name, digest=digest, context=context,
                tags={"files": len(rows)})
    return len(rows)


@functools.cache
def _uri_source_class():
    """The class of a generic URI source, made on first use (importing this module does not import MLflow)."""
    from mlflow.data.dataset_source import DatasetSource

    class UriDatasetSource(DatasetSource):
        """A dataset at a URI MLflow has no source type of: recorded by its URI, never loaded by MLflow."""

        def __init__(self, uri: str) -> None:
            self.uri = uri

        @staticmethod
        def _get_source_type() -> str:
            return "uri"

        def load(self, **kwargs):
            raise NotImplementedError(f"{self.uri}: read it with dfd (dfdcore.io.storage), not through MLflow")

        @staticmethod
        def _can_resolve(raw_source) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source):
            return cls(str(raw_source))

        def to_dict(self) -> dict:
            return {"uri": self.uri}

        @classmethod
        def from_dict(cls, source_dict: dict):
            return cls(source_dict["uri"])

    return UriDatasetSource

