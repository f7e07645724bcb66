"""`dfd sample` and `dfd restore`: photographs in, restored photographs and a manifest out."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from dfd.options import (
    build_model,
    check_spec,
    model_options,
    model_spec,
    require_pipeline,
    resolve_model,
    restore_options,
    restore_options_of,
    run_options,
    run_options_of,
    spec_label,
    spec_warning,
    use_all_cores,
)


@click.command()
@click.option("-o", "--output", default="dfd-results/sample", show_default=True,
              help="Output folder: restored_imgs/, cmp/ (input | output), cropped_faces/, restored_faces/.")
@restore_options
@run_options("batch_size", "force")
@model_options
def sample(output, **options) -> None:
    """Restore the bundled public-domain sample photographs: a first run of dfd.

    Same pipeline as `dfd restore` (detect, align, restore every face, paste back) with side-by-side comparisons
    and the faces saved. Without model options it restores with the bundled model (dfd-pd-128, see --weights);
    with --random-weights the result is not a restoration, and every file says so.
    """
    from tqdm import tqdm

    import dfdcore
    from dfdcore.io.storage import Source
    from dfdcore.restoration.bulk import restore_sources
    from dfdcore.restoration.restorer import Restorer, resolve_device

    use_all_cores()
    spec, restore, run = model_spec(options), restore_options_of(options), run_options_of(options, save_faces=True,
                                                                                           cmp=True)
    spec = resolve_model(spec, "dfd sample")
    check_spec(spec)
    check_background(restore)
    photos = sorted(p for p in (Path(dfdcore.__file__).parent / "assets").iterdir() if p.suffix in (".png", ".jpg"))
    click.echo(f"Loading the model ({spec_label(spec)}) ...")
    model = build_model(spec)
    restorer = Restorer(model, restore, batch_size=run.batch_size, device=resolve_device(spec.device))
    with tqdm(total=len(photos), desc="restore", unit="image") as bar:
        summary = restore_sources([Source(str(p), p.name) for p in photos], output, restorer, run,
                                  on_image=lambda: bar.update(1))
    _report(summary, _label(model), output)
    click.echo(f"  compare    {output.rstrip('/')}/cmp/ (input | output side by side)")


def check_background(restore) -> None:
    """Refuse a --bg-upsampler that is neither an interpolation nor a loadable model file, before any work (the model
    is then loaded once per Restorer, in this process or in each worker)."""
    from dfdcore.restoration.background import SRModelError, load_background_upsampler

    try:
        load_background_upsampler(restore.bg_upsampler)
    except SRModelError as exc:
        raise click.BadParameter(str(exc), param_hint="--bg-upsampler") from exc


def _label(model) -> str:
    provenance = getattr(model, "provenance", {})
    if provenance.get("random_weights"):
        return "RANDOM WEIGHTS (not a restoration: leave out --random-weights for the bundled model)"
    if provenance.get("registered"):
        return f"registered {provenance['registered']}"
    if provenance.get("bundled"):
        return f"{provenance['bundled']} (bundled)"
    return str(provenance.get("checkpoint") or provenance.get("model", type(model).__name__))


def _report(summary, label: str, output: str) -> None:
    from dfdcore.restoration.manifest import printable

    click.echo("")
    click.echo(f"  model      {label}")
    click.echo(f"  files      {summary.images}: {summary.restored} restored, {summary.no_face} without a face, "
               f"{summary.skipped} already done, {summary.not_read} not images (skipped), {summary.failed} failed")
    if summary.skipped:
        click.echo(f"  read       {summary.read} of {summary.images} files (an unchanged file whose size and time, or "
                   "ETag, match the manifest is not read)")
    if summary.failed_before:
        files = f"{summary.failed_before} file" + ("s" if summary.failed_before != 1 else "")
        click.echo(f"  not retried {files} that failed before on their own bytes (corrupt, empty, not an image) and "
                   "have not changed; --force retries them")
    if summary.excluded:
        click.echo(f"  left out   {summary.excluded} files of the output itself (it lies inside an input)")
    click.echo(f"  faces      {summary.faces} in {summary.seconds:.1f} s")
    if summary.faces_as_they_were:
        click.echo(f"  unchanged  {summary.faces_as_they_were} of those faces were already sharp: left as they were "
                   "(--strength auto; --strength 1 keeps the model's whole change)")
    for uri, reason in summary.failures[:20]:
        click.echo(f"  failed     {printable(uri)}: {printable(str(reason))}")
    if len(summary.failures) > 20:
        click.echo(f"  ...        and {len(summary.failures) - 20} more (see the manifest)")
    if summary.storage_error:
        click.echo(f"  STOPPED    {printable(summary.storage_error)}", err=True)
    for part, why in summary.damaged_parts:
        click.echo(f"  DAMAGED    manifest part {printable(part)} ({printable(why)}): set aside as "
                   f"{printable(part)}.damaged; the images it recorded were redone or are left for the next run",
                   err=True)
    if summary.interrupted:
        click.echo(f"  interrupted by {summary.interrupted}: every finished image has its row; {summary.not_started} "
                   f"files not started — a rerun does them (and nothing finished)", err=True)
    if summary.unrecorded:
        click.echo(f"  WARNING    {summary.unrecorded} rows could not be recorded in the manifest; a rerun redoes "
                   f"those images", err=True)
    click.echo(f"  results    {output.rstrip('/')}/restored_imgs/   manifest {output.rstrip('/')}/manifest.parquet")


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="Output folder or URL (s3://bucket/prefix, file://...).")
@click.option("--model", "model_name", type=click.Choice(["dfdnet", "identity"]), default="dfdnet", show_default=True,
              help="identity returns each aligned face unchanged: checks detection, alignment and paste-back alone.")
@restore_options
@run_options()
@click.option("--allow-failures", is_flag=True, help="Exit 0 even when some images failed.")
@model_options
def restore(inputs, output, model_name, allow_failures, **options) -> None:
    """Restore every face in photographs and paste it back.

    INPUTS are files, folders (recursive), globs or fsspec URLs (s3://bucket/prefix). Restored images keep their
    relative paths under OUTPUT/restored_imgs/; OUTPUT/manifest.parquet (a folder of Parquet parts) gets one row per
    file found: ok, no_face, failed or skipped, with the reason, faces, outputs, model and timings. Files that are
    not images, FIFOs and devices are skipped rows; inputs whose outputs would share a name get name~HASH.png; an
    OUTPUT inside an input never reads its own files. A rerun skips images whose content and configuration are
    unchanged. Exits non-zero when any image failed (unless --allow-failures), the output refused a write or a
    damaged manifest part was set aside; 130/143 after Ctrl-C/SIGTERM, which finish the images in hand and record
    them (a second signal stops at once). One run writes into an OUTPUT at a time: another run with other settings
    is refused (nothing written), one with the same settings waits for it and then does what is left.
    Without model options the faces are restored with the bundled model (dfd-pd-128, see --weights).
    """
    from tqdm import tqdm

    from dfdcore.io.storage import RESTORABLE_EXTENSIONS, list_images
    from dfdcore.restoration.bulk import OutputStorageError, check_writable, restore_sources
    from dfdcore.restoration.lock import OutputBusy
    from dfdcore.restoration.restorer import Restorer, resolve_device
    from dfdcore.restoration.stopping import StopRequest, on_signals

    use_all_cores()
    spec, restore, run = model_spec(options, model_name), restore_options_of(options), run_options_of(options)
    spec = resolve_model(spec, "dfd restore")  # NAME@ALIAS: pinned to the version it points to now, for every worker
    check_spec(spec)  # before listing inputs or starting workers (a bundled model's files are checked here)
    try:
        sources = list_images(list(inputs), RESTORABLE_EXTENSIONS, with_others=True)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    clashes = _relpath_clashes(sources)
    if clashes:
        raise click.ClickException("two inputs would write the same output: " + "; ".join(clashes[:5]) +
                                   " — pass their common parent folder instead")
    try:
        check_writable(output)  # before loading a model or starting workers
    except OutputStorageError as exc:
        raise click.ClickException(str(exc)) from exc
    check_background(restore)
    warning = spec_warning(spec)
    if warning:
        click.echo(f"  warning    {warning}", err=True)
    stop = StopRequest()
    with tqdm(total=len(sources), desc="restore", unit="file") as bar, on_signals(stop, bar.write):
        waiting = {"on_wait": lambda line: bar.write(f"  {line}"), "stop": stop}
        try:
            if run.workers > 0:
                require_pipeline("dfd restore --workers")
                from dfd.tasks.restore import restore_parallel

                summary = restore_parallel(sources, output, spec, restore, run, on_image=lambda: bar.update(1),
                                           on_placement=lambda lines: bar.write("\n".join(f"  {s}" for s in lines)),
                                           **waiting)
            else:
                restorer = Restorer(build_model(spec), restore, batch_size=run.batch_size,
                                    device=resolve_device(spec.device))
                summary = restore_sources(sources, output, restorer, run, on_image=lambda: bar.update(1), **waiting)
        except (OutputStorageError, OutputBusy, ValueError) as exc:  # unwritable or busy output, name clash
            raise click.ClickException(str(exc)) from exc
    _report(summary, spec_label(spec), output)
    if warning:
        click.echo(f"  warning    {warning}")
    if stop:
        sys.exit(stop.exit_code)  # 130 (SIGINT) or 143 (SIGTERM), after the summary
    if summary.storage_error or summary.unrecorded or summary.damaged_parts or (summary.failed and not allow_failures):
        sys.exit(1)


def _relpath_clashes(sources) -> list[str]:
    seen: dict[str, str] = {}
    clashes = []
    for source in sources:
        if source.relpath in seen:
            clashes.append(f"{seen[source.relpath]} and {source.uri} → {source.relpath}")
        seen.setdefault(source.relpath, source.uri)
    return clashes
