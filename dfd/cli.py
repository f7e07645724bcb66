"""``dfd`` — face restoration with Deep multi-scale component Dictionaries (DFDNet)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

WEIGHTS_HELP = """\
dfd needs generator weights and component dictionaries; nothing is downloaded.
  * the official DFDNet release (CC BY-NC-SA 4.0, non-commercial use only):
      --weights checkpoints/facefh_dictionary/latest_net_G.pth --dictionary DictionaryCenter512/
  * a BasicSR-converted checkpoint (.pth with 'params') and dictionary (.pth), or dfd's own
      model.safetensors + dictionary.safetensors
  * or --random-weights to try the pipeline with a random, labelled network (the output is not a restoration)."""

DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _check_spec(spec) -> None:
    """Refuse model options that cannot work, with a message saying what to give instead."""
    if spec.name == "dfdnet":
        if spec.random_weights and spec.weights:
            raise click.UsageError("--random-weights and --weights exclude each other")
        if not spec.random_weights and not (spec.weights and spec.dictionary):
            raise click.UsageError("no model given.\n" + WEIGHTS_HELP + "\n  * or --model identity (dfd restore) to "
                                   "check the geometry: faces pasted back unchanged.")


def _build_model(spec):
    """Build the model of a ModelSpec, turning bad weights or dictionaries into a message, not a traceback."""
    import dfdcore

    _check_spec(spec)
    try:
        return spec.build()
    except (dfdcore.CheckpointError, dfdcore.DictionaryError) as exc:
        raise click.ClickException(str(exc)) from exc


def model_options(func):
    options = [
        click.option("--weights", type=click.Path(exists=False, dir_okay=False),
                     help="Generator checkpoint: official latest_net_G.pth, BasicSR .pth or dfd .safetensors."),
        click.option("--dictionary", type=click.Path(exists=False),
                     help="Component dictionaries: official DictionaryCenter512/ folder or dfd .safetensors."),
        click.option("--random-weights", is_flag=True,
                     help="Use a seeded random network and dictionary (for trying dfd; outputs are labelled)."),
        click.option("--k", default=512, show_default=True, help="Entries per random dictionary."),
        click.option("--seed", default=0, show_default=True, help="Seed of the random network."),
        click.option("--face-size", default=512, show_default=True, help="Face size of a random network."),
        click.option("--ngf", default=64, show_default=True, help="Channel width of a random network."),
        click.option("--device", default="auto", show_default=True, help="auto (cuda, then mps, then cpu), cpu, "
                     "cuda, cuda:1, mps."),
        click.option("--dict-dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True,
                     help="Storage type of the dictionaries on the device (float16 halves their memory)."),
        click.option("--fidelity", type=click.FloatRange(0, 1), default=1.0, show_default=True,
                     help="Weight of the dictionary contribution: 1 = official DFDNet, 0 = none."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dfd")
def main() -> None:
    """Restore faces in photographs with Deep multi-scale component Dictionaries (DFDNet, ECCV 2020).

    Loads the official DFDNet release unchanged (or BasicSR's port, or dfd's own models), runs it on batches of
    faces, and manages component dictionaries. Run `dfd COMMAND --help` for each command.
    """


@main.command()
@click.option("-o", "--output", default="dfd-results/sample", show_default=True,
              help="Output folder: restored_imgs/, cmp/ (input | output), cropped_faces/, restored_faces/.")
@click.option("--upscale", default=2, show_default=True, type=click.IntRange(1, 8), help="Scale of the output images.")
@click.option("--batch-size", default=4, show_default=True, help="Faces per forward pass, across images.")
@click.option("--force", is_flag=True, help="Redo the photos even if OUTPUT already holds them.")
@model_options
def sample(output, upscale, batch_size, force, weights, dictionary, random_weights, k, seed, face_size, ngf, device,
           dict_dtype, fidelity) -> None:
    """Restore the bundled public-domain sample photographs: a first run of dfd.

    Same pipeline as `dfd restore` (detect, align, restore every face, paste back) with side-by-side comparisons
    and the faces saved. Without --weights/--dictionary use --random-weights: the result is then not a
    restoration, and every file says so.
    """
    from tqdm import tqdm

    from dfdcore.io.storage import Source
    from dfdcore.restoration.bulk import restore_sources
    from dfdcore.restoration.restorer import ModelSpec, RestoreOptions, Restorer, resolve_device

    _use_all_cores()
    import dfdcore

    photos = sorted(p for p in (Path(dfdcore.__file__).parent / "assets").iterdir() if p.suffix in (".png", ".jpg"))
    spec = ModelSpec("dfdnet", weights, dictionary, random_weights, k, seed, face_size, ngf, device, dict_dtype,
                     fidelity)
    click.echo(f"Loading the model ({'RANDOM weights' if random_weights else weights}) ...")
    model = _build_model(spec)
    restorer = Restorer(model, RestoreOptions(upscale=upscale), batch_size=batch_size, device=resolve_device(device))
    with tqdm(total=len(photos), desc="restore", unit="image") as bar:
        summary = restore_sources([Source(str(p), p.name) for p in photos], output, restorer, force=force,
                                  save_faces=True, cmp=True, on_image=lambda: bar.update(1))
    _report(summary, _label(model), output)
    click.echo(f"  compare    {output.rstrip('/')}/cmp/ (input | output side by side)")


def _use_all_cores() -> None:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))


def _label(model) -> str:
    provenance = getattr(model, "provenance", {})
    if provenance.get("random_weights"):
        return "RANDOM WEIGHTS (not a restoration: use --weights/--dictionary for real results)"
    return str(provenance.get("checkpoint") or provenance.get("model", type(model).__name__))


def worse_than_bicubic_warning(weights: str | None, validation: dict | None = None) -> str:
    """A sentence when the model's own validation (stored in its file, or given) was worse than bicubic, else ""."""
    from dfdcore.api import trained_validation
    from dfdcore.evaluation.pairs import worse_than_bicubic

    validation = validation if validation is not None else trained_validation(weights)
    worse = worse_than_bicubic(validation)
    if not worse:
        return ""
    step = f" at step {validation['step']}" if "step" in validation else ""
    return (f"this model's own validation{step} was worse than bicubic upsampling ({'; '.join(worse)}): its "
            f"outputs are likely worse than a plain resize")


