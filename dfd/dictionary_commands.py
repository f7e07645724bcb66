"""`dfd build-dictionary` and `dfd dictionary info|convert|random`: component dictionaries."""
from __future__ import annotations

import click

from dfd.config_file import config_option, echo_resolved, resolved_options
from dfd.options import DTYPES, require_pipeline, torch_dtype


@click.command("build-dictionary")
@click.argument("source")
@click.option("-o", "--output", required=True, help="Output folder or URL for the tables, features and dictionary.")
@click.option("--k", default=512, show_default=True, help="Dictionary entries (k-means centroids) per scale and part.")
@click.option("--select", "select_n", default=10_000, show_default=True,
              help="Faces in the pose/expression-balanced subset.")
@click.option("--selection", type=click.Choice(["stratified", "farthest"]), default="stratified", show_default=True,
              help="Balancing method: round-robin over pose/expression bins, or farthest-point sampling.")
@click.option("--flip", is_flag=True, help="Also use each face mirrored (left/right parts swapped).")
@click.option("--workers", default=2, show_default=True, help="Ray feature workers (RAY_ADDRESS selects a cluster).")
@click.option("--gpus-per-worker", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="GPUs Ray gives each feature worker (0.5: two share a GPU); VGG runs on the GPU Ray assigns.")
@click.option("--vgg-weights", type=click.Path(dir_okay=False),
              help="ImageNet VGG19 weights (torchvision's vgg19-dcbb9e9d.pth) or a DFDNet checkpoint.")
@click.option("--random-vgg", is_flag=True, help="Seeded random VGG19 (tests and demos; the run is tagged).")
@click.option("--niter", default=20, show_default=True, help="k-means iterations.")
@click.option("--max-train-gib", default=4.0, show_default=True, help="Cap on each k-means training sample "
              "(float32): the official mouth_256 rows are 1.5 MiB each.")
@click.option("--seed", default=0, show_default=True)
@click.option("--face-size", default=512, show_default=True)
@click.option("--ngf", default=64, show_default=True, help="Channel width (64 = ImageNet VGG19).")
@click.option("--batch", default=16, show_default=True, help="Images or faces per Ray task.")
@config_option("dfd build-dictionary")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration (config file, flags) and stop.")
def build_dictionary_command(source, output, k, select_n, selection, flip, workers, gpus_per_worker, vgg_weights,
                             random_vgg, niter, max_train_gib, seed, face_size, ngf, batch, config, dry_run) -> None:
    """Build component dictionaries from the photos at SOURCE (folder, glob or fsspec URL).

    A Prefect flow of Ray tasks: scan → landmarks, pose and expression → balanced selection → VGG features of the
    component crops (Parquet) → FAISS k-means per (scale, part) → OUTPUT/dictionary.safetensors and
    OUTPUT/DictionaryCenter512/. Tracked in MLflow (MLFLOW_TRACKING_URI, else SQLite under ./.dfd); Prefect uses
    PREFECT_API_URL or a temporary local server. Reruns skip finished steps.

    --config FILE: the options in a YAML or TOML file under their CLI names (SOURCE as source); flags given win.
    """
    require_pipeline("dfd build-dictionary")
    if bool(vgg_weights) == random_vgg:
        raise click.UsageError("give either --vgg-weights PATH (ImageNet VGG19, e.g. torchvision's "
                               "vgg19-dcbb9e9d.pth; nothing is downloaded) or --random-vgg")
    from dfd.flows.tracking import configure_prefect

    configure_prefect()
    from dfd.flows.build_dictionary import DictionaryConfig, build_dictionary
    from dfdcore.dictionary.kmeans import KMeansOptions

    try:
        kmeans = KMeansOptions(k=k, niter=niter, seed=seed, max_train_bytes=int(max_train_gib * 2**30))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    build = DictionaryConfig(kmeans=kmeans, select=select_n, selection_method=selection, flip=flip,
                             face_size=face_size, ngf=ngf, vgg_weights=vgg_weights, random_vgg=random_vgg,
                             seed=seed, batch=batch, workers=workers, gpus_per_worker=gpus_per_worker)
    if dry_run:
        from dfd.flows.steps import flat_params

        echo_resolved(f"config {config or '(none)'}; the build would be:",
                      {"source": source, "output": output} | flat_params(build))
        return
    ctx = click.get_current_context()
    summary = build_dictionary(source, output, build, options=resolved_options(ctx.command, ctx.params))
    click.echo("")
    click.echo(f"  images     {summary.images} ({summary.failed_images} unreadable)")
    click.echo(f"  faces      {summary.faces} found, {summary.selected} selected")
    rates = [f"{step} {t['steady_seconds_per_item']:.3f}" for step, t in summary.timing.items()
             if t.get("steady_seconds_per_item") is not None]
    if rates:
        click.echo(f"  steady     {', '.join(rates)} s per photo (features: per face)")
    click.echo("  k-means    scale/part      rows   empty   final inertia")
    for name, m in summary.kmeans.items():
        click.echo(f"             {name:<14} {m['rows']:>6} {m['empty_clusters']:>7}   {m['objective'][-1]:.4g}")
    click.echo(f"  dictionary {output.rstrip('/')}/dictionary.safetensors and DictionaryCenter{face_size}/")
    click.echo(f"  mlflow     run {summary.run_id} ({summary.seconds:.0f} s)")
    if random_vgg:
        click.echo("  note       random VGG weights: a pipeline check, not a usable dictionary")


