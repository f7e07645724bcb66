"""`dfd export`: a generator and its dictionary as one ONNX graph, for other runtimes."""
from __future__ import annotations

import dataclasses
import importlib.util

import click

from dfd.options import (
    build_model,
    check_spec,
    model_options,
    model_spec,
    resolve_model,
    spec_label,
    use_all_cores,
)


@click.command("export")
@click.option("--onnx", "onnx_path", required=True, type=click.Path(dir_okay=False),
              help="Output .onnx file; the weights and dictionary go beside it in OUT.onnx.data.")
@model_options
def export(onnx_path, **options) -> None:
    """Write the generator WITH its dictionary as an ONNX graph with a dynamic batch.

    Inputs: faces (B, 3, S, S) float32 in [-1, 1] (RGB) and part_boxes (B, 4, 4) int64 [x1, y1, x2, y2] of the left
    eye, right eye, nose and mouth in face pixels (dfdcore.part_boxes of the 68 landmarks); output: restored
    (B, 3, S, S). The export runs on the CPU; the graph runs anywhere onnxruntime does. Without model options
    the bundled model (dfd-pd-128) is exported.
    """
    from dfdcore.export import ExportError, check_output_path, export_onnx

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(f"`dfd export --onnx` needs {' and '.join(missing)}: pip install 'dfd[export]'")
    spec = model_spec(options)
    if spec.precision != "fp32":  # a 16-bit graph is the runtime's to make (e.g. onnxruntime's float16 converter)
        raise click.UsageError(f"dfd export writes a float32 graph; --precision {spec.precision} applies to dfd "
                               f"restore, sample and serve: leave it out here")
    if spec.device not in ("auto", "cpu"):
        raise click.UsageError(f"dfd export traces the model on the CPU (the graph is device-independent); "
                               f"leave out --device {spec.device}")
    try:
        check_output_path(onnx_path)  # before loading gigabytes of weights
    except ExportError as exc:
        raise click.ClickException(str(exc)) from exc
    use_all_cores()
    spec = resolve_model(dataclasses.replace(spec, device="cpu"), "dfd export")
    check_spec(spec)
    click.echo(f"Loading the model ({spec_label(spec)}) ...")
    model = build_model(spec)
    click.echo(f"Exporting to {onnx_path} ...")
    try:
        written = export_onnx(model, onnx_path)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from exc
    for path in written:
        click.echo(f"  wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if spec.random_weights:
        click.echo("  RANDOM WEIGHTS: this graph is not a face restorer")
