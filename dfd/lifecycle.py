"""``dfd train``, ``dfd evaluate``, ``dfd compare`` and ``dfd demo``: the model's life cycle on the command line."""
from __future__ import annotations

import math

import click

from dfd.config_file import config_option, echo_resolved, resolved_options
from dfd.options import check_spec, echo_model_warning, require_pipeline, use_all_cores, worse_than_bicubic_warning
from dfdcore.training.presets import PRESETS, preset_values

# dfdcore.data.degrade.PRESETS, named here so that `dfd --help` does not import OpenCV (tests/test_degrade.py)
DEGRADATIONS = ("reference", "gfpgan", "moderate", "mild", "blind")

METRIC_LABELS = (("psnr", "PSNR↑"), ("ssim", "SSIM↑"), ("psnr_y", "PSNR-Y↑"), ("ssim_y", "SSIM-Y↑"),
                 ("lpips", "LPIPS↓"), ("identity_distance", "ID dist↓"), ("landmark_distance", "LM dist↓"),
                 ("niqe", "NIQE↓"))


def with_preset(ctx: click.Context, options: dict) -> dict:
    """``options`` with the values of ``options["preset"]`` in place of every option left at its default: a flag
    given on the command line or a value from the ``--config`` file (click's default map) is kept."""
    if not options.get("preset"):
        return options
    values = preset_values(options["preset"])
    given = {name for name in options if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    return options | {name: value for name, value in values.items() if name not in given}


def _prefect() -> None:
    from dfd.flows.tracking import configure_prefect

    configure_prefect()


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def metrics_table(rows: list[tuple[str, dict]]) -> str:
    """A plain-text table: one row per (label, metrics)."""
    width = max(len(label) for label, _ in rows) + 2
    lines = ["".ljust(width) + "".join(f"{title:>10}" for _, title in METRIC_LABELS)]
    for label, values in rows:
        lines.append(label.ljust(width) + "".join(f"{_cell(values.get(key)):>10}" for key, _ in METRIC_LABELS))
    return "\n".join(lines)


@click.command()
@click.argument("source")
@click.option("-o", "--output", required=True, help="Training folder: faceset, checkpoints/, generator.safetensors.")
@click.option("--dictionary", required=True, type=click.Path(), help="Component dictionary (dfd .safetensors, "
              "official folder or BasicSR .pth) of the same face size and width.")
@click.option("--vgg-weights", type=click.Path(dir_okay=False), help="ImageNet VGG19 (torchvision's "
              "vgg19-dcbb9e9d.pth) for the generator's encoder and the perceptual loss.")
@click.option("--init-weights", type=click.Path(dir_okay=False), help="Fine-tune this generator checkpoint "
              "(official, BasicSR or dfd) instead of starting from random layers.")
@click.option("--random-vgg", is_flag=True, help="Seeded random VGG19 (tests and demos; the run is tagged).")
@click.option("--steps", default=1000, show_default=True)
@click.option("--batch-size", default=2, show_default=True, help="Global batch, split over the workers.")
@click.option("--lr", default=2e-4, show_default=True)
@click.option("--degradation", type=click.Choice(DEGRADATIONS), default="reference", show_default=True,
              help="Degradation model: reference §5.1, GFPGAN v1, the reference limited to x2-4 (moderate), "
                   "x1-2 with light blur/noise/JPEG (mild), or the reference from x1 to x8 (blind).")
@click.option("--adversarial-weight", default=0.1, show_default=True)
@click.option("--perceptual-weight", default=1.0, show_default=True)
@click.option("--pixel-weight", default=1.0, show_default=True)
@click.option("--pixel-criterion", type=click.Choice(["mse", "l1", "psnr"]), default="mse", show_default=True,
              help="psnr: mean per-image log-MSE, so every image counts in dB (plain MSE favours the worst ones).")
@click.option("--style-weight", default=0.0, show_default=True)
@click.option("--identity-weight", default=0.0, show_default=True, help="Identity loss: distance of dlib "
              "face-recognition descriptors (its PyTorch port, dlib's weights) of restored vs target faces.")
@click.option("--residual/--no-residual", default=None, help="A new generator predicts a correction added to its "
              "input (starts as the identity, i.e. at bicubic; recorded in the exported .safetensors). Default: on, "
              "except with --init-weights (the checkpoint brings its own output mode).")
@click.option("--train-vgg", is_flag=True, help="Train the generator's VGG encoder too (for a random VGG; the "
              "perceptual loss keeps a frozen copy).")
@click.option("--augment", default=0.0, show_default=True, type=click.FloatRange(0, 3),
              help="Warp and recolour training faces: 1 = rotation ±15°, scale ×0.8-1.25, shift ±8 %% (scaled by the "
                   "value; for small face sets).")
@click.option("--adversarial-start", type=int, help="Pixel/perceptual warm-up: the adversarial term and the "
              "discriminator start at this step (default: half of --steps).")
@click.option("--identity-start", default=0, show_default=True, help="The identity term starts at this step (a "
              "pixel-only warm-up before it; the checkpoint there is the pixel-only model to compare with).")
@click.option("--ema-decay", default=0.0, show_default=True,
              help="Keep an exponential moving average of the generator (e.g. 0.999) for validation and export.")
@click.option("--grad-clip", default=0.0, show_default=True, help="Cap the generator's gradient norm (0 = off).")
@click.option("--lr-schedule", type=click.Choice(["linear", "cosine"]), default="linear", show_default=True,
              help="Decay after the constant phase.")
@click.option("--constant-fraction", default=0.01, show_default=True, help="Share of the steps at the full lr.")
@click.option("--val-every", default=500, show_default=True,
              help="Validate (PSNR, SSIM, identity distance vs bicubic on held-out faces) every N steps.")
@click.option("--val-pairs", default=16, show_default=True, help="Degraded held-out faces per validation.")
@click.option("--best-metric", type=click.Choice(["psnr", "ssim", "psnr_y", "ssim_y", "identity_distance",
                                                   "landmark_distance"]), default="psnr", show_default=True,
              help="The validated generator kept, exported and registered is the best by this metric.")
@click.option("--face-size", default=512, show_default=True)
@click.option("--ngf", default=64, show_default=True)
@click.option("--d-dim", default=64, show_default=True, help="Discriminator width.")
@click.option("--workers", default=1, show_default=True, help="Ray Train workers (DDP; RAY_ADDRESS for a cluster).")
@click.option("--gpu", is_flag=True, help="One GPU per worker (NCCL, mixed precision).")
@click.option("--checkpoint-every", default=500, show_default=True)
@click.option("--keep-checkpoints", default=3, show_default=True, type=click.IntRange(min=-1),
              help="Ray Train keeps the N latest checkpoints under OUTPUT/checkpoints/ and in the MLflow run, and "
                   "deletes older ones; 0 or -1 keeps all. The best validated generator (OUTPUT/best/) is never one "
                   "of them.")
@click.option("--system-metrics", is_flag=True, help="MLflow samples this machine's CPU, memory, disk, network "
              "(and GPUs, with pynvml) into the run as system/* metrics while it trains "
              "(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds apart, default 10).")
@click.option("--sample-every", default=100, show_default=True)
@click.option("--test-fraction", default=0.1, show_default=True, help="Photos held out for evaluation.")
@click.option("--max-failures", default=2, show_default=True, type=click.IntRange(min=-1),
              help="Ray Train restarts of the workers from the latest checkpoint when one dies or fails (a busy or "
                   "preempted machine); -1: without limit, 0: the first failure ends the run.")
@click.option("--register-as", default="dfd-generator", show_default=True, help="MLflow registered model name.")
@click.option("--seed", default=0, show_default=True)
@click.option("--preset", type=click.Choice(list(PRESETS)), help="A measured recipe for the options not given: "
              "cpu-128 (2-core CPU, ~2 h, 128-px faces) or gpu-512 (the paper's size on a GPU). See --dry-run.")
@click.option("--held-out", type=click.Path(), help="Photos whose faces are the held-out test split (e.g. other "
              "people than SOURCE's); every face of SOURCE then trains and --test-fraction is unused.")
@config_option("dfd train")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration (preset, config file, flags) and "
              "stop.")