@click.group()
def dictionary() -> None:
    """Inspect, convert and create component dictionaries."""


@dictionary.command("info")
@click.argument("path", type=click.Path(exists=True))
def dictionary_info(path) -> None:
    """Show K, sizes and provenance of a dictionary (official folder, .safetensors or BasicSR .pth)."""
    from dfdcore import ComponentDictionary, DictionaryError

    try:
        d = ComponentDictionary.load(path)
    except DictionaryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(repr(d))
    for scale in d.config.scales:
        click.echo(f"  scale {scale:>3}: " + ", ".join(
            f"{part} {'x'.join(map(str, d.shape(scale, part)[1:]))}" for part in ("left_eye", "right_eye", "nose",
                                                                                   "mouth")))
    if d.metadata:
        click.echo(f"  metadata: {d.metadata}")


@dictionary.command("convert")
@click.argument("source", type=click.Path(exists=True))
@click.argument("target", type=click.Path())
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True,
              help="Storage type of a .safetensors target.")
def dictionary_convert(source, target, dtype) -> None:
    """Convert between the official folder layout and one .safetensors file (TARGET ending in .safetensors
    is a file, anything else a folder of 16 .npy files)."""
    from dfdcore import ComponentDictionary, DictionaryError

    try:
        d = ComponentDictionary.load(source)
    except DictionaryError as exc:
        raise click.ClickException(str(exc)) from exc
    if str(target).endswith(".safetensors"):
        d.save(target, dtype=torch_dtype(dtype))
    else:
        d.save_official(target)
    click.echo(f"wrote {target} ({d!r})")


@dictionary.command("random")
@click.argument("target", type=click.Path())
@click.option("--k", default=512, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--face-size", default=512, show_default=True)
@click.option("--ngf", default=64, show_default=True)
def dictionary_random(target, k, seed, face_size, ngf) -> None:
    """Write a random dictionary (labelled as random in its metadata) for tests and benchmarks."""
    from dfdcore import ComponentDictionary, GeneratorConfig

    d = ComponentDictionary.random(GeneratorConfig(face_size=face_size, ngf=ngf), k=k, seed=seed)
    d.save(target) if str(target).endswith(".safetensors") else d.save_official(target)
    click.echo(f"wrote {target} ({d!r}, random)")
