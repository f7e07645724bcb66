"""FAISS k-means over streamed Parquet features, and the dictionary built from it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dfdcore.config import PARTS, GeneratorConfig
from dfdcore.dictionary.format import ComponentDictionary
from dfdcore.dictionary.kmeans import (KMeansOptions, cluster_dictionary, default_trials, kmeans_partition,
                                       kmeans_plus_plus, sample_size, sketch_rows, sq_distances)
from dfdcore.dictionary.store import write_feature_partition

CFG = GeneratorConfig(face_size=128, ngf=8)
SCALE, PART = 32, "nose"  # (32, 3, 3) entries for CFG: d = 288


def clustered(n_per: int, shape: tuple[int, int, int], seed: int, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """k well-separated centres (spread 10, noise 0.05) → (centres (k, d), rows (k·n_per, C, h, w) shuffled)."""
    rng = np.random.default_rng(seed)
    dim = int(np.prod(shape))
    centres = rng.normal(0, 10, size=(k, dim)).astype(np.float32)
    rows = np.repeat(centres, n_per, axis=0) + rng.normal(0, 0.05, size=(k * n_per, dim)).astype(np.float32)
    return centres, rng.permutation(rows).reshape(-1, *shape)


def write_rows(root: str, scale: int, part: str, rows: np.ndarray, shards: int = 2, checksum: str = "c0") -> None:
    for i, chunk in enumerate(np.array_split(rows, shards)):
        meta = [{"image_id": f"{i}-{j}", "face_index": 0, "flip": False} for j in range(len(chunk))]
        write_feature_partition(root, scale, part, meta, chunk, f"shard-{i}", extractor_checksum=checksum,
                                random_vgg=True)


@pytest.fixture(scope="module")
def partition(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("features"))
    centres, rows = clustered(60, CFG.dict_shape(SCALE, PART, 1)[1:], seed=0)
    write_rows(root, SCALE, PART, rows, shards=3)
    return root, centres, len(rows)


def test_recovers_well_separated_centres(partition):
    root, centres, n = partition
    result = kmeans_partition(root, SCALE, PART, KMeansOptions(k=4, niter=10, seed=1, batch_rows=50))
    assert result.centroids.shape == CFG.dict_shape(SCALE, PART, 4) and result.centroids.dtype == np.float32
    found = result.centroids.reshape(4, -1)
    dist = ((centres[:, None] - found[None]) ** 2).sum(-1)
    match = dist.argmin(axis=1)
    assert sorted(match.tolist()) == [0, 1, 2, 3]  # a permutation
    assert np.abs(found[match] - centres).max() < 0.05  # noise 0.05 averaged over 60 rows, float16 storage
    assert result.cluster_sizes.sum() == result.n_rows == n and sorted(result.cluster_sizes.tolist()) == [60] * 4
    assert result.empty_clusters == 0 and result.n_train == n
    obj = np.asarray(result.objective)
    assert 1 <= len(obj) <= 10 and np.all(np.diff(obj) <= 1e-6 * obj[0])
    assert result.inertia < 0.05 ** 2 * found.shape[1] * 1.5


def test_deterministic_per_seed_and_sample_is_bounded(partition):
    root, _, n = partition
    options = KMeansOptions(k=4, niter=5, seed=3, max_points_per_centroid=20, batch_rows=32)
    a, b = (kmeans_partition(root, SCALE, PART, options) for _ in range(2))
    assert a.n_train == 80 < n
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.cluster_sizes, b.cluster_sizes)
    assert a.objective == b.objective
    assert sample_size(10_000, 512, 387_200, 256, max_train_bytes=2**30) == 693  # 1 GiB / (4·d)


def test_fewer_rows_than_k_is_a_clear_error(partition):
    root, _, n = partition
    with pytest.raises(ValueError, match="at least k rows"):
        kmeans_partition(root, SCALE, PART, KMeansOptions(k=n + 1))
    with pytest.raises(FileNotFoundError):
        kmeans_partition(root, SCALE, "mouth", KMeansOptions(k=2))


def test_options_refuse_what_cannot_run():
    with pytest.raises(ValueError, match="init must be one of"):
        KMeansOptions(init="k-means")
    with pytest.raises(ValueError, match="must be >= 1, got 0"):
        KMeansOptions(k=0)


def test_kmeans_plus_plus_seeds_distinct_clusters():
    centres, rows = clustered(30, (8, 1, 1), seed=5)
    seeds = kmeans_plus_plus(rows.reshape(len(rows), -1), 4, seed=0)
    nearest = ((seeds[:, None] - centres[None]) ** 2).sum(-1).argmin(axis=1)
    assert sorted(nearest.tolist()) == [0, 1, 2, 3]


def test_cluster_dictionary_over_all_partitions(tmp_path):
    root = str(tmp_path)
    for i, scale in enumerate(CFG.scales):
        for j, part in enumerate(PARTS):
            _, rows = clustered(3, CFG.dict_shape(scale, part, 1)[1:], seed=10 + 4 * i + j)
            write_rows(root, scale, part, rows, shards=1)
    calls = []
    dictionary, results = cluster_dictionary(root, CFG, KMeansOptions(k=4, niter=3, seed=0),
                                             progress=lambda done, total, key, res: calls.append((done, total, key)))
    assert isinstance(dictionary, ComponentDictionary) and dictionary.k == 4
    for scale in CFG.scales:
        for part in PARTS:
            assert dictionary.shape(scale, part) == CFG.dict_shape(scale, part, 4)
            torch.testing.assert_close(dictionary.tensor(scale, part),
                                       torch.from_numpy(results[(scale, part)].centroids))
    assert [c[0] for c in calls] == list(range(1, 17)) and calls[-1][1] == 16
    provenance = dictionary.metadata["provenance"]
    assert provenance["k"] == 4 and provenance["random_vgg"] is True
    assert provenance["extractor_checksum"] == "c0" and provenance["niter"] == 3
    dictionary.save(tmp_path / "dictionary.safetensors")
    loaded = ComponentDictionary.load(tmp_path / "dictionary.safetensors")
    assert loaded.shape(32, "mouth") == CFG.dict_shape(32, "mouth", 4)


def blob_mixture(k: int, n_per: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """The benchmark's mixture at test size (bench/bench_dictionary.py): k blobs, centres U(0, 2), noise 0.5,
    clipped at 0 like ReLU features → (k·n_per, C, h, w) float32 rows of random blobs."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 2, size=(k, *shape))
    return np.maximum(centres[rng.integers(0, k, k * n_per)] + rng.normal(0, 0.5, (k * n_per, *shape)),
                      0).astype(np.float32)


