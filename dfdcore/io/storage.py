"""Where images come from and results go: local paths, globs and fsspec URLs (s3://, file://, memory://, ...).

URIs in and out are plain strings: local files as absolute paths, everything else as ``protocol://path``.
Every filesystem is opened through ``storage_options_for``, the one place that reads connection settings from the
environment.
"""
from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import fsspec
from fsspec.core import split_protocol, url_to_fs
from fsspec.implementations.local import LocalFileSystem

from dfdcore.io.atomic import atomic_path
from dfdcore.io.video import VIDEO_EXTENSIONS

IMAGE_EXTENSIONS = ("jpg", "jpeg", "jpe", "jfif", "png", "bmp", "tif", "tiff", "webp", "ppm", "pgm", "pbm", "pnm")
# What ``dfd restore`` and the restore_bucket flow take from folders: photos and videos. ``list_images`` lists photos
# unless given these (dictionary building and training read photos only).
RESTORABLE_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
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
    skip: str | None = None  # why a listed file is not read (not an image name, not a regular file, odd key)
    stem: str | None = None  # output path without extension, when not relpath's (see bulk.plan_outputs)
    # What the listing said of the object, without reading it: "etag:…" on object stores, "size:…;mtime:…" on file
    # systems (None when the listing said neither). A rerun whose listing matches the manifest's skips the object
    # without downloading it; see ``listing_signature``. Not part of a Source's equality: the same object.
    listing: str | None = field(default=None, compare=False)


class UnreadableInput(OSError):
    """An input that was not read: ``reason`` short and stable ("not a regular file", "file too large",
    "read timed out"), ``detail`` says more. ``skipped`` inputs are not errors (a FIFO, a device)."""

    def __init__(self, reason: str, detail: str, skipped: bool = False):
        self.reason, self.detail, self.skipped = reason, detail, skipped
        super().__init__(f"{reason} ({detail})")

    def __reduce__(self):
        return type(self), (self.reason, self.detail, self.skipped)


DEFAULT_MAX_BYTES = 512 * 2**20      # no image we can restore in memory needs more
DEFAULT_READ_TIMEOUT_S = 300.0       # per file: a stalled mount or a slow-drip server becomes a row, not a hang
_READ_BLOCK = 4 * 2**20


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


def list_images(inputs: Sequence[str], extensions: Iterable[str] = IMAGE_EXTENSIONS, *,
                with_others: bool = False) -> list[Source]:
    """Expand inputs (files, folders, globs, fsspec URLs of files or prefixes) → Sources sorted by uri, each once.

    Folders and prefixes are searched recursively and globs expanded ("**" spans folders); from those only files
    with one of ``extensions`` (any case) are taken, skipping hidden files and folders (".name"). A file named
    explicitly is always taken, whatever its extension: if it is not an image, decoding it fails later for that
    file alone. Raises FileNotFoundError for an input that names nothing, or a glob that matches no image.
    When one file is found under several inputs, the first input's relpath is kept.

    ``with_others``: also list, with ``skip`` saying why, the other visible files of folders and prefixes (other
    extensions, keys with empty/"."/".." segments) and explicitly named special files (FIFOs, devices), so that
    every file a user pointed at is accounted for.
    """
    wanted = frozenset(ext.lower().lstrip(".") for ext in extensions)
    found: dict[str, Source] = {}
    for spec in inputs:
        for source in _expand(str(spec), wanted, with_others):
            found.setdefault(source.uri, source)
    return [found[uri] for uri in sorted(found)]


def read_bytes(uri: str) -> bytes:
    """The whole content of the file at ``uri``. FileNotFoundError when there is none."""
    fs, path = filesystem_for(uri)
    return fs.cat_file(path)


