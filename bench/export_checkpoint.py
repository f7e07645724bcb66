"""Export the generator (its EMA copy when the run keeps one) of one training checkpoint as a dfd ``.safetensors``.

A run exports its last and its best validated generator by itself; this is for any other step — e.g. the end of a
pixel-only warm-up (``dfd train --identity-start N``), the pixel-only model to set beside the final one:

    python bench/export_checkpoint.py real/train/checkpoints/step_00010000/train_state.pt -o real/pixel-only.safetensors

(Runs made before Ray Train kept the checkpoints hold them as OUT/checkpoints/step_*.pt: the same state, read alike.
A run keeps only its ``--keep-checkpoints`` latest: train with 0 to keep the step you want to export.)
"""
from __future__ import annotations

import argparse
import io

import torch

from dfdcore.io.storage import read_bytes
from dfdcore.training import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a dfd training checkpoint (OUT/checkpoints/step_*/train_state.pt, "
                        "or OUT/checkpoints/step_*.pt of an older run)")
    parser.add_argument("-o", "--output", required=True, help="the .safetensors to write")
    args = parser.parse_args()
    state = torch.load(io.BytesIO(read_bytes(args.checkpoint)), map_location="cpu", weights_only=True)
    trainer = Trainer(TrainConfig.from_dict(state["config"]))  # the run's own configuration, faceset and dictionary
    trainer.load(args.checkpoint)
    path = trainer.export_generator(args.output)
    print(f"step {trainer.step} → {path}")


if __name__ == "__main__":
    main()
