"""Where images come from and results go: local paths, globs and fsspec URLs (s3://, file://, memory://, ...).

URIs in and out are plain strings: local files as absolute paths, everything else as ``protocol://path``.
Every filesystem is opened through ``storage_options_for``, the one place that reads connection settings from the
environment.
"""
from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import fsspec
from fsspec.core import split_protocol, url_to_fs
from fsspec.implementations.local import LocalFileSystem

from .atomic import atomic_path

IMAGE_EXTENSIONS = ("jpg", "jpeg", "jpe", "jfif", "png", "bmp", "tif", "tiff", "webp", "ppm", "pgm", "pbm", "pnm")
_S3_PROTOCOLS = frozenset({"s3", "s3a"})
# Stores where one upload replaces an object whole, so writing in place is already atomic.
_OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "memory"})
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Source:
    """One input image: ``uri`` to read it from, ``relpath`` ("a/b.jpg") below the input it was found under
    (its basename when the input named the file itself), to lay out outputs the same way."""

    uri: str
    relpath: str


def storage_options_for(uri: str) -> dict[str, object]:
    """fsspec options for ``uri``'s filesystem, from the standard environment.

    botocore reads AWS_ENDPOINT_URL(_S3) itself, but fsspec caches filesystem instances by their options, so an
    endpoint left implicit would stick to the first instance made in the process; naming it makes the endpoint part
    of the cache key. Listing caches are off: another worker may add files between our calls.
    """
    protocol = split_protocol(uri)[0]
    if protocol not in _S3_PROTOCOLS:
        return {}
    options: dict[str, object] = {"use_listings_cache": False}
    endpoint = _s3_endpoint_from_env()
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


def list_images(inputs: Sequence[str], extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Source]:
    """Expand inputs (files, folders, globs, fsspec URLs of files or prefixes) → Sources sorted by uri, each once.

    Folders and prefixes are searched recursively and globs expanded ("**" spans folders); from those only files
    with one of ``extensions`` (any case) are taken, skipping hidden files and folders (".name"). A file named
    explicitly is always taken, whatever its extension: if it is not an image, decoding it fails later for that
    file alone. Raises FileNotFoundError for an input that names nothing, or a glob that matches no image.
    When one file is found under several inputs, the first input's relpath is kept.
    """
    wanted = frozenset(ext.lower().lstrip(".") for ext in extensions)
    found: dict[str, Source] = {}
    for spec in inputs:
        for source in _expand(str(spec), wanted):
            found.setdefault(source.uri, source)
    return [found[uri] for uri in sorted(found)]


def read_bytes(uri: str) -> bytes:
    """The whole content of the file at ``uri``. FileNotFoundError when there is none."""
    fs, path = filesystem_for(uri)
    return fs.cat_file(path)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` so that readers see the old content or all of the new, never a part.

    Local files: a temp file beside, fsynced, renamed over (parent folders created). Object stores: one upload is
    already all-or-nothing, so it is written in place. Other filesystems: upload beside, then rename.
    """
    fs, path = filesystem_for(uri)
    if isinstance(fs, LocalFileSystem):
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return
    if _protocol_of(fs) in _OBJECT_STORE_PROTOCOLS:
        fs.pipe_file(path, data)
        return
    parent, name = posixpath.split(path)
    tmp = posixpath.join(parent, f".{name}.{uuid.uuid4().hex}.part")
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm_file(tmp)


def join_uri(base: str, relpath: str) -> str:
    """``base`` (local path or URL) / ``relpath`` ("a/b.png"). ValueError when relpath would leave ``base``."""
    parts = relpath.replace("\\", "/").split("/")
    if relpath.startswith(("/", "\\")) or ".." in parts or not relpath or "://" in relpath:
        raise ValueError(f"expected a relative path inside the output root, got {relpath!r}")
    parts = [part for part in parts if part not in ("", ".")]
    if is_local(base):
        return os.path.join(base, *parts)
    return base.rstrip("/") + "/" + "/".join(parts)


def exists(uri: str) -> bool:
    """Whether a file or folder exists at ``uri``."""
    fs, path = filesystem_for(uri)
    return fs.exists(path)


def is_local(uri: str) -> bool:
    """Whether ``uri`` is a plain local path or a file:// URL."""
    return split_protocol(uri)[0] in (None, "file", "local")


def filesystem_for(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for ``uri``, opened with ``storage_options_for(uri)``."""
    return url_to_fs(uri, **storage_options_for(uri))


def _s3_endpoint_from_env() -> str | None:
    # Same precedence as botocore: the service-specific variable wins; the switch turns both off.
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _protocol_of(fs: fsspec.AbstractFileSystem) -> str:
    protocol = fs.protocol
    return protocol if isinstance(protocol, str) else protocol[0]


def _uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URI we report for ``path``: an absolute path for local files, protocol://path otherwise."""
    if isinstance(fs, LocalFileSystem):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def _expand(spec: str, wanted: frozenset[str]) -> list[Source]:
    fs, path = filesystem_for(spec)
    path = path.rstrip("/") or path
    # A literal name wins over a glob reading of it: "photo [1].jpg" is a file, not a pattern.
    if fs.isfile(path):
        return [Source(_uri(fs, path), posixpath.basename(path))]
    if fs.isdir(path):
        return _under(fs, path, fs.find(path), wanted)
    if _GLOB_CHARS & set(path):
        root = _glob_root(path)
        matches = [match for match, info in fs.glob(path, detail=True).items() if info.get("type") == "file"]
        sources = _under(fs, root, matches, wanted)
        if not sources:
            raise FileNotFoundError(f"{spec}: the pattern matches no image files (extensions {sorted(wanted)})")
        return sources
    raise FileNotFoundError(f"{spec}: no such file or folder")


def _under(fs: fsspec.AbstractFileSystem, root: str, paths: Iterable[str], wanted: frozenset[str]) -> list[Source]:
    """Sources for the image files among ``paths`` (all below ``root``), relpaths taken from ``root``."""
    sources = []
    prefix = root.rstrip("/") + "/"
    for path in paths:
        relpath = path[len(prefix):] if path.startswith(prefix) else posixpath.basename(path)
        if any(part.startswith(".") for part in relpath.split("/")):
            continue
        if posixpath.splitext(relpath)[1].lower().lstrip(".") in wanted:
            sources.append(Source(_uri(fs, path), relpath))
    return sources


def _glob_root(pattern: str) -> str:
    """The folder above a glob's first wildcard: "b/photos/**/*.png" → "b/photos"."""
    parts = pattern.split("/")
    fixed = []
    for part in parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return "/".join(fixed) or ("/" if pattern.startswith("/") else "")
