"""Training checkpoints kept by Ray Train: the training folder's ``checkpoints/`` is the Ray Train run's own folder.

``fit`` runs Ray Train with ``storage_path`` = OUT and the run name ``checkpoints``, so OUT/checkpoints is the Ray
run folder (Ray keeps its bookkeeping there: checkpoint_manager_snapshot.json). Rank 0 writes each checkpoint's
state atomically into OUT/checkpoints/step_NNNNNNNN/ (``Trainer.save``) and every rank reports it with
``ray.train.report(..., checkpoint=Checkpoint(that folder))`` without a second copy (it already lies in the run
folder). Ray Train's ``CheckpointConfig(num_to_keep=N, checkpoint_score_attribute="step", order max)`` then keeps
the N latest and deletes the others (its latest is never deleted). The best validated generator is no checkpoint:
``BestGenerator`` exports it to OUT/best/ (outside the pruned folder), so pruning never touches it.

Resume: ``ray.train.get_checkpoint()`` (the latest reported, restored by Ray from the run folder when ``fit`` is
called again on the same OUT), else the latest complete one on disk (a run made before, step_NNNNNNNN.pt files,
which Ray does not manage and never prunes).

MLflow: each checkpoint is logged as the artifact folder checkpoints/step_NNNNNNNN/ when it is written, and the
folders of checkpoints Ray has pruned since are deleted from the run's artifacts (rank 0 after each checkpoint,
the driver once more after ``fit``: Ray prunes in its controller, a little after the report), so the run's
artifacts hold the same checkpoints as the disk.
"""
from __future__ import annotations

import os
import re
from pathlib import PurePosixPath

from dfdcore.io.storage import exists, filesystem_for, is_local, join_uri
from dfdcore.training import checkpoint_steps, latest_checkpoint
from dfdcore.training.loop import CHECKPOINTS, STATE_NAME, checkpoint_name

DEFAULT_KEEP_CHECKPOINTS = 3  # the latest few: a resume needs one, a damaged latest file the one before
_FOLDER = re.compile(r"step_\d{8}")


def keep_count(keep: int) -> int | None:
    """``--keep-checkpoints`` → Ray Train's ``num_to_keep``: N ≥ 1 keeps the N latest, 0 or -1 keeps all (None)."""
    if keep < -1:
        raise ValueError(f"keep_checkpoints must be >= 1 (the latest N), or 0 or -1 (keep all), got {keep}")
    return keep if keep > 0 else None


def checkpoint_config(keep: int):
    """Ray Train's retention: the ``keep`` latest checkpoints by step (all for 0 or -1)."""
    from ray.train import CheckpointConfig

    return CheckpointConfig(num_to_keep=keep_count(keep), checkpoint_score_attribute="step",
                            checkpoint_score_order="max")


def ray_storage(out: str) -> tuple[str, object | None]:
    """(storage_path, storage_filesystem) of Ray Train for the training folder ``out`` (absolute when local): a
    remote ``out`` goes through dfd's own fsspec filesystem (its endpoint and credentials), wrapped for pyarrow."""
    fs, path = filesystem_for(out)
    if is_local(out):
        return os.path.abspath(path), None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return path, PyFileSystem(FSSpecHandler(fs))


def resume_uri(out: str) -> str | None:
    """(In a Ray Train worker) the training state to resume from: Ray's latest reported checkpoint, else the latest
    complete one under ``out/checkpoints``; None for a new training."""
    import ray.train

    reported = ray.train.get_checkpoint()
    if reported is not None:
        uri = join_uri(out, f"{CHECKPOINTS}/{PurePosixPath(reported.path).name}/{STATE_NAME}")
        if exists(uri):
            return uri
    return latest_checkpoint(out)


def report(metrics: dict, step: int, checkpointed: bool, rank: int) -> None:
    """(Every rank, the same number of times) ``metrics`` at ``step`` to Ray Train, with the checkpoint rank 0 has
    just written at ``step`` when ``checkpointed``: Ray registers it in place and prunes per ``checkpoint_config``."""
    import ray.train
    from ray.train import Checkpoint, CheckpointUploadMode

    values = metrics | {"step": step}
    if not checkpointed:
        ray.train.report(values)
        return
    checkpoint = None
    name = checkpoint_name(step)
    if rank == 0:
        # The folder already lies in the run folder (storage_path/name): registered as is, nothing copied.
        storage = ray.train.get_context().get_storage()
        checkpoint = Checkpoint(path=storage.build_checkpoint_path_from_name(name),
                                filesystem=storage.storage_filesystem)
    ray.train.report(values, checkpoint=checkpoint, checkpoint_dir_name=name,
                     checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)


def log_checkpoint(client, run_id: str, uri: str) -> None:
    """The checkpoint state file ``uri`` as the run's artifact checkpoints/step_NNNNNNNN/ (a local ``uri`` only:
    MLflow logs from local files; a remote training folder keeps its checkpoints where they are)."""
    if is_local(uri):
        client.log_artifact(run_id, filesystem_for(uri)[1], f"{CHECKPOINTS}/{PurePosixPath(uri).parent.name}")


def drop_pruned_artifacts(client, run_id: str, out: str) -> list[str]:
    """Delete from the run's artifacts the checkpoint folders no longer under ``out/checkpoints`` (pruned by Ray
    Train) → their artifact paths. Files of the former layout (checkpoints/step_NNNNNNNN.pt) are left alone."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    kept = {checkpoint_name(step) for step in checkpoint_steps(out)}
    pruned = [entry.path for entry in client.list_artifacts(run_id, CHECKPOINTS)
              if entry.is_dir and _FOLDER.fullmatch(PurePosixPath(entry.path).name)
              and PurePosixPath(entry.path).name not in kept]
    if pruned:
        repository = get_artifact_repository(client.get_run(run_id).info.artifact_uri, client.tracking_uri)
        for path in pruned:
            repository.delete_artifacts(path)
    return pruned
