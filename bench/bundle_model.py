"""Copy a trained generator and its dictionary into the package as a bundled model, with their sha256 recorded.

    python bench/bundle_model.py real/pd/train/generator.safetensors real/pd/dictionary/dictionary.safetensors \
        --name dfd-pd-128 --card docs/model-card.md

writes ``dfdcore/assets/models/NAME/{generator,dictionary}.safetensors`` and ``model.json`` (name, files, sha256,
sizes, face size, width and the generator's own validation). The generator's provenance keeps the last two parts
of each path it names (the run and the file), not the training machine's folders. ``dfdcore.models.bundled``
checks those digests before the model is used. Only data anyone may redistribute may have trained a bundled model
(see the model card).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from safetensors import safe_open

import dfdcore
from dfdcore.api import trained_validation

BUDGET_BYTES = 25 * 1024 * 1024  # generator + dictionary, issue 24


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def without_machine_paths(value):
    """``value`` (a provenance: nested dicts, lists, strings) with each absolute path cut to its last two parts
    ("/work/real/pd/ft-id64m3/faceset.parquet" → "ft-id64m3/faceset.parquet"): a bundled file names the run and
    the file, not the folders of the machine that trained it."""
    if isinstance(value, dict):
        return {key: without_machine_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_machine_paths(item) for item in value]
    if isinstance(value, str) and value.startswith("/") and "\n" not in value:
        return "/".join(Path(value).parts[-2:])
    return value


def copy_generator(source: Path, target: Path) -> None:
    """The generator file with its tensor bytes unchanged and its metadata's provenance ``without_machine_paths``:
    only the JSON header is rewritten (keys in their order, padded to 8 bytes as the format asks), so the same
    source always gives the same bytes."""
    data = source.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    meta = header.get("__metadata__", {})
    if "provenance" in meta:
        meta["provenance"] = json.dumps(without_machine_paths(json.loads(meta["provenance"])))
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    target.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data[8 + length:])


def same_tensors(a: Path, b: Path) -> bool:
    import torch

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        return set(fa.keys()) == set(fb.keys()) and all(torch.equal(fa.get_tensor(k), fb.get_tensor(k))
                                                         for k in fa.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generator", type=Path, help="dfd generator .safetensors (a training run's export)")
    parser.add_argument("dictionary", type=Path, help="its component dictionary .safetensors")
    parser.add_argument("--name", default="dfd-pd-128")
    parser.add_argument("--card", default="docs/model-card.md", help="the model card, recorded as a pointer")
    parser.add_argument("--validations", type=Path, help="a run's validations.json: the figures of --step are recorded "
                        "(for a generator exported from a checkpoint, whose file carries none)")
    parser.add_argument("--step", type=int, help="the step of --validations to record")
    parser.add_argument("--keep-dictionary", action="store_true",
                        help="leave the bundled dictionary file as it is (its tensors must equal the given one's): "
                             "a new generator for the same dictionary keeps its sha256")
    args = parser.parse_args()
    folder = Path(dfdcore.__file__).parent / "assets" / "models" / args.name
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, source in (("generator", args.generator), ("dictionary", args.dictionary)):
        target = folder / f"{role}.safetensors"
        if role == "generator":
            copy_generator(source, target)
        elif args.keep_dictionary and target.exists():
            if not same_tensors(source, target):
                raise SystemExit(f"--keep-dictionary: {target}'s tensors differ from {source}'s")
        else:
            shutil.copyfile(source, target)
        files[role] = {"file": target.name, "sha256": sha256(target), "bytes": target.stat().st_size}
    total = sum(f["bytes"] for f in files.values())
    if total > BUDGET_BYTES:
        raise SystemExit(f"{total / 2**20:.1f} MB: over the {BUDGET_BYTES / 2**20:.0f} MB budget")
    with safe_open(str(folder / "generator.safetensors"), "pt") as f:
        meta = f.metadata() or {}
    record = {"name": args.name, "card": args.card, "files": files,
              "config": json.loads(meta.get("config", "{}")),
              "validation": trained_validation(folder / "generator.safetensors")}
    if args.validations:
        chosen = [v for v in json.loads(args.validations.read_text()) if v.get("step") == args.step]
        if not chosen:
            raise SystemExit(f"{args.validations}: no validation at step {args.step}")
        record["validation"] = chosen[0]
    (folder / "model.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.name}: {total / 2**20:.1f} MB in {folder}")


if __name__ == "__main__":
    main()