def _report(summary, label: str, output: str) -> None:
    from dfdcore.restoration.manifest import printable

    click.echo("")
    click.echo(f"  model      {label}")
    click.echo(f"  files      {summary.images}: {summary.restored} restored, {summary.no_face} without a face, "
               f"{summary.skipped} already done, {summary.not_read} not images (skipped), {summary.failed} failed")
    if summary.excluded:
        click.echo(f"  left out   {summary.excluded} files of the output itself (it lies inside an input)")
    click.echo(f"  faces      {summary.faces} in {summary.seconds:.1f} s")
    for uri, reason in summary.failures[:20]:
        click.echo(f"  failed     {printable(uri)}: {printable(str(reason))}")
    if len(summary.failures) > 20:
        click.echo(f"  ...        and {len(summary.failures) - 20} more (see the manifest)")
    if summary.storage_error:
        click.echo(f"  STOPPED    {printable(summary.storage_error)}", err=True)
    if summary.unrecorded:
        click.echo(f"  WARNING    {summary.unrecorded} rows could not be recorded in the manifest; a rerun redoes "
                   f"those images", err=True)
    click.echo(f"  results    {output.rstrip('/')}/restored_imgs/   manifest {output.rstrip('/')}/manifest.parquet")


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="Output folder or URL (s3://bucket/prefix, file://...).")
@click.option("--model", "model_name", type=click.Choice(["dfdnet", "identity"]), default="dfdnet", show_default=True,
              help="identity returns each aligned face unchanged: checks detection, alignment and paste-back alone.")
@click.option("--upscale", default=2, show_default=True, type=click.IntRange(1, 8),
              help="Scale of the whole output image (the background is bicubic-upscaled).")
@click.option("--only-largest", is_flag=True, help="Restore only the largest face of each image.")
@click.option("--only-center", is_flag=True, help="Restore only the face closest to the image centre.")
@click.option("--min-face", default=0, show_default=True, help="Ignore faces whose detection box is smaller (px).")
@click.option("--upsample", default=1, show_default=True, type=click.IntRange(0, 3),
              help="Detector upsampling steps (1 finds faces down to ~40 px; 0 is faster).")
@click.option("--detector", type=click.Choice(["hog", "cnn"]), default="hog", show_default=True,
              help="dlib HOG (fast) or MMOD CNN (finds more profile faces; ~100x slower on a CPU).")
@click.option("--min-score", default=0.2, show_default=True, help="Detection score threshold (HOG score or CNN "
              "confidence).")
@click.option("--batch-size", default=4, show_default=True, help="Faces per forward pass, across images.")
@click.option("--workers", default=0, show_default=True,
              help="Ray workers, each with its own model (0 = this process). RAY_ADDRESS selects a cluster.")