def train(**options) -> None:
    """Train (or fine-tune) the generator on the faces of SOURCE.

    SOURCE: photos (folder, glob or fsspec URL; faces detected and aligned), a `dfd build-dictionary` output
    folder (its landmarks are reused) or a faceset .parquet. Pairs are made on the fly by the degradation model;
    Ray Train runs the DDP workers; MLflow records parameters, losses, sample grids (LQ | restored | HQ) and
    checkpoints, and registers the best validated generator with its dictionary. Rerunning with the same OUTPUT
    resumes from the latest checkpoint (raise --steps to train longer).

    --preset NAME fills every option you do not give with a measured recipe: cpu-128 (this kind of 2-core machine,
    about 2 hours, 128-px faces) or gpu-512 (the paper's size on a GPU, with --vgg-weights). Flags you give win.
    --config FILE (YAML or TOML, options under their CLI names; SOURCE as source) sits between the two: flags >
    file > preset > defaults. The resolved options are logged to the MLflow run as config.yaml.
    """
    require_pipeline("dfd train")
    from types import SimpleNamespace

    from dfdcore.io.storage import join_uri
    from dfdcore.training import TrainConfig

    ctx = click.get_current_context()
    o = SimpleNamespace(**with_preset(ctx, options))
    _prefect()
    from dfd.flows.train import train as train_flow

    residual = not o.init_weights if o.residual is None else o.residual
    adversarial_start = o.steps // 2 if o.adversarial_start is None else o.adversarial_start
    try:
        config = TrainConfig(
            faceset=o.source if o.source.endswith(".parquet") else join_uri(o.output, "faceset.parquet"),
            dictionary=o.dictionary, out=o.output, face_size=o.face_size, ngf=o.ngf, init_weights=o.init_weights,
            vgg_weights=o.vgg_weights, random_vgg=o.random_vgg, degradation=o.degradation, steps=o.steps,
            batch_size=o.batch_size, lr=o.lr, pixel_weight=o.pixel_weight, pixel_criterion=o.pixel_criterion,
            perceptual_weight=o.perceptual_weight, style_weight=o.style_weight, identity_weight=o.identity_weight,
            adversarial_weight=o.adversarial_weight, residual=residual, train_vgg=o.train_vgg, augment=o.augment,
            adversarial_start=adversarial_start, identity_start=o.identity_start, ema_decay=o.ema_decay,
            grad_clip=o.grad_clip, lr_schedule=o.lr_schedule, constant_fraction=o.constant_fraction,
            val_every=o.val_every, val_pairs=o.val_pairs, best_metric=o.best_metric, d_dim=o.d_dim,
            checkpoint_every=o.checkpoint_every, sample_every=o.sample_every, seed=o.seed, workers=o.workers,
            use_gpu=o.gpu)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    flow_options = dict(source=o.source, test_fraction=o.test_fraction, register_as=o.register_as,
                        max_failures=o.max_failures, held_out=o.held_out, keep_checkpoints=o.keep_checkpoints,
                        system_metrics=o.system_metrics)
    if o.dry_run:
        echo_resolved(f"preset {o.preset or '(none)'}, config {o.config or '(none)'}; the run would be:",
                      config.to_dict() | flow_options)
        return
    summary = train_flow(config, **flow_options, options=resolved_options(ctx.command, vars(o)))
    final = summary.final or {}
    click.echo("")
    click.echo(f"  faces      {summary.train_faces} for training, {summary.test_faces} held out")
    click.echo(f"  steps      {summary.steps}" + (f" (resumed from {summary.resumed_from})" if summary.resumed_from
                                                    else "") + f", {summary.images_per_second:.2f} images/s")
    click.echo(f"  losses     G {_cell(final.get('loss_g'))}  D {_cell(final.get('loss_d'))}  "
               f"held-out pixel {_cell(final.get('val_pixel'))}")
    validation = summary.validation or {}
    if validation:
        click.echo(f"  validation best {o.best_metric} at step {validation.get('step')}: "
                   + ", ".join(f"{name} {_cell(validation.get('val_' + key))} (bicubic "
                               f"{_cell(validation.get('bicubic_' + key))})" for key, name in
                               (("psnr", "PSNR"), ("ssim", "SSIM"), ("identity_distance", "ID dist"))))
    click.echo(f"  generator  {summary.generator}")
    click.echo(f"  registered {summary.model_name} version {summary.model_version}")
    click.echo(f"  mlflow     run {summary.run_id}")

    for warning in (summary.warning, worse_than_bicubic_warning(None, validation)):
        if warning:
            click.echo(f"  warning    {warning}")
    if o.random_vgg:
        click.echo("  note       random VGG: the encoder and perceptual loss see random features")


