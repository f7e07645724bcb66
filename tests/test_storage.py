"""Finding, reading and writing files on local disk and on a real S3 API (moto's server on loopback)."""
from __future__ import annotations

import hashlib
import os
import threading

import pytest

from dfdcore.io import Source, exists, join_uri, list_images, read_bytes, storage_options_for, write_bytes_atomic

from .s3server import create_bucket, s3_server  # noqa: F401  (fixture)


@pytest.fixture()
def photo_tree(tmp_path):
    """photos/a.jpg, photos/B.PNG, photos/trip/day1/c.jpeg, photos/trip/notes.txt, photos/.cache/d.jpg, x.webp"""
    files = ["photos/a.jpg", "photos/B.PNG", "photos/trip/day1/c.jpeg", "photos/trip/notes.txt",
             "photos/.cache/d.jpg", "x.webp"]
    for relpath in files:
        path = tmp_path / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(relpath.encode())
    return tmp_path


def _pairs(sources: list[Source], root) -> list[tuple[str, str]]:
    return [(os.path.relpath(source.uri, root), source.relpath) for source in sources]


def test_folder_is_searched_recursively_for_images_only(photo_tree):
    sources = list_images([str(photo_tree / "photos")])
    assert _pairs(sources, photo_tree) == [
        ("photos/B.PNG", "B.PNG"), ("photos/a.jpg", "a.jpg"), ("photos/trip/day1/c.jpeg", "trip/day1/c.jpeg")]
    assert all(os.path.isabs(source.uri) for source in sources)


def test_glob_single_file_and_duplicates(photo_tree, monkeypatch):
    monkeypatch.chdir(photo_tree)
    sources = list_images(["photos/**/*.jpeg", "x.webp", "photos/trip/notes.txt", "photos/*.jpg",
                           str(photo_tree / "photos" / "a.jpg"), f"file://{photo_tree}/x.webp"])
    assert _pairs(sources, photo_tree) == [
        ("photos/a.jpg", "a.jpg"),
        ("photos/trip/day1/c.jpeg", "trip/day1/c.jpeg"),
        # Named explicitly, so taken whatever its extension: decoding it will fail for it alone.
        ("photos/trip/notes.txt", "notes.txt"),
        ("x.webp", "x.webp"),
    ]


def test_missing_input_and_empty_glob_are_clear_errors(photo_tree):
    with pytest.raises(FileNotFoundError, match="nope.jpg: no such file or folder"):
        list_images([str(photo_tree / "nope.jpg")])
    with pytest.raises(FileNotFoundError, match=r"\*\.gif: the pattern matches no image files"):
        list_images([str(photo_tree / "photos" / "*.gif")])


def test_extensions_can_be_chosen(photo_tree):
    sources = list_images([str(photo_tree / "photos")], extensions=[".TXT"])
    assert [source.relpath for source in sources] == ["trip/notes.txt"]


def test_local_atomic_write_leaves_only_the_file(tmp_path):
    target = str(tmp_path / "out" / "deep" / "result.png")
    write_bytes_atomic(target, b"first")
    write_bytes_atomic(target, b"second version")
    assert read_bytes(target) == b"second version"
    assert sorted(p.name for p in (tmp_path / "out" / "deep").iterdir()) == ["result.png"]
    assert exists(target) and not exists(str(tmp_path / "out" / "other.png"))


def test_local_write_failure_keeps_old_content(tmp_path):
    target = str(tmp_path / "kept.bin")
    write_bytes_atomic(target, b"old")
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert read_bytes(target) == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.bin"]


def test_concurrent_writers_never_expose_a_partial_file(tmp_path):
    target = str(tmp_path / "shared.bin")
    payloads = [bytes([n]) * 200_000 for n in range(4)]
    write_bytes_atomic(target, payloads[0])
    seen = []

    def writer(data):
        for _ in range(10):
            write_bytes_atomic(target, data)

    threads = [threading.Thread(target=writer, args=(data,)) for data in payloads]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        seen.append(read_bytes(target))
    for thread in threads:
        thread.join()
    assert all(data in payloads for data in seen)
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]


def test_join_uri():
    assert join_uri("/out", "a/b.png") == "/out/a/b.png"
    assert join_uri("s3://bucket/run/", "a/b.png") == "s3://bucket/run/a/b.png"
    assert join_uri("s3://bucket", "./x.png") == "s3://bucket/x.png"
    for bad in ("../x.png", "/etc/passwd", "a/../../x", "", "s3://other/x"):
        with pytest.raises(ValueError, match="relative path inside the output root"):
            join_uri("s3://bucket/run", bad)


def test_storage_options_read_the_endpoint_from_the_environment(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert storage_options_for("s3://b/k")["endpoint_url"] == "http://127.0.0.1:9"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:10")
    assert storage_options_for("s3://b/k")["endpoint_url"] == "http://127.0.0.1:10"
    assert storage_options_for("/local/file.jpg") == {}


def test_s3_list_read_write_join(s3_server):
    bucket = create_bucket(s3_server, "photos")
    for relpath in ("set/a.jpg", "set/sub/b.PNG", "set/sub/readme.md", "set/.hidden/c.jpg", "other/d.jpg"):
        write_bytes_atomic(join_uri(bucket, relpath), relpath.encode())
    prefix = list_images([f"{bucket}/set"])
    assert prefix == [Source("s3://photos/set/a.jpg", "a.jpg"), Source("s3://photos/set/sub/b.PNG", "sub/b.PNG")]
    assert list_images([f"{bucket}/set/"]) == prefix
    assert [s.listing for s in prefix] == [f"etag:{hashlib.md5(name.encode()).hexdigest()};size:{len(name)}"
                                           for name in ("set/a.jpg", "set/sub/b.PNG")]  # S3's ETag: the MD5
    globbed = list_images([f"{bucket}/set/**/*.PNG", f"{bucket}/other/d.jpg"])
    assert globbed == [Source("s3://photos/other/d.jpg", "d.jpg"), Source("s3://photos/set/sub/b.PNG", "sub/b.PNG")]
    assert read_bytes("s3://photos/set/sub/b.PNG") == b"set/sub/b.PNG"
    out = join_uri(bucket, "results/run1/a.png")
    assert not exists(out)
    write_bytes_atomic(out, b"restored")
    assert exists(out) and read_bytes(out) == b"restored"
    write_bytes_atomic(out, b"restored again")
    assert read_bytes(out) == b"restored again"
    with pytest.raises(FileNotFoundError):
        read_bytes(f"{bucket}/nothing.jpg")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list_images([f"{bucket}/nothing"])


def test_s3_state_does_not_leak_between_tests(s3_server):
    assert not exists("s3://photos/set/a.jpg")
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server


def test_s3_odd_keys_and_other_files_are_listed_with_a_reason_to_skip(s3_server):
    import boto3

    bucket = create_bucket(s3_server, "odd")
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    for key in ("in/a.jpg", "in//x.jpg", "in/./y.jpg", "in/../z.jpg", "in/notes.txt"):
        client.put_object(Bucket="odd", Key=key, Body=b"data")
    listed = {s.relpath: s.skip for s in list_images([f"{bucket}/in"], with_others=True)}
    assert listed["a.jpg"] is None and "not an image file name (.txt)" in listed["notes.txt"]
    odd = {relpath: skip for relpath, skip in listed.items() if relpath not in ("a.jpg", "notes.txt")}
    assert len(odd) == 3 and all("cannot be mirrored inside the output" in skip for skip in odd.values()), listed
    assert [s.relpath for s in list_images([f"{bucket}/in"])] == ["a.jpg"]  # without others: images only
