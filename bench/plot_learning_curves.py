"""Learning curves of a training run from MLflow: validation PSNR, SSIM and identity distance against steps, with
the bicubic baseline as a line, as one PNG.

    python bench/plot_learning_curves.py RUN_ID --tracking-uri sqlite:///.dfd/mlflow.db --title "demo" \
        --out bench/results/curves-demo.png [--json bench/results/curves-demo.json] [--mark 3000 "adversarial on"]
    python bench/plot_learning_curves.py real/train/validations.json --out …   # a resumed run: every leg, one file
"""
from __future__ import annotations

import argparse
import json

PANELS = (("psnr", "PSNR (dB) ↑"), ("ssim", "SSIM ↑"), ("identity_distance", "identity distance ↓"))


def histories(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Metric name → sorted (step, value) of every validation metric and its bicubic line."""
    names = [f"{prefix}_{name}" for name, _ in PANELS for prefix in ("val", "bicubic")]
    return {name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name)) for name in names}


def histories_from_file(path: str) -> dict[str, list[tuple[int, float]]]:
    """The same from a training folder's ``validations.json`` (every validation of every resumed leg)."""
    with open(path) as handle:
        rows = json.load(handle)
    names = [f"{prefix}_{name}" for name, _ in PANELS for prefix in ("val", "bicubic")]
    return {name: sorted((int(r["step"]), float(r[name])) for r in rows if r.get(name) is not None) for name in names}


def plot(curves: dict[str, list[tuple[int, float]]], title: str, out: str,
         marks: list[tuple[int, str]] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for axis, (name, label) in zip(axes, PANELS):
        model, bicubic = curves[f"val_{name}"], curves[f"bicubic_{name}"]
        if model:
            axis.plot([s for s, _ in model], [v for _, v in model], marker="o", ms=3, label="model (validation)")
        if bicubic:
            axis.axhline(bicubic[-1][1], color="grey", ls="--", label="bicubic")
        for step, text in marks:
            axis.axvline(step, color="tab:red", ls=":", lw=1)
            axis.annotate(text, (step, 0.02), xycoords=("data", "axes fraction"), fontsize=8, color="tab:red",
                          xytext=(3, 0), textcoords="offset points")
        axis.set_xlabel("step")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="best")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_id", help="an MLflow run id, or a training folder's validations.json")
    parser.add_argument("--tracking-uri", help="the MLflow tracking URI (with a run id)")
    parser.add_argument("--title", default="")
    parser.add_argument("--out", required=True)
    parser.add_argument("--json", help="also write the curves as JSON")
    parser.add_argument("--mark", nargs=2, action="append", default=[], metavar=("STEP", "TEXT"),
                        help="a vertical line at STEP labelled TEXT (e.g. where the adversarial term starts)")
    args = parser.parse_args()
    if args.run_id.endswith(".json"):
        curves = histories_from_file(args.run_id)
    else:
        from mlflow import MlflowClient

        if not args.tracking_uri:
            parser.error("--tracking-uri is required with a run id")
        curves = histories(MlflowClient(args.tracking_uri), args.run_id)
    plot(curves, args.title, args.out, [(int(step), text) for step, text in args.mark])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"run_id": args.run_id, "curves": curves}, handle, indent=1)


if __name__ == "__main__":
    main()