@click.command()
@click.option("--testset", help="Test set folder (pairs.parquet is made there once).")
@click.option("--pairs", nargs=2, metavar="LQ_DIR HQ_DIR", help="Instead of a test set: degraded photos and their "
              "originals, paired by file name (faces found on LQ, compared with the same squares of HQ).")
@click.option("--no-reference", metavar="DIR", help="Instead of a test set: real photos, no originals (NIQE of input "
              "and restored faces, identity distance between them, faces found).")
@click.option("-o", "--output", default="dfd-results/evaluate", show_default=True,
              help="Where --pairs and --no-reference write metrics/<run>.parquet.")
@click.option("--faceset", help="Faceset .parquet whose held-out faces make the test set (first time only).")
@click.option("--registered", help="A registered model: NAME/VERSION (dfd-generator/3) or NAME@ALIAS "
              "(dfd-generator@champion: the version the alias points to now).")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Generator checkpoint (with its --dictionary). Default: the bundled model, dfd-pd-128.")
@click.option("--dictionary", type=click.Path(), help="Its component dictionary.")
@click.option("--model", "model_name", type=click.Choice(["dfdnet", "identity"]), default="dfdnet",
              show_default=True, help="identity: the bicubic LQ itself (checks the evaluation).")
@click.option("--random-weights", is_flag=True, help="A seeded random network (labelled).")
@click.option("--face-size", default=512, show_default=True, help="Face size of a random network.")
@click.option("--ngf", default=64, show_default=True, help="Width of a random network.")
@click.option("--count", type=int, help="Pairs in a new test set (default: every held-out face).")
@click.option("--degradation", type=click.Choice(DEGRADATIONS), default="reference", show_default=True,
              help="Degradation model: reference §5.1, GFPGAN v1, the reference limited to x2-4 (moderate), "
                   "x1-2 with light blur/noise/JPEG (mild), or the reference from x1 to x8 (blind).")
