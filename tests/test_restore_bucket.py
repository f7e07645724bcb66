"""The restore_bucket flow embedded (Prefect's local server, local Ray, MLflow on SQLite): failures become rows with
reasons and copies under failed_prefix; a rerun restores only what changed."""
from __future__ import annotations

import re
import shutil

import pytest
from mlflow import MlflowClient

from dfdcore.restoration.manifest import read_manifest
from tests.conftest import copy_portraits, portrait


@pytest.fixture()
def bucket(tmp_path):
    source = copy_portraits(tmp_path / "incoming", ["grace_hopper.jpg", "obama.jpg"])
    (source / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return source


def test_failures_are_listed_and_copied_and_reruns_skip_unchanged(prefect_server, bucket, tmp_path):
    from dfd.flows.restore_bucket import restore_bucket
    from dfdcore.restoration.bulk import RunOptions
    from dfdcore.restoration.restorer import ModelSpec, RestoreOptions

    out, failed = tmp_path / "out", tmp_path / "failed"
    identity, same_size, one_worker = ModelSpec("identity"), RestoreOptions(upscale=1), RunOptions(workers=1)
    first = restore_bucket(str(bucket), str(out), identity, same_size, one_worker, failed_prefix=str(failed))
    assert (first.listed, first.restored, first.failed, first.skipped) == (3, 2, 1, 0)
    assert first.failures[0][0].endswith("broken.jpg") and first.failures[0][1]
    assert (failed / "broken.jpg").read_bytes() == (bucket / "broken.jpg").read_bytes()  # the input, untouched
    assert (failed / "broken.jpg.reason.txt").read_text().strip() == first.failures[0][1]
    manifest = read_manifest(str(out / "manifest.parquet"))
    assert sorted(row["status"] for row in manifest.values()) == ["failed", "ok", "ok"]
    progress = latest_progress()  # the Prefect UI's view of the restore task: every file done
    assert progress.data == 100.0 and progress.description == "3 of 3 files"

    # A changed photo is redone, unchanged ones are skipped; the corrupt file is not retried while it is unchanged.
    photo = sorted(p for p in bucket.iterdir() if p.name != "broken.jpg")[0]
    shutil.copy(portrait("biden.jpg"), photo)
    second = restore_bucket(str(bucket), str(out), identity, same_size, one_worker)
    assert (second.restored, second.skipped, second.failed, second.failed_before) == (1, 2, 0, 1)
    run = MlflowClient().get_run(second.run_id)
    assert run.data.metrics["restored"] == 1 and run.data.metrics["skipped"] == 2
    assert run.data.metrics["failed_before"] == 1
    assert run.data.params["model_name"] == "identity" and "model_id" in run.data.tags


def latest_progress():
    """The progress artifact Prefect holds that was updated last."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])),
                                          sort=ArtifactSort.UPDATED_DESC, limit=1)
    return artifacts[0]


def test_failed_copies_inside_the_source_are_not_listed_again(bucket):
    from dfd.flows.restore_bucket import list_photos

    failed = bucket / "failed"
    failed.mkdir()
    (failed / "broken.jpg").write_bytes((bucket / "broken.jpg").read_bytes())
    (failed / "broken.jpg.reason.txt").write_text("not a jpeg\n")
    listed = {s.relpath: s.skip for s in list_photos.fn(str(bucket), str(failed))}
    assert "failed/broken.jpg" not in listed and "failed/broken.jpg.reason.txt" not in listed
    assert len(listed) == 3 and listed["broken.jpg"] is None
    everything = {s.relpath: s.skip for s in list_photos.fn(str(bucket))}
    assert "failed/broken.jpg" in everything and "not an image file name (.txt)" in everything[
        "failed/broken.jpg.reason.txt"]


def test_every_dfd_restore_option_is_a_field_of_the_flow_parameters():
    """`dfd restore` and a restore_bucket run take the same options: the CLI's are the fields of the flow's typed
    parameters (ModelSpec, RestoreOptions, RunOptions), and a misspelt or out-of-range field is refused."""
    import dataclasses

    from prefect.exceptions import ParameterTypeError

    from dfd.flows.restore_bucket import restore_bucket
    from dfd.restore_commands import restore
    from dfdcore.restoration.bulk import RunOptions
    from dfdcore.restoration.restorer import ModelSpec, RestoreOptions

    typed = {"model": ModelSpec, "restore": RestoreOptions, "run": RunOptions}
    fields = {f.name: group for group, cls in typed.items() for f in dataclasses.fields(cls)}
    cli = {p.name for p in restore.params} - {"inputs", "output", "allow_failures"}
    assert {"name" if n == "model_name" else n for n in cli} == set(fields)
    defaults = {f.name: f.default for cls in typed.values() for f in dataclasses.fields(cls)}
    parsed = restore.make_context("restore", ["in/", "-o", "out/"]).params  # what a plain `dfd restore` passes
    differ = {name: (parsed[name], defaults[name]) for name in parsed if name in defaults
              and parsed[name] != defaults[name]}
    assert not differ  # (CLI default, field default): a plain `dfd restore` is the flow's default run
    schema = restore_bucket.parameters.model_dump()
    for cls in typed.values():
        properties = schema["definitions"][cls.__name__]["properties"]
        assert set(properties) == {f.name for f in dataclasses.fields(cls)}
    given = {"source": "in/", "output": "out/", "model": {"name": "identity", "fidelity": 0.5},
             "restore": {"detector": "cnn", "min_face": 90}, "run": {"workers": 3}}
    values = restore_bucket.validate_parameters(given)
    assert values["restore"] == RestoreOptions(detector="cnn", min_face=90)
    aliased = restore_bucket.validate_parameters({"source": "in/", "output": "out/",
                                                  "model": {"registered": "dfd-generator@champion"}})
    assert aliased["model"] == ModelSpec(registered="dfd-generator@champion")  # resolved when a run starts
    assert values["model"] == ModelSpec("identity", fidelity=0.5) and values["run"] == RunOptions(workers=3)
    for bad, says in (({"restore": {"detectr": "cnn"}}, "restore.detectr"), ({"restore": {"detector": "dnn"}},
                      "restore.detector"), ({"model": {"fidelity": 2}}, "fidelity must be in [0, 1]"),
                      ({"run": {"chunk": 0}}, "chunk must be at least 1"),
                      ({"model": {"registered": "dfd-generator"}}, "NAME/VERSION (e.g. dfd-generator/3) or NAME@ALIAS")):
        with pytest.raises(ParameterTypeError, match=re.escape(says)):
            restore_bucket.validate_parameters({"source": "in/", "output": "out/", **bad})
