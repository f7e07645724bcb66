"""The work folders of videos being restored: ``OUT/.dfd-video/<content>-<config>-<N>f/`` (see
``dfdcore.restoration.video``), local or in an object store — where segments are written, fetched and published,
and when a folder goes.

A folder goes when its video is finished, when its video fails (``restore_video`` removes it: a failed clip
leaves nothing behind), and when a later run finds it stale (``remove_stale_work``). A run that is killed or
interrupted (Ctrl-C) keeps its folder: the rerun resumes from its finished segments.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from dfdcore.io.atomic import atomic_path
from dfdcore.io.storage import filesystem_for, is_local, join_uri

WORK_FOLDER = ".dfd-video"
# A folder holding no finished work (no det-/seg- file) is left by a run killed before its first segment, or by
# a failure an earlier dfd did not clean up; an hour untouched is far beyond the time one segment takes.
STALE_EMPTY_S = 3600.0
# A folder of finished segments is kept for the rerun that resumes it; untouched for a week, it is given up.
STALE_WORK_S = 7 * 24 * 3600.0
WORK_FILES = ("det-", "seg-")


def work_uri(out: str, digest: str, config_hash: str, length: int) -> str:
    """The work folder of the video with content ``digest`` restored with ``config_hash`` in ``length``-frame
    segments."""
    return join_uri(out, f"{WORK_FOLDER}/{work_key(digest, config_hash)}-{length}f")


def work_key(digest: str, config_hash: str) -> str:
    """What a work folder's name starts with: the video's content and configuration."""
    return f"{digest[:16]}-{config_hash}"


@contextlib.contextmanager
def scratch_folder(work: str) -> Iterator[Path]:
    """A local folder for files on their way to (or from) ``work``: the work folder itself when the output is
    local, else a temporary folder in the dfd home (removed afterwards)."""
    if is_local(work):
        Path(work).mkdir(parents=True, exist_ok=True)
        yield Path(work)
        return
    from dfdcore.runtime import dfd_home

    with tempfile.TemporaryDirectory(dir=dfd_home(), prefix="video-") as folder:
        yield Path(folder)


@contextlib.contextmanager
def written(uri: str, scratch: Path) -> Iterator[Path]:
    """A local path to write ``uri``'s content to; on success it becomes ``uri`` at once (a local rename, or one
    upload to an object store), on failure it is removed."""
    if is_local(uri):
        with atomic_path(uri) as tmp:
            yield tmp
        return
    fd, name = tempfile.mkstemp(dir=scratch, prefix=".upload-", suffix=Path(uri).suffix)
    os.close(fd)
    try:
        yield Path(name)
        fs, remote = filesystem_for(uri)
        fs.put_file(name, remote)
    finally:
        Path(name).unlink(missing_ok=True)


def local_file(uri: str, scratch: Path) -> str:
    """A local path holding ``uri``'s content (``uri`` itself when local; else downloaded into ``scratch``)."""
    if is_local(uri):
        return uri
    local = scratch / Path(uri).name
    fs, remote = filesystem_for(uri)
    fs.get_file(remote, str(local))
    return str(local)


def remove_work(work: str) -> None:
    """Delete a work folder, and the folder of work folders when it is left empty."""
    fs, path = filesystem_for(work)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)
    if is_local(work):
        with contextlib.suppress(OSError):  # another video's work is still there
            os.rmdir(os.path.dirname(work))


def remove_stale_work(out: str, finished: Collection[str] | Callable[[], Collection[str]] = (),
                      now: float | None = None) -> list[str]:
    """Delete the work folders under ``out`` that no run will use: untouched for ``STALE_EMPTY_S`` and holding no
    finished work or belonging to a video the manifest records as finished (``finished``: ``work_key``s, or a
    function giving them, called only when there are folders), or untouched for ``STALE_WORK_S``. A folder in
    use is touched by every segment, so it is never taken. Returns the folders removed; a folder that cannot be
    listed or removed is left for the next run."""
    now = time.time() if now is None else now
    root = join_uri(out, WORK_FOLDER)
    fs, root_path = filesystem_for(root)
    try:
        folders = [entry["name"] for entry in fs.ls(root_path, detail=True) if entry.get("type") == "directory"]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError:
        return []
    if folders and callable(finished):
        finished = finished()
    removed = []
    for folder in folders:
        name = folder.rstrip("/").rsplit("/", 1)[-1]
        try:
            files = fs.find(folder, detail=True)
            touched = max([_mtime(info) for info in files.values()] + [_folder_mtime(fs, folder)])
        except OSError:
            continue
        has_work = any(path.rsplit("/", 1)[-1].startswith(WORK_FILES) for path in files)
        done = name.rsplit("-", 1)[0] in finished
        idle = now - touched
        if idle > STALE_WORK_S or (idle > STALE_EMPTY_S and (done or not has_work)):
            uri = join_uri(root, name)
            with contextlib.suppress(OSError):
                remove_work(uri)
                removed.append(uri)
    return removed


def _mtime(info: dict) -> float:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        return value.timestamp() if hasattr(value, "timestamp") else float(value)
    return 0.0


def _folder_mtime(fs, folder: str) -> float:
    """A local folder's own modification time (an empty folder has no file to date it); 0 in an object store,
    where a folder is only the prefix of its files."""
    try:
        return _mtime(fs.info(folder))
    except (OSError, ValueError):
        return 0.0