@click.option("--seed", default=1234, show_default=True, help="Seed of a new test set's degradations.")
@click.option("--label", help="Name of the run in MLflow and in `dfd compare`.")
@click.option("--device", default="auto", show_default=True)
def evaluate(testset, pairs, no_reference, output, faceset, registered, weights, dictionary, model_name,
             random_weights, face_size, ngf, count, degradation, seed, label, device) -> None:
    """Evaluate a model on the paired test set: PSNR, SSIM (RGB and Y), LPIPS (when its backbone weights are on this
    machine), identity and landmark distance, and NIQE (no reference; dfd's own fit on pd-faces faces, not the
    published parameters) — per image in Parquet, means in MLflow beside the bicubic baseline. Without a model
    (--weights/--dictionary, --registered, --random-weights, --model identity) the bundled dfd-pd-128 is evaluated;
    its test set needs its face size (128).

    --pairs LQ_DIR HQ_DIR and --no-reference DIR evaluate on folders of photos instead, into the same per-image
    Parquet (under --output) and MLflow records."""
    require_pipeline("dfd evaluate")
    if sum(map(bool, (testset, pairs, no_reference))) != 1:
        raise click.UsageError("give exactly one of --testset, --pairs LQ_DIR HQ_DIR and --no-reference DIR")
    from dfdcore.restoration.restorer import ModelSpec

    spec = ModelSpec(model_name, weights, dictionary, random_weights, k=16, face_size=face_size, ngf=ngf,
                     device=device)
    if registered:
        from dfdcore.restoration.restorer import registered_ref

        try:
            registered_ref(registered)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
    else:
        spec = spec.resolved()  # naming no model: the bundled one
        check_spec(spec)
    _prefect()
    from dfd.flows.evaluate import evaluate as evaluate_flow
    from dfd.flows.registry import RegistryError

    if pairs or no_reference:
        from dfd.evaluate_folders import evaluate_folders

        return evaluate_folders(spec, pairs, no_reference, output, registered, label)
    try:
        summary = evaluate_flow(spec, testset, faceset=faceset, registered=registered, count=count, seed=seed,
                                degradation=degradation, label=label)
    except RegistryError as exc:  # an unknown model, version or alias: the message lists what there is
        raise click.ClickException(str(exc)) from exc
    click.echo("")
    click.echo(metrics_table([("bicubic", summary.bicubic), (summary.model["label"], summary.metrics)]))
    click.echo("")
    click.echo(f"  pairs      {summary.pairs} ({testset})")
    if summary.lpips_note:
        click.echo(f"  LPIPS      unavailable: {summary.lpips_note}")
    click.echo(f"  mlflow     run {summary.run_id}")
    echo_model_warning(weights, spec, summary.model, registered)


