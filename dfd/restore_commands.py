"""`dfd sample` and `dfd restore`: photographs in, restored photographs and a manifest out."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from dfd.options import (
    build_model,
    check_spec,
    model_options,
    require_pipeline,
    use_all_cores,
    worse_than_bicubic_warning,
)


@click.command()
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

    use_all_cores()
    import dfdcore

    photos = sorted(p for p in (Path(dfdcore.__file__).parent / "assets").iterdir() if p.suffix in (".png", ".jpg"))
    spec = ModelSpec("dfdnet", weights, dictionary, random_weights, k, seed, face_size, ngf, device, dict_dtype,
                     fidelity)
    click.echo(f"Loading the model ({'RANDOM weights' if random_weights else weights}) ...")
    model = build_model(spec)
    restorer = Restorer(model, RestoreOptions(upscale=upscale), batch_size=batch_size, device=resolve_device(device))
    with tqdm(total=len(photos), desc="restore", unit="image") as bar:
        summary = restore_sources([Source(str(p), p.name) for p in photos], output, restorer, force=force,
                                  save_faces=True, cmp=True, on_image=lambda: bar.update(1))
    _report(summary, _label(model), output)
    click.echo(f"  compare    {output.rstrip('/')}/cmp/ (input | output side by side)")


def _label(model) -> str:
    provenance = getattr(model, "provenance", {})
    if provenance.get("random_weights"):
        return "RANDOM WEIGHTS (not a restoration: use --weights/--dictionary for real results)"
    return str(provenance.get("checkpoint") or provenance.get("model", type(model).__name__))


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


@click.command()
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

    use_all_cores()
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
                require_pipeline("dfd restore --workers")
                from dfd.tasks.restore import restore_parallel

                check_spec(spec)  # before starting workers
                summary = restore_parallel(sources, output, spec, options, workers=workers, batch_size=batch_size,
                                           on_image=lambda: bar.update(1), **run_options)
            else:
                restorer = Restorer(build_model(spec), options, batch_size=batch_size,
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


def _relpath_clashes(sources) -> list[str]:
    seen: dict[str, str] = {}
    clashes = []
    for source in sources:
        if source.relpath in seen:
            clashes.append(f"{seen[source.relpath]} and {source.uri} → {source.relpath}")
        seen.setdefault(source.relpath, source.uri)
    return clashes
