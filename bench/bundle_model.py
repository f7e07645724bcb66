"""Copy a trained generator and its dictionary into the package as a bundled model, with their sha256 recorded.

    python bench/bundle_model.py real/pd/train/generator.safetensors real/pd/dictionary/dictionary.safetensors \
        --name dfd-pd-128 --card docs/model-card.md

writes ``dfdcore/assets/models/NAME/{generator,dictionary}.safetensors`` and ``model.json`` (name, files, sha256,
sizes, face size, width and the generator's own validation). ``dfdcore.models.bundled`` checks those digests before
the model is used. Only data anyone may redistribute may have trained a bundled model (see the model card).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generator", type=Path, help="dfd generator .safetensors (a training run's export)")
    parser.add_argument("dictionary", type=Path, help="its component dictionary .safetensors")
    parser.add_argument("--name", default="dfd-pd-128")
    parser.add_argument("--card", default="docs/model-card.md", help="the model card, recorded as a pointer")
    parser.add_argument("--validations", type=Path, help="a run's validations.json: the figures of --step are recorded "
                        "(for a generator exported from a checkpoint, whose file carries none)")
    parser.add_argument("--step", type=int, help="the step of --validations to record")
    args = parser.parse_args()
    folder = Path(dfdcore.__file__).parent / "assets" / "models" / args.name
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, source in (("generator", args.generator), ("dictionary", args.dictionary)):
        target = folder / f"{role}.safetensors"
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