@click.command()
@click.argument("runs", nargs=-1, required=True)
def compare(runs) -> None:
    """Print the evaluation metrics of MLflow RUNS (run ids of `dfd evaluate`) side by side, bicubic first."""
    require_pipeline("dfd compare")
    import mlflow
    from mlflow import MlflowClient

    from dfd.flows.evaluate import EXPERIMENT
    from dfd.flows.tracking import mlflow_experiment

    mlflow_experiment(EXPERIMENT)  # points MLflow at the dfd home unless MLFLOW_TRACKING_URI is set
    client = MlflowClient(mlflow.get_tracking_uri())
    rows, testsets = [], set()
    for run_id in runs:
        try:
            run = client.get_run(run_id)
        except mlflow.exceptions.MlflowException as exc:
            raise click.ClickException(f"no MLflow run {run_id} at {mlflow.get_tracking_uri()}") from exc
        metrics = run.data.metrics
        if "psnr" not in metrics and "niqe" not in metrics:  # a --no-reference run has NIQE only
            raise click.ClickException(f"run {run_id} holds no evaluation metrics (is it a `dfd evaluate` run?)")
        if not rows:
            rows.append(("bicubic", {k.removeprefix("bicubic_"): v for k, v in metrics.items()
                                     if k.startswith("bicubic_")}))
        rows.append((f"{run.info.run_name or run_id[:8]} ({run_id[:8]})", metrics))
        testsets.add(run.data.tags.get("testset_sha256") or run.data.params.get("testset"))
    click.echo(metrics_table(rows))
    if len(testsets) > 1:
        click.echo("\n  warning: these runs used different test sets; their numbers are not comparable")


@click.command()
@click.option("-o", "--output", default="dfd-results/demo", show_default=True)
@click.option("--steps", type=int, help="Training steps of the demo model (default: the demo recipe's).")
@click.option("--vgg-weights", type=click.Path(dir_okay=False, exists=True),
              help="ImageNet VGG19 (torchvision's vgg19-dcbb9e9d.pth); without it the VGG is random and labelled.")
@click.option("--max-failures", type=click.IntRange(min=-1), help="Ray Train restarts of the workers from the "
              "latest checkpoint (default: the demo's, 2).")
@click.option("--people", type=click.IntRange(min=2), help="Use only this many of the 76 portrayed people (a quicker "
              "look; default: all).")