def read_input(uri: str, max_bytes: int = DEFAULT_MAX_BYTES,
               timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> bytes:
    """The bytes of the regular file at ``uri``, at most ``max_bytes`` of them, read within ``timeout_s``.

    Raises UnreadableInput for special files (FIFOs, devices, sockets — also behind symlinks: reading them would
    block or never end), files over ``max_bytes`` and reads that take too long; FileNotFoundError when missing.
    """
    fs, path = filesystem_for(uri)
    if isinstance(fs, LocalFileSystem):
        return _read_local(path, max_bytes, timeout_s)
    info = fs.info(path)
    if info.get("type") != "file":
        raise UnreadableInput("not a regular file", f"{info.get('type')}", skipped=True)
    _check_size(info.get("size") or 0, max_bytes)
    with fs.open(path, "rb") as handle:
        return _read_blocks(handle.read, max_bytes, timeout_s)


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path with the content of the regular file at ``uri``, for readers that seek (videos): the file
    itself when local, else a download into a temporary file of the dfd home, removed afterwards. Raises
    UnreadableInput for special files, FileNotFoundError when missing."""
    fs, path = filesystem_for(uri)
    if isinstance(fs, LocalFileSystem):
        kind = special_file_kind(path)
        if kind == "a broken symbolic link":
            raise FileNotFoundError(f"{path}: a broken symbolic link")
        if kind:
            raise UnreadableInput("not a regular file", kind, skipped=True)
        yield path
        return
    info = fs.info(path)
    if info.get("type") != "file":
        raise UnreadableInput("not a regular file", f"{info.get('type')}", skipped=True)
    from dfdcore.runtime import dfd_home

    fd, local = tempfile.mkstemp(dir=dfd_home(), prefix="input-", suffix=posixpath.splitext(path)[1])
    os.close(fd)
    try:
        fs.get_file(path, local)
        yield local
    finally:
        os.unlink(local)


def special_file_kind(path: str) -> str | None:
    """What a local path is when it is not a regular file or folder ("a FIFO", "a broken symbolic link", ...);
    None for regular files, folders and paths that do not exist."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else None
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def _read_local(path: str, max_bytes: int, timeout_s: float) -> bytes:
    kind = special_file_kind(path)
    if kind == "a broken symbolic link":
        raise FileNotFoundError(f"{path}: a broken symbolic link")
    if kind:
        raise UnreadableInput("not a regular file", kind, skipped=True)
    # O_NONBLOCK: should the path become a FIFO between the check and the open, opening must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb", buffering=0) as handle:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise UnreadableInput("not a regular file", "changed while being opened", skipped=True)
        _check_size(status.st_size, max_bytes)
        return _read_blocks(handle.read, max_bytes, timeout_s)


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise UnreadableInput("file too large", f"{size} bytes, more than the limit of {max_bytes}")


def _read_blocks(read, max_bytes: int, timeout_s: float) -> bytes:
    deadline = time.monotonic() + timeout_s
    blocks, total = [], 0
    while True:
        block = read(_READ_BLOCK)
        if not block:
            return b"".join(blocks)
        blocks.append(block)
        total += len(block)
        if total > max_bytes:  # the file grew past its listed size
            raise UnreadableInput("file too large", f"more than the limit of {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise UnreadableInput("read timed out", f"{total} bytes in {timeout_s:.0f} s")


def storage_refused(exc: OSError) -> bool:
    """Whether a failed write means the output storage itself refuses (full, over quota, read-only, no permission):
    then every later write fails too, and a run stops instead of failing each input in turn."""
    return exc.errno in _REFUSING_ERRNOS or isinstance(exc, PermissionError)


_REFUSING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


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


def uri_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URI we report for ``path``: an absolute path for local files, protocol://path otherwise."""
    if isinstance(fs, LocalFileSystem):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def _expand(spec: str, wanted: frozenset[str], with_others: bool) -> list[Source]:
    fs, path = filesystem_for(spec)
    path = path.rstrip("/") or path
    # A literal name wins over a glob reading of it: "photo [1].jpg" is a file, not a pattern.
    if fs.isfile(path):
        return [Source(uri_of(fs, path), posixpath.basename(path), listing=listing_signature(fs.info(path)))]
    if fs.isdir(path):
        return _under(fs, path, fs.find(path, detail=True), wanted, with_others)
    if isinstance(fs, LocalFileSystem) and os.path.lexists(path):
        kind = special_file_kind(path)
        if with_others:
            return [Source(uri_of(fs, path), posixpath.basename(path), skip=f"not a regular file: {kind}")]
        raise FileNotFoundError(f"{spec}: not a regular file or folder ({kind})")
    if _GLOB_CHARS & set(path):
        root = _glob_root(path)
        matches = {match: info for match, info in fs.glob(path, detail=True).items() if info.get("type") == "file"}
        sources = _under(fs, root, matches, wanted, with_others)
        if not sources:
            raise FileNotFoundError(f"{spec}: the pattern matches no image files (extensions {sorted(wanted)})")
        return sources
    raise FileNotFoundError(f"{spec}: no such file or folder")


def listing_signature(info: Mapping[str, object]) -> str | None:
    """An object's identity as its listing gives it, from fsspec's ``info``: the ETag where the store has one (S3:
    it changes with the content), else size and modification time; None when the listing has neither."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))};size:{info.get('size')}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if mtime is None or info.get("size") is None:
        return None
    if hasattr(mtime, "isoformat"):
        mtime = mtime.isoformat()
    return f"size:{info['size']};mtime:{mtime}"


def _under(fs: fsspec.AbstractFileSystem, root: str, infos: Mapping[str, Mapping[str, object]],
           wanted: frozenset[str], with_others: bool) -> list[Source]:
    """Sources for the image files among ``infos`` (path → fsspec info, all below ``root``), relpaths taken from
    ``root``; with ``with_others`` the other visible files too, each with its reason to be skipped."""
    sources = []
    prefix = root.rstrip("/") + "/"
    for path, info in infos.items():
        relpath = path[len(prefix):] if path.startswith(prefix) else posixpath.basename(path)
        parts = relpath.split("/")
        if any(part.startswith(".") and part not in (".", "..") for part in parts):
            continue  # hidden files and folders (.DS_Store, .git, our own .part files)
        ext = posixpath.splitext(relpath)[1].lower().lstrip(".")
        if any(part in ("", ".", "..") for part in parts):
            skip = "key has an empty, '.' or '..' segment: it cannot be mirrored inside the output"
        elif ext not in wanted:
            skip = (f"not an image file name ({'.' + ext if ext else 'no extension'}); images and videos are "
                    f"{', '.join('.' + e for e in sorted(wanted))}")
        else:
            skip = None
        if skip is None or with_others:
            sources.append(Source(uri_of(fs, path), relpath, skip, listing=listing_signature(info)))
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
