"""Component features for dictionary building: extractor loading, crops, flips and Parquet storage."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from dfdcore.arch.vgg_weights import load_vgg
from dfdcore.components import part_boxes, scale_boxes
from dfdcore.config import PARTS, GeneratorConfig
from dfdcore.dictionary.crops import component_features, valid_rows
from dfdcore.dictionary.store import (
    FEATURE_FORMAT,
    FeatureStoreError,
    count_rows,
    iter_feature_batches,
    list_shards,
    read_feature_schema,
    write_feature_partition,
)
from dfdcore.face.flip import flip_faces

CFG = GeneratorConfig(face_size=128, ngf=8)


@pytest.fixture(scope="module")
def vgg():
    return load_vgg(None, width=CFG.ngf, random_seed=7)


def random_landmarks(batch: int, seed: int, quarter: bool = False) -> torch.Tensor:
    """(B, 68, 2) landmarks in the central part of a 128 face; ``quarter`` rounds to 1/4 px (exact float sums)."""
    gen = torch.Generator().manual_seed(seed)
    lm = 24 + 80 * torch.rand(batch, 68, 2, generator=gen)
    return (lm * 4).round() / 4 if quarter else lm


def random_faces(batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, CFG.face_size, CFG.face_size, generator=gen) * 2 - 1


# ------------------------------------------------------------------------------------------------- extractor
def test_random_vgg_is_labelled_and_its_checksum_is_stable(vgg):
    model, checksum, random = vgg
    assert random is True and len(checksum) == 64
    assert load_vgg(None, width=CFG.ngf, random_seed=7)[1] == checksum
    assert load_vgg(None, width=CFG.ngf, random_seed=8)[1] != checksum


def test_vgg_needs_weights_or_an_explicit_seed(tmp_path):
    with pytest.raises(ValueError, match="random_seed"):
        load_vgg(None)
    with pytest.raises(FileNotFoundError, match="no such VGG weights"):
        load_vgg(tmp_path / "vgg19-dcbb9e9d.pth")


def test_torchvision_and_generator_layouts_load_the_same_weights(vgg, tmp_path):
    model, checksum, _ = vgg
    convs = {k.removeprefix("model."): v for k, v in model.state_dict().items() if k.startswith("model.features.")}
    torchvision = {**convs, "classifier.0.weight": torch.zeros(2, 2)}
    torch.save(torchvision, tmp_path / "vgg19.pth")
    loaded, tv_checksum, random = load_vgg(tmp_path / "vgg19.pth")
    assert random is False and tv_checksum == checksum  # same convs, ImageNet mean/std
    generator = {f"VggExtract.model.{k}": v for k, v in convs.items()}
    generator["VggExtract.RGB_mean"] = torch.full((1, 3, 1, 1), 0.5)
    generator["VggExtract.RGB_std"] = torch.full((1, 3, 1, 1), 0.25)
    generator["up4.4.weight"] = torch.zeros(3, 8, 3, 3)
    torch.save(generator, tmp_path / "latest_net_G.pth")
    loaded, gen_checksum, _ = load_vgg(tmp_path / "latest_net_G.pth", width=CFG.ngf)
    assert torch.equal(loaded.RGB_mean, torch.full((1, 3, 1, 1), 0.5))
    assert gen_checksum != checksum  # the normalisation is part of the extractor
    with pytest.raises(ValueError, match="width"):
        load_vgg(tmp_path / "latest_net_G.pth", width=64)


# ------------------------------------------------------------------------------------------------- features
def test_feature_shapes_match_the_dictionary(vgg):
    landmarks = random_landmarks(2, seed=1)
    feats = component_features(vgg[0], random_faces(2, seed=2), part_boxes(landmarks, CFG.face_size), CFG)
    assert set(feats) == {(s, p) for s in CFG.scales for p in PARTS}
    for (scale, part), rows in feats.items():
        assert tuple(rows.shape) == (2, *CFG.dict_shape(scale, part, 1)[1:])
        assert valid_rows(rows).all()


def test_a_crop_equals_a_manual_crop_and_resize(vgg):
    faces, boxes = random_faces(1, seed=3), part_boxes(random_landmarks(1, seed=4), CFG.face_size)
    feats = component_features(vgg[0], faces, boxes, CFG)
    taps = vgg[0](faces)
    scale, part = CFG.scales[1], "mouth"
    x1, y1, x2, y2 = scale_boxes(boxes, CFG.face_size // scale, scale)[0][PARTS.index(part)]
    side = CFG.dict_size(scale, part)
    manual = F.interpolate(taps[1][:, :, y1:y2, x1:x2], size=(side, side), mode="bilinear", align_corners=False)
    torch.testing.assert_close(feats[(scale, part)], manual)


def test_a_component_outside_the_face_gives_a_nan_row(vgg):
    boxes = part_boxes(random_landmarks(2, seed=5), CFG.face_size)
    boxes[1, 0] = torch.tensor([-90, -90, -60, -60])  # left eye of face 1 entirely outside
    feats = component_features(vgg[0], random_faces(2, seed=6), boxes, CFG)
    assert valid_rows(feats[(CFG.scales[0], "left_eye")]).tolist() == [True, False]
    assert valid_rows(feats[(CFG.scales[0], "mouth")]).tolist() == [True, True]


def test_flip_twice_is_identity_and_mirrors_the_eyes():
    faces, landmarks = random_faces(2, seed=7), random_landmarks(2, seed=8, quarter=True)
    boxes = part_boxes(landmarks, CFG.face_size)
    f1, l1 = flip_faces(faces, landmarks, CFG.face_size)
    f2, l2 = flip_faces(f1, l1, CFG.face_size)
    assert torch.equal(f2, faces) and torch.equal(l2, landmarks)
    assert torch.equal(f1[..., 0], faces[..., -1])
    b1 = part_boxes(l1, CFG.face_size)
    left, right = b1[:, PARTS.index("left_eye")], boxes[:, PARTS.index("right_eye")]
    s = CFG.face_size
    # Exclusive bounds mirror as x1' = S − x2; trunc of a non-integer centre ± half may shift that by one pixel.
    assert (left[:, 0] - (s - right[:, 2])).abs().max() <= 1
    assert (left[:, 2] - (s - right[:, 0])).abs().max() <= 1
    assert torch.equal(left[:, [1, 3]], right[:, [1, 3]])


def test_flip_is_an_exact_mirror_for_integer_boxes():
    landmarks = torch.full((1, 68, 2), 64.0)
    right_eye = list(range(22, 27)) + list(range(42, 48))
    landmarks[0, right_eye] = torch.tensor([90.0, 50.0])
    landmarks[0, 22], landmarks[0, 26] = torch.tensor([80.0, 50.0]), torch.tensor([100.0, 50.0])  # centre 90, L 10
    boxes = part_boxes(landmarks, CFG.face_size)
    flipped = part_boxes(flip_faces(torch.zeros(1, 3, 128, 128), landmarks, CFG.face_size)[1], CFG.face_size)
    x1, y1, x2, y2 = boxes[0, PARTS.index("right_eye")].tolist()
    assert (x1, y1, x2, y2) == (81, 41, 100, 60)
    assert flipped[0, PARTS.index("left_eye")].tolist() == [128 - x2, y1, 128 - x1, y2]


# ------------------------------------------------------------------------------------------------- Parquet
def meta(n: int, prefix: str = "img") -> list[dict]:
    return [{"image_id": f"{prefix}{i // 2}", "face_index": i % 2, "flip": bool(i % 3 == 0)} for i in range(n)]


def test_parquet_schema_metadata_and_float16_round_trip(tmp_path):
    root = str(tmp_path / "features")
    values = torch.randn(5, 4, 3, 3) * 10
    uri = write_feature_partition(root, 64, "nose", meta(5), values, "shard-0", extractor_checksum="ab" * 32,
                                  random_vgg=True)
    assert uri.endswith("scale=64/part=nose/shard-0.parquet")
    table = pq.read_table(uri)
    assert table.schema.field("image_id").type == pa.string()
    assert table.schema.field("face_index").type == pa.int32()
    assert table.schema.field("flip").type == pa.bool_()
    feature = table.schema.field("feature").type
    assert pa.types.is_fixed_size_list(feature) and feature.list_size == 36 and feature.value_type == pa.float16()
    md = table.schema.metadata
    assert md[b"dfd.format"] == FEATURE_FORMAT.encode() and md[b"dfd.random_vgg"] == b"true"
    schema = read_feature_schema(uri)
    assert (schema.channels, schema.height, schema.width, schema.num_rows) == (4, 3, 3, 5)
    assert schema.extractor_checksum == "ab" * 32 and schema.random_vgg is True
    assert (schema.scale, schema.part) == (64, "nose")
    assert table.column("image_id").to_pylist() == [m["image_id"] for m in meta(5)]
    (batch,) = list(iter_feature_batches(root, 64, "nose"))
    assert batch.dtype == np.float16
    np.testing.assert_array_equal(batch, values.numpy().astype(np.float16).reshape(5, -1))


def test_skipped_components_are_dropped_and_other_nan_rejected(tmp_path):
    root = str(tmp_path)
    values = torch.arange(12, dtype=torch.float32).reshape(3, 1, 2, 2)
    values[1] = float("nan")  # a skipped component: the whole row is NaN
    write_feature_partition(root, 32, "mouth", meta(3), values, "s", extractor_checksum="x", random_vgg=False)
    assert count_rows(root, 32, "mouth") == 2
    assert pq.read_table(list_shards(root, 32, "mouth")[0]).column("image_id").to_pylist() == ["img0", "img1"]
    values[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        write_feature_partition(root, 32, "nose", meta(3), values, "s", extractor_checksum="x", random_vgg=False)
    with pytest.raises(ValueError, match="float16"):
        write_feature_partition(root, 32, "nose", meta(1), torch.full((1, 1, 2, 2), 1e6), "s",
                                extractor_checksum="x", random_vgg=False)
    with pytest.raises(ValueError, match="rows_meta"):
        write_feature_partition(root, 32, "nose", meta(3), torch.ones(2, 1, 2, 2), "s",
                                extractor_checksum="x", random_vgg=False)
    assert list_shards(root, 32, "nose") == []


def test_shards_stream_in_order_in_bounded_batches(tmp_path):
    root = str(tmp_path)
    sizes = [7, 3, 11]
    expected = []
    for i, n in enumerate(sizes):
        values = torch.arange(n * 8, dtype=torch.float32).reshape(n, 2, 2, 2) + 1000 * i
        expected.append(values.reshape(n, -1).numpy().astype(np.float16))
        write_feature_partition(root, 32, "left_eye", meta(n, f"s{i}-"), values, f"part-{i:03d}",
                                extractor_checksum="c", random_vgg=False)
    assert count_rows(root, 32, "left_eye") == sum(sizes)
    assert count_rows(root, 32, "right_eye") == 0
    batches = list(iter_feature_batches(root, 32, "left_eye", batch_rows=4))
    assert all(1 <= len(b) <= 4 for b in batches)  # streaming: never more than one batch of rows at a time
    np.testing.assert_array_equal(np.concatenate(batches), np.concatenate(expected))


def test_mixed_extractors_in_one_partition_are_refused(tmp_path):
    root = str(tmp_path)
    for name, checksum in (("a", "one"), ("b", "two")):
        write_feature_partition(root, 32, "nose", meta(2), torch.ones(2, 1, 2, 2), name, extractor_checksum=checksum,
                                random_vgg=False)
    with pytest.raises(FeatureStoreError, match="one extractor"):
        next(iter_feature_batches(root, 32, "nose"))


def test_shards_written_with_the_old_metadata_keys_still_read(tmp_path):
    """Shards from before the rename recorded ``dfd.extractor_sha256`` and ``dfd.random``."""
    root = str(tmp_path)
    uri = write_feature_partition(root, 32, "nose", meta(2), torch.ones(2, 1, 2, 2), "new", extractor_checksum="cc",
                                  random_vgg=True)
    table = pq.read_table(uri)
    renamed = {b"dfd.extractor_checksum": b"dfd.extractor_sha256", b"dfd.random_vgg": b"dfd.random"}
    old = table.replace_schema_metadata({renamed.get(k, k): v for k, v in table.schema.metadata.items()})
    pq.write_table(old, uri)
    assert b"dfd.extractor_checksum" not in pq.read_schema(uri).metadata
    schema = read_feature_schema(uri)
    assert schema.extractor_checksum == "cc" and schema.random_vgg is True and schema.num_rows == 2