def demo(output, steps, vgg_weights, max_failures, people) -> None:
    """The whole life cycle on the bundled portraits, in about 15 minutes on a 2-core CPU: split them by person →
    build a dictionary → train a small model → evaluate it against bicubic on the held-out people → restore degraded
    copies of their photos with it and with dfd's bundled model (cmp/ shows both beside the original).

    The 121 portraits of 76 members of the US Congress are public domain (dfdcore/assets/portraits/ATTRIBUTION.md);
    no endorsement by them is implied."""
    require_pipeline("dfd demo")
    from dataclasses import replace

    use_all_cores()
    _prefect()
    from dfd.flows.demo import DemoConfig
    from dfd.flows.demo import demo as demo_flow

    config = replace(DemoConfig(vgg_weights=vgg_weights), **({"steps": steps} if steps else {}),
                     **({"max_failures": max_failures} if max_failures is not None else {}),
                     **({"people": people} if people else {}))
    summary = demo_flow(output, config)
    click.echo("")
    click.echo(f"Held-out faces ({summary.test_faces} faces x {summary.pairs // max(1, summary.test_faces)} "
               f"degradations = {summary.pairs} pairs, never seen in training):")
    click.echo(metrics_table([("bicubic", summary.bicubic), ("demo model", summary.metrics)]))
    click.echo("")
    people = summary.people or {}
    click.echo(f"  faces      {summary.train_faces} for training ({people.get('train', '?')} people), "
               f"{summary.test_faces} held out ({people.get('test', '?')} other people) for the test set")
    validation = summary.validation
    if validation:
        click.echo(f"  validation best at step {validation.get('step')}: PSNR {_cell(validation.get('val_psnr'))} "
                   f"(bicubic {_cell(validation.get('bicubic_psnr'))}) on other degradations of the held-out faces")
    click.echo(f"  model      registered as {summary.model} (MLflow runs: dictionary {summary.dictionary_run[:8]}, "
               f"train {summary.train_run[:8]}, evaluate {summary.evaluate_run[:8]})")
    if summary.photos:
        captions = list(summary.photos[0]["psnr"])
        gains = {c: sum(r["psnr"][c] - r["psnr_bicubic"] for r in summary.photos) / len(summary.photos)
                 for c in captions}
        click.echo(f"  photos     face PSNR against bicubic, mean of {len(summary.photos)} held-out photos: " +
                   ", ".join(f"{c} {g:+.2f} dB" for c, g in gains.items()))
    click.echo(f"  restored   {summary.restored} degraded held-out photos in {summary.outputs}/ "
               f"(cmp/ shows input | demo model | {summary.bundled_label or 'bundled model'} | original)")
    click.echo("  time       " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in summary.seconds.items()))
    if summary.warning:
        click.echo(f"  warning    training: {summary.warning}")
    click.echo("  verdict    " + verdict(summary.metrics, summary.bicubic, summary.random_vgg))


def verdict(metrics: dict, bicubic: dict, random_vgg: bool) -> str:
    """One honest sentence on how the demo model compares with bicubic upsampling."""
    gain = metrics.get("psnr", float("nan")) - bicubic.get("psnr", float("nan"))
    ssim_gain = metrics.get("ssim", float("nan")) - bicubic.get("ssim", float("nan"))
    id_gain = bicubic.get("identity_distance", float("nan")) - metrics.get("identity_distance", float("nan"))
    better = gain > 0 and ssim_gain > 0 and id_gain > 0
    text = (f"the demo model is {'better' if better else 'not better'} than bicubic upsampling on the held-out faces "
            f"(PSNR {gain:+.2f} dB, SSIM {ssim_gain:+.3f}, identity distance {-id_gain:+.4f}).")
    text += " It learnt from some 90 portraits for a few minutes"
    text += " with a random VGG (no ImageNet weights here)" if random_vgg else ""
    return text + ": it cleans up degradation it was trained on; it is not a general face restorer — train on a " \
                  "real collection for that."
