"""The build_dictionary flow end to end on real photos: Prefect (temporary server), Ray (local), MLflow (SQLite)."""
from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import dfdcore
from dfdcore import ComponentDictionary, GeneratorConfig

from .conftest import portrait

CONFIG = GeneratorConfig(face_size=128, ngf=8)


def _shrunk(name: str, side: int) -> Image.Image:
    image = Image.open(portrait(name)).convert("RGB")
    image.thumbnail((side, side))
    return image


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("collection")
    for name in ("grace_hopper.jpg", "obama.jpg", "astronaut.png", "biden.jpg"):
        shutil.copy(portrait(name), folder / name)
    # Four more one-face photos, shrunk to group-photo size so that detection stays fast.
    for name in ("obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg"):
        _shrunk(name, 640).save(folder / name, quality=92)
    # A three-face photo: three portraits side by side, bottom-padded to one height.
    parts = [np.asarray(_shrunk(name, 384)) for name in ("grace_hopper.jpg", "astronaut.png", "obama2.jpg")]
    height = max(p.shape[0] for p in parts)
    row = np.concatenate([np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0))) for p in parts], axis=1)
    Image.fromarray(row).save(folder / "group.jpg", quality=92)  # 3 faces
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return folder


@pytest.fixture(scope="module")
def built(photos, tmp_path_factory, prefect_server):
    from dfd.flows.build_dictionary import DictionaryConfig, build_dictionary
    from dfdcore.dictionary.kmeans import KMeansOptions

    out = tmp_path_factory.mktemp("dictionary-out")
    config = DictionaryConfig(kmeans=KMeansOptions(k=4, niter=5, seed=1), select=8, face_size=128, ngf=8,
                              random_vgg=True, seed=1, workers=1, batch=4)
    summary = build_dictionary(str(photos), str(out), config)
    return out, config, summary


def test_dictionary_has_reference_shapes_and_loads(built, tmp_path):
    out, config, summary = built
    for path in (out / "dictionary.safetensors", out / "DictionaryCenter128"):
        dictionary = ComponentDictionary.load(path)
        assert dictionary.k == 4 and dictionary.config == CONFIG
        for scale, part in dictionary.keys():
            assert dictionary.shape(scale, part) == CONFIG.dict_shape(scale, part, 4)
            assert torch.isfinite(dictionary.tensor(scale, part)).all()
    weights = dfdcore.save_checkpoint(dfdcore.random_generator(k=4, face_size=128, ngf=8), tmp_path / "g.pth")
    for exported in (out / "dictionary.safetensors", out / "DictionaryCenter128"):
        assert dfdcore.load_generator(weights, exported).bank.k == 4
    assert summary.images == 10 and summary.failed_images == 1
    assert summary.faces == 4 + 4 + 3 and summary.selected == 8
    assert summary.timing["scan"]["startup_seconds"] > 0  # 3 batches: too few for a steady rate
    assert summary.timing["landmarks"]["steady_seconds_per_item"] is None


def test_batch_timing_leaves_out_start_up_and_tail():
    from dfd.flows.build_dictionary import batch_timing

    # 20 batches of 10 items: the first after 5 s of start-up, then one a second, the last two slow (a tail).
    done_at = [(5.0 + i, 10) for i in range(18)] + [(40.0, 10), (60.0, 10)]
    timing = batch_timing(done_at)
    assert timing["startup_seconds"] == 5.0
    assert timing["steady_seconds_per_item"] == pytest.approx(0.1)  # items 20 → 180: 16 s for 160 items
    assert batch_timing(done_at[:9])["steady_seconds_per_item"] is None
    assert batch_timing([]) == {"startup_seconds": None, "steady_seconds_per_item": None}


def test_tables_have_the_documented_schemas(built):
    out, _, _ = built
    images = pq.read_table(out / "images.parquet")
    assert images.column_names == ["image_id", "uri", "width", "height", "format", "status", "error"]
    assert sorted(images.column("status").to_pylist()).count("failed") == 1
    faces = pq.read_table(out / "faces.parquet")
    for column in ("image_id", "face_index", "det_box", "det_score", "lm5", "lm68", "yaw", "pitch", "roll",
                   "eye_open_left", "eye_open_right", "mouth_open", "mouth_width", "status", "error"):
        assert column in faces.column_names
    assert all(len(v) == 136 for v in faces.column("lm68").to_pylist() if v is not None)
    selection = pq.read_table(out / "selection.parquet")
    assert sum(selection.column("selected").to_pylist()) == 8
    assert json.loads(selection.schema.metadata[b"stats"])
    shards = list((out / "features" / "scale=64" / "part=mouth").glob("*.parquet"))
    schema = pq.read_schema(shards[0])
    assert schema.field("feature").type.value_type == "halffloat"
    assert (out / "selection.png").stat().st_size > 1000