@click.option("--ext", type=click.Choice(["auto", "png", "jpg"]), default="auto", show_default=True,
              help="Output format; auto keeps JPEG for 8-bit opaque JPEG inputs and writes PNG otherwise.")
@click.option("--suffix", default="", help="Appended to each output file name (before the extension).")
@click.option("--save-faces", is_flag=True, help="Also write cropped_faces/ and restored_faces/.")
@click.option("--cmp", is_flag=True, help="Also write cmp/: input | output side by side.")
@click.option("--force", is_flag=True, help="Redo images already in the manifest with the same content and config.")
@click.option("--allow-failures", is_flag=True, help="Exit 0 even when some images failed.")
@click.option("--max-pixels", type=int, default=None,
              help="Refuse larger images (width × height) before decoding them. Default: what half of this machine's "
                   "memory holds at this --upscale (about 45 + 48·upscale² bytes per pixel; see the summary).")
@click.option("--max-bytes", default=512 * 2**20, show_default=True, help="Refuse larger input files.")
@model_options
def restore(inputs, output, model_name, upscale, only_largest, only_center, min_face, upsample, detector, min_score,
            batch_size, workers, ext, suffix, save_faces, cmp, force, allow_failures, max_pixels, max_bytes, weights,
            dictionary, random_weights, k, seed, face_size, ngf, device, dict_dtype, fidelity) -> None:
    """Restore every face in photographs and paste it back.

    INPUTS are files, folders (recursive), globs or fsspec URLs (s3://bucket/prefix). Restored images keep their
    relative paths under OUTPUT/restored_imgs/; OUTPUT/manifest.parquet (a folder of Parquet parts) gets one row per
    file found: ok, no_face, failed or skipped, with the reason, faces, outputs, model and timings. Files that are
    not images, FIFOs and devices are skipped rows; inputs whose outputs would share a name get name~HASH.png; an
    OUTPUT inside an input never reads its own files. A rerun skips images whose content and configuration are
    unchanged. Exits non-zero when any image failed (unless --allow-failures) or the output refused a write.
    """
    from tqdm import tqdm

    from dfdcore.io.storage import list_images
    from dfdcore.restoration.bulk import OutputStorageError, restore_sources
    from dfdcore.restoration.restorer import ModelSpec, RestoreOptions, Restorer, resolve_device

    _use_all_cores()
    try:
        sources = list_images(list(inputs), with_others=True)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    clashes = _relpath_clashes(sources)
    if clashes:
        raise click.ClickException("two inputs would write the same output: " + "; ".join(clashes[:5]) +
                                   " — pass their common parent folder instead")
    options = RestoreOptions(upscale=upscale, only_largest=only_largest, only_center=only_center,
                             min_face=min_face, upsample=upsample, min_score=min_score, detector=detector, ext=ext,
                             suffix=suffix)
    spec = ModelSpec(model_name, weights, dictionary, random_weights, k, seed, face_size, ngf, device, dict_dtype,
                     fidelity)
    run_options = dict(force=force, save_faces=save_faces, cmp=cmp, max_pixels=max_pixels, max_bytes=max_bytes)
    from dfdcore.restoration.bulk import check_writable

    try:
        check_writable(output)  # before loading a model or starting workers
    except OutputStorageError as exc:
        raise click.ClickException(str(exc)) from exc
    warning = worse_than_bicubic_warning(weights)
    if warning:
        click.echo(f"  warning    {warning}", err=True)
    with tqdm(total=len(sources), desc="restore", unit="file") as bar:
        try:
            if workers > 0:
                from dfd.tasks.restore import restore_parallel

                _check_spec(spec)  # before starting workers
                summary = restore_parallel(sources, output, spec, options, workers=workers, batch_size=batch_size,
                                           on_image=lambda: bar.update(1), **run_options)
            else:
                restorer = Restorer(_build_model(spec), options, batch_size=batch_size,
                                    device=resolve_device(device))
                summary = restore_sources(sources, output, restorer, on_image=lambda: bar.update(1), **run_options)
        except (OutputStorageError, ValueError) as exc:  # unwritable output, unreadable manifest, name clash
            raise click.ClickException(str(exc)) from exc
    _report(summary, "RANDOM WEIGHTS (not a restoration)" if random_weights and model_name == "dfdnet"
            else model_name, output)
    if warning:
        click.echo(f"  warning    {warning}")
    if summary.storage_error or summary.unrecorded or (summary.failed and not allow_failures):
        sys.exit(1)


