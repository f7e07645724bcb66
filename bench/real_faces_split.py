"""Split the team's real faces by person into training and held-out photo folders (the real-faces recipe, step 1).

Held-out people come from the folders where a person can be named from the file name:
- pd-faces: the Bioguide ID (``A000055.jpg``; several folders can hold one person, so the ID, not the file, decides);
- train-faces/webmorph_london: the 3-digit person number (``001_03.jpg`` = person 001, neutral or smiling);
- train-faces/aaf and utkface: one person per image (the datasets' READMEs), so the file is the person.
Every other folder of train-faces goes to training whole (their people are unknown or repeat across folders: ALAE's
celebrities, deepface's, the CelebA-HQ samples), so no person is ever on both sides.

Writes OUT/train/<set>/<folder>/<file> and OUT/test/<set>/<folder>/<file> as symbolic links (the inputs are never
copied or modified) and OUT/split.tsv (path, person, split). Usage:

    python bench/real_faces_split.py ../shared/data -o real/photos --test-fraction 0.1
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
PERSON_RULES = {  # folder (relative to the data root) → person key from the file name; None: the file is the person
    "pd-faces/congress-civicsense": re.compile(r"^([A-Z]\d{6})"),
    "pd-faces/congress-cse151a": re.compile(r"^([A-Z]\d{6})"),
    "pd-faces/congress-hainish-225x275": re.compile(r"^([A-Z]\d{6})"),
    "train-faces/webmorph_london": re.compile(r"^(\d{3})_"),
    "train-faces/aaf": None,
    "train-faces/utkface": None,
}


def person_of(relpath: str) -> str | None:
    """The person key of a photo (relative to the data root), or None when the photo's person is not known."""
    folder, name = relpath.rsplit("/", 1)
    if folder not in PERSON_RULES:
        return None
    rule = PERSON_RULES[folder]
    if rule is None:
        return relpath
    match = rule.match(name)
    prefix = "pd" if folder.startswith("pd-faces/") else folder
    return f"{prefix}:{match[1]}" if match else relpath


def held_out(person: str, fraction: float, seed: int) -> bool:
    """A seeded hash of the person decides: the same person is on the same side in every folder and every run."""
    digest = hashlib.sha256(f"{seed}:{person}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the team's data folder (holding pd-faces/ and train-faces/)")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--sets", default="pd-faces,train-faces", help="comma-separated subfolders of DATA")
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    for name in args.sets.split(","):
        for path in sorted((args.data / name).rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            relpath = path.relative_to(args.data).as_posix()
            person = person_of(relpath)
            split = "test" if person and held_out(person, args.test_fraction, args.seed) else "train"
            link = args.out / split / relpath
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                os.symlink(path.resolve(), link)
            rows.append((relpath, person or "", split))
    people = {split: {p for _, p, s in rows if s == split and p} for split in ("train", "test")}
    assert not people["train"] & people["test"], "a person on both sides"
    (args.out / "split.tsv").write_text("path\tperson\tsplit\n" + "".join("\t".join(r) + "\n" for r in rows))
    for split in ("train", "test"):
        chosen = [r for r in rows if r[2] == split]
        by_set = {s: sum(r[0].startswith(s + "/") for r in chosen) for s in args.sets.split(",")}
        print(f"{split}: {len(chosen)} photos ({', '.join(f'{k} {v}' for k, v in by_set.items())}), "
              f"{len(people[split])} named people")


if __name__ == "__main__":
    main()
