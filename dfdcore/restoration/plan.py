"""What a restore run will read and write, decided before any work.

``plan_outputs`` keeps a run from reading its own outputs (an output folder inside, or equal to, an input folder)
and from writing two inputs to one output name. Output names mirror input paths without their extension
(``a/photo.webp`` → ``restored_imgs/a/photo.png``, ``cmp/a/photo.png``); inputs that would share one — same path
but for the extension, or but for letter case (one file on case-insensitive stores) — each get ``~`` and the first
8 hex digits of the SHA-256 of their relative path added: ``photo~1f3a09c2.png``. The rule depends only on the
set of input paths, so reruns over the same inputs give the same names.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

from dfdcore.io.storage import Source, is_local, join_uri

MANIFEST_NAME = "manifest.parquet"
OUTPUT_FOLDERS = ("restored_imgs", "cmp", "cropped_faces", "restored_faces", MANIFEST_NAME)


def plan_outputs(sources: Sequence[Source], out: str) -> tuple[list[Source], list[Source]]:
    """(sources to work on, each with its output ``stem``; sources left out because they are this output's files).
    Raises ValueError listing inputs whose names stay equal after disambiguation (not known to happen)."""
    roots = [_normal(join_uri(out, folder)) for folder in OUTPUT_FOLDERS]
    kept, excluded = [], []
    for source in sources:
        uri = _normal(source.uri)
        (excluded if any(uri == root or uri.startswith(root + "/") for root in roots) else kept).append(source)
    return assign_stems(kept), excluded


def check_left_out(excluded: Sequence[Source], out: str, rows: Mapping[str, Mapping]) -> None:
    """Refuse (ValueError) when files found in the output's own folders were not written by dfd (not outputs of
    any manifest row, not manifest parts): they are someone's inputs, and restoring would overwrite them."""
    ours = {_normal(str(uri)) for row in rows.values() for uri in row.get("outputs") or ()}
    manifest = _normal(join_uri(out, MANIFEST_NAME))
    foreign = [s.uri for s in excluded if _normal(s.uri) not in ours and not _normal(s.uri).startswith(manifest + "/")]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(f"the output {out} lies inside an input, and its folders ({', '.join(OUTPUT_FOLDERS[:4])}) "
                         f"already hold files dfd did not write: {shown}. Restoring would overwrite them; choose an "
                         f"output folder outside the inputs")


def assign_stems(sources: Sequence[Source]) -> list[Source]:
    """``sources`` with ``stem`` set: relpath without extension, disambiguated where two would collide."""
    natural = {s.uri: s.stem or str(PurePosixPath(s.relpath).with_suffix("")) for s in sources if s.skip is None}
    groups: dict[str, list[Source]] = defaultdict(list)
    for source in sources:
        if source.skip is None:
            groups[natural[source.uri].casefold()].append(source)
    stems = dict(natural)
    for members in groups.values():
        if len(members) > 1:
            for source in members:
                digest = hashlib.sha256(source.relpath.encode("utf-8", "surrogateescape")).hexdigest()[:8]
                stems[source.uri] = f"{natural[source.uri]}~{digest}"
    clashes = defaultdict(list)
    for uri, stem in stems.items():
        clashes[stem.casefold()].append(uri)
    left = [uris for uris in clashes.values() if len(uris) > 1]
    if left:
        raise ValueError(f"these inputs would write to the same output names even after disambiguation: {left}")
    return [dataclasses.replace(s, stem=stems[s.uri]) if s.skip is None else s for s in sources]


def _normal(uri: str) -> str:
    if is_local(uri):
        return os.path.realpath(uri.removeprefix("file://"))
    return uri.rstrip("/")

