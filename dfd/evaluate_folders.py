"""``dfd evaluate --pairs LQ_DIR HQ_DIR`` and ``dfd evaluate --no-reference DIR``: the evaluation on folders of
photos (flow ``flows/evaluate_folders.py``), and its summary on the terminal."""
from __future__ import annotations

import click

from dfd.lifecycle import _cell, metrics_table
from dfd.options import echo_model_warning

PHOTO_LABELS = (("photo_psnr", "PSNR"), ("photo_ssim", "SSIM"))
LEFT_SHOWN = 10  # photos not scored listed by name; the rest are counted (all are in the Parquet)


def evaluate_folders(spec, pairs: tuple[str, str] | None, no_reference: str | None, output: str,
                     registered: str | None, label: str | None) -> None:
    """Run the paired (``pairs`` = (LQ_DIR, HQ_DIR)) or the no-reference (``no_reference`` = DIR) evaluation of
    ``spec`` (or ``registered``) and print what it found."""
    check_folders(pairs or (no_reference,))  # before any server or model starts
    from dfd.flows.evaluate_folders import evaluate_no_reference, evaluate_pairs
    from dfd.flows.registry import RegistryError

    try:
        if pairs:
            summary = evaluate_pairs(spec, pairs[0], pairs[1], output, registered=registered, label=label)
        else:
            summary = evaluate_no_reference(spec, no_reference, output, registered=registered, label=label)
    except RegistryError as exc:  # an unknown model, version or alias: the message lists what there is
        raise click.ClickException(str(exc)) from exc
    click.echo("")
    click.echo("\n".join(paired_lines(summary) if pairs else no_reference_lines(summary)))
    click.echo(f"  photos     {summary.scored} of {summary.photos} scored, {summary.faces} faces")
    for image, reason in list(summary.left.items())[:LEFT_SHOWN]:
        click.echo(f"  not scored {image}: {reason}")
    if len(summary.left) > LEFT_SHOWN:
        click.echo(f"  not scored ... and {len(summary.left) - LEFT_SHOWN} more (reasons in the Parquet)")
    click.echo(f"  per image  {summary.rows_uri}")
    click.echo(f"  mlflow     run {summary.run_id}")
    echo_model_warning(None, spec, summary.model, registered)


def check_folders(folders: tuple[str, ...]) -> None:
    """UsageError for a folder (or URL, glob) that names nothing or holds no image file."""
    from dfdcore.io.storage import IMAGE_EXTENSIONS, list_images

    for folder in folders:
        try:
            found = list_images([folder])
        except FileNotFoundError as exc:
            raise click.UsageError(str(exc)) from exc
        if not found:
            raise click.UsageError(f"{folder}: no photos in it (expected files ending in "
                                   f"{', '.join('.' + e for e in IMAGE_EXTENSIONS[:5])}, ...)")


def paired_lines(summary) -> list[str]:
    """The face table (bicubic, then the model) and the whole-photo PSNR and SSIM of both."""
    lines = [metrics_table([("bicubic", summary.bicubic), (summary.model["label"], summary.metrics)]), ""]
    photo = ", ".join(f"{name} {_cell(summary.bicubic.get(key))} → {_cell(summary.metrics.get(key))}"
                      for key, name in PHOTO_LABELS)
    lines.append(f"  whole      {photo} (bicubic → model, restored photo resized to HQ)")
    if summary.lpips_note:
        lines.append(f"  LPIPS      unavailable: {summary.lpips_note}")
    return lines


def no_reference_lines(summary) -> list[str]:
    """NIQE of the input and restored faces, and how far the restored faces moved from the input's identity."""
    distance = summary.metrics.get("input_identity_distance")
    moved = "" if distance is None else (" (same person: < 0.6)" if distance < 0.6 else " (≥ 0.6: identity drifts)")
    return [f"  NIQE↓      input {_cell(summary.bicubic.get('niqe'))} → {summary.model['label']} "
            f"{_cell(summary.metrics.get('niqe'))} (dfd's pd-faces fit; no reference)",
            f"  identity   restored vs input face distance {_cell(distance)}{moved}"]