def test_inertia_matches_scikit_learn_on_a_blob_mixture(tmp_path):
    # One D²-drawn seed per centre leaves blobs of this mixture without a centre: 4-16 % above scikit-learn.
    sklearn = pytest.importorskip("sklearn.cluster")
    k, scale, part = 32, 32, "mouth"  # (32, 6, 6) entries for CFG: d = 1,152
    rows = blob_mixture(k, 16, CFG.dict_shape(scale, part, 1)[1:], seed=1)
    write_rows(str(tmp_path), scale, part, rows)
    flat = rows.reshape(len(rows), -1).astype(np.float16).astype(np.float32)  # what the Parquet files hold
    for seed in range(3):
        ours = kmeans_partition(str(tmp_path), scale, part, KMeansOptions(k=k, seed=seed)).inertia
        theirs = sklearn.KMeans(n_clusters=k, n_init=1, max_iter=20, random_state=seed).fit(flat).inertia_ / len(flat)
        assert ours <= 1.01 * theirs, f"seed {seed}: inertia {ours:.1f}, scikit-learn {theirs:.1f}"


def test_greedy_seeding_tries_candidates_and_refuses_zero():
    rows = blob_mixture(16, 8, (64, 1, 1), seed=2).reshape(128, -1)
    sq = np.einsum("ij,ij->i", rows, rows, dtype=np.float64)

    def potential(centres: np.ndarray) -> float:
        return float((((rows[:, None] - centres[None]) ** 2).sum(-1)).min(axis=1).sum())

    greedy = np.mean([potential(kmeans_plus_plus(rows, 16, seed)) for seed in range(5)])
    plain = np.mean([potential(kmeans_plus_plus(rows, 16, seed, trials=1)) for seed in range(5)])
    assert greedy < 0.95 * plain  # keeping the best of 8·(2 + ⌊ln 16⌋) = 32 candidates lowers the potential
    assert np.allclose(sq_distances(rows, sq, np.array([0, 5]))[:, 1], ((rows - rows[5]) ** 2).sum(1),
                       rtol=1e-4, atol=1e-2)
    assert default_trials(64) == 48 and default_trials(512) == 64
    with pytest.raises(ValueError, match="must be >= 1, got 0 and 1024"):
        kmeans_plus_plus(rows, 4, seed=0, trials=0)
    with pytest.raises(ValueError, match="init_trials and init_sketch must be >= 1 or None, got None and 0"):
        KMeansOptions(init_sketch=0)


def test_sketch_keeps_distances_and_seeds_are_rows():
    rows = blob_mixture(8, 8, (4096, 1, 1), seed=3).reshape(64, -1)
    z = sketch_rows(rows, 1024, np.random.default_rng(0))
    assert z.shape == (64, 1024) and z.dtype == np.float32
    exact = ((rows[:, None] - rows[None]) ** 2).sum(-1)[np.triu_indices(64, 1)]
    sketched = ((z[:, None] - z[None]) ** 2).sum(-1)[np.triu_indices(64, 1)]
    ratio = sketched / exact
    assert abs(ratio.mean() - 1) < 0.01 and ratio.std() < 0.06  # unbiased, spread ≈ √(2/1024) = 4.4 %
    np.testing.assert_array_equal(z, sketch_rows(rows, 1024, np.random.default_rng(0)))
    with pytest.raises(ValueError, match=r"sketch width must be in \[1, d = 4096\), got 4096"):
        sketch_rows(rows, 4096, np.random.default_rng(0))
    seeds = kmeans_plus_plus(rows, 8, seed=0)  # 4,096 > 1,024 wide: seeded on the sketch
    assert all(np.any(np.all(rows == centre, axis=1)) for centre in seeds)