@main.command("build-dictionary")
@click.argument("source")
@click.option("-o", "--output", required=True, help="Output folder or URL for the tables, features and dictionary.")
@click.option("--k", default=512, show_default=True, help="Dictionary entries (k-means centroids) per scale and part.")
@click.option("--select", "select_n", default=10_000, show_default=True,
              help="Faces in the pose/expression-balanced subset.")
@click.option("--selection", type=click.Choice(["stratified", "farthest"]), default="stratified", show_default=True,
              help="Balancing method: round-robin over pose/expression bins, or farthest-point sampling.")
@click.option("--flip", is_flag=True, help="Also use each face mirrored (left/right parts swapped).")
@click.option("--workers", default=2, show_default=True, help="Ray feature workers (RAY_ADDRESS selects a cluster).")
@click.option("--vgg-weights", type=click.Path(dir_okay=False),
              help="ImageNet VGG19 weights (torchvision's vgg19-dcbb9e9d.pth) or a DFDNet checkpoint.")
@click.option("--random-weights", is_flag=True, help="Seeded random VGG19 (tests and demos; the run is tagged).")
@click.option("--niter", default=20, show_default=True, help="k-means iterations.")
@click.option("--seed", default=0, show_default=True)
@click.option("--face-size", default=512, show_default=True)
@click.option("--ngf", default=64, show_default=True, help="Channel width (64 = ImageNet VGG19).")
@click.option("--batch", default=16, show_default=True, help="Images or faces per Ray task.")
def build_dictionary_command(source, output, k, select_n, selection, flip, workers, vgg_weights, random_weights, niter,
                             seed, face_size, ngf, batch) -> None:
    """Build component dictionaries from the photos at SOURCE (folder, glob or fsspec URL).

    A Prefect flow of Ray tasks: scan → landmarks, pose and expression → balanced selection → VGG features of the
    component crops (Parquet) → FAISS k-means per (scale, part) → OUTPUT/dictionary.safetensors and
    OUTPUT/DictionaryCenter512/. Tracked in MLflow (MLFLOW_TRACKING_URI, else SQLite under ./.dfd); Prefect uses
    PREFECT_API_URL or a temporary local server. Reruns skip finished steps.
    """
    if not vgg_weights and not random_weights:
        raise click.UsageError("give --vgg-weights PATH (ImageNet VGG19, e.g. torchvision's vgg19-dcbb9e9d.pth; "
                               "nothing is downloaded) or --random-weights")
    from dfd.flows.tracking import configure_prefect

    configure_prefect()
    from dfd.flows.build_dictionary import DictionaryConfig, build_dictionary

    config = DictionaryConfig(k=k, select=select_n, selection_method=selection, flip=flip, face_size=face_size,
                              ngf=ngf, vgg_weights=vgg_weights, random_weights=random_weights, seed=seed,
                              niter=niter, batch=batch, workers=workers)
    summary = build_dictionary(source, output, config)
    click.echo("")
    click.echo(f"  images     {summary.images} ({summary.failed_images} unreadable)")
    click.echo(f"  faces      {summary.faces} found, {summary.selected} selected")
    click.echo("  k-means    scale/part      rows   empty   final inertia")
    for name, m in summary.kmeans.items():
        click.echo(f"             {name:<14} {m['rows']:>6} {m['empty']:>7}   {m['objective'][-1]:.4g}")
    click.echo(f"  dictionary {output.rstrip('/')}/dictionary.safetensors and DictionaryCenter{face_size}/")
    click.echo(f"  mlflow     run {summary.run_id} ({summary.seconds:.0f} s)")
    if random_weights:
        click.echo("  note       random VGG weights: a pipeline check, not a usable dictionary")


def _relpath_clashes(sources) -> list[str]:
    seen: dict[str, str] = {}
    clashes = []
    for source in sources:
        if source.relpath in seen:
            clashes.append(f"{seen[source.relpath]} and {source.uri} → {source.relpath}")
        seen.setdefault(source.relpath, source.uri)
    return clashes


@main.group()
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
        d.save(target, dtype=_torch_dtype(dtype))
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _add_lifecycle_commands() -> None:
    from dfd import lifecycle, stack

    for command in (lifecycle.train, lifecycle.evaluate, lifecycle.compare, lifecycle.demo, stack.stack,
                    stack.deploy):
        main.add_command(command)


_add_lifecycle_commands()