def test_mlflow_run_records_the_build(built):
    out, _, summary = built
    run = mlflow.get_run(summary.run_id)
    assert run.data.params["kmeans.k"] == "4" and run.data.params["kmeans.niter"] == "5"
    assert run.data.tags["random_vgg"] == "True" and summary.random_vgg is True
    # One name for the extractor's checksum: MLflow tag, dictionary metadata and feature shards agree.
    assert len(run.data.tags["extractor_checksum"]) == 64
    provenance = ComponentDictionary.load(out / "dictionary.safetensors").metadata["provenance"]
    assert provenance["extractor_checksum"] == run.data.tags["extractor_checksum"] == summary.extractor_checksum
    assert provenance["random_vgg"] is True and provenance["k"] == 4
    assert run.data.metrics["faces"] == 11 and run.data.metrics["selected"] == 8
    assert "inertia_64_mouth" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(summary.run_id)}
    assert {"dictionary.safetensors", "selection.png", "faces.parquet"} <= artifacts


def test_rerun_skips_and_changing_k_reruns_only_kmeans(built, photos):
    from dfd.flows.build_dictionary import build_dictionary

    out, config, _ = built
    stamps = {name: (out / name).stat().st_mtime_ns for name in ("images.parquet", "faces.parquet",
                                                                  "selection.parquet", "dictionary.safetensors")}
    build_dictionary(str(photos), str(out), config)
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps
    from dataclasses import replace

    build_dictionary(str(photos), str(out), replace(config, kmeans=replace(config.kmeans, k=3)))
    after = {name: (out / name).stat().st_mtime_ns for name in stamps}
    assert after["images.parquet"] == stamps["images.parquet"]
    assert after["selection.parquet"] == stamps["selection.parquet"]
    assert after["dictionary.safetensors"] != stamps["dictionary.safetensors"]
    assert ComponentDictionary.load(out / "dictionary.safetensors").k == 3


def test_kmeans_beats_random_centres_from_the_data(built):
    import numpy as np

    from dfdcore.dictionary.kmeans import KMeansOptions, kmeans_partition
    from dfdcore.dictionary.store import iter_feature_batches

    out, _, _ = built
    root = str(out / "features")
    rows = np.concatenate(list(iter_feature_batches(root, 64, "mouth"))).astype(np.float32)
    result = kmeans_partition(root, 64, "mouth", KMeansOptions(k=4, niter=10, seed=0))
    random_inertias = []
    for seed in range(5):
        centres = rows[np.random.default_rng(seed).choice(len(rows), 4, replace=False)]
        distances = ((rows[:, None, :] - centres[None]) ** 2).sum(-1).min(1)
        random_inertias.append(distances.mean())
    assert result.inertia < min(random_inertias)


def test_interrupted_feature_step_resumes_at_the_missing_shard(built, photos):
    """Delete one shard's coarsest-mouth file and the feature marker: only that shard is extracted again."""
    from dfd.flows.build_dictionary import build_dictionary

    out, config, _ = built
    partition = out / "features" / "scale=8" / "part=mouth"
    shards = sorted(partition.glob("*.parquet"))
    assert len(shards) == 2  # 8 selected faces, 4 per shard
    kept = out / "features" / "scale=64" / "part=nose" / shards[0].name
    stamp = kept.stat().st_mtime_ns
    shards[1].unlink()
    (out / ".steps" / "features.json").unlink()
    build_dictionary(str(photos), str(out), config)
    assert kept.stat().st_mtime_ns == stamp  # the complete shard was not redone
    assert len(list(partition.glob("*.parquet"))) == 2


def test_a_step_runs_once_per_key_and_hands_back_what_it_recorded(tmp_path):
    from dataclasses import dataclass

    import numpy as np

    from dfd.flows.steps import MADE_ONCE, Summary, merged, run_step

    calls = []

    def work(value):
        calls.append(value)
        return {"value": value, "array": np.arange(3)}

    first = run_step(str(tmp_path), "double", "key-1", work, 2)
    again = run_step(str(tmp_path), "double", "key-1", work, 5)
    assert first == again == {"value": 2, "array": [0, 1, 2]} and calls == [2]
    assert run_step(str(tmp_path), "double", "key-2", work, 7)["value"] == 7 and calls == [2, 7]
    assert run_step(str(tmp_path), "made", MADE_ONCE, work, 1) == run_step(str(tmp_path), "made", MADE_ONCE, work, 9)
    assert calls == [2, 7, 1]

    @dataclass
    class Both:
        run_id: str = ""
        faces: int = 0
        pairs: int = 0

    @dataclass
    class Faces(Summary):
        faces: int = 0

    @dataclass
    class Pairs(Summary):
        pairs: int = 0

    both = merged(Both, Faces(run_id="a", faces=3), Pairs(run_id="b", pairs=8), run_id="c")
    assert both == Both(run_id="c", faces=3, pairs=8)


def test_the_command_asks_for_one_vgg_and_checks_the_kmeans_options(tmp_path):
    from click.testing import CliRunner

    from dfd.cli import main

    out = ["-o", str(tmp_path / "out")]
    neither = CliRunner().invoke(main, ["build-dictionary", str(tmp_path), *out])
    both = CliRunner().invoke(main, ["build-dictionary", str(tmp_path), *out, "--random-vgg", "--vgg-weights", "v.pth"])
    assert neither.exit_code == both.exit_code == 2 and "--random-vgg" in neither.output
    bad_k = CliRunner().invoke(main, ["build-dictionary", str(tmp_path), *out, "--random-vgg", "--k", "0"])
    assert bad_k.exit_code == 2 and "must be >= 1, got 0" in bad_k.output
    assert not (tmp_path / "out").exists()
