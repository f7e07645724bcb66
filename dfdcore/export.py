"""ONNX export of a DFDNet generator with its dictionary: ``faces`` (B, 3, S, S), ``part_boxes`` (B, 4, 4) int64 →
``restored`` (B, 3, S, S), any batch size B.

The PyTorch forward crops each face's components with Python slices whose bounds come from the boxes — values an
exporter cannot follow. Here the same dictionary transfer is written with fixed-rank tensors, batched over faces:

- windows: the rule of ``components.scale_boxes`` on tensors (floor, clamp to the map, skip boxes outside it);
- crop + bilinear resize: PyTorch's ``align_corners=False`` sampling rule, as gathers from the whole feature map;
- the chosen entry, resized back with PyTorch's ``nearest`` rule, and the crop are laid on a canvas as large as
  the largest window of the batch, zero outside each face's window; the confidence block runs on the canvas, its
  hidden map masked to the window again, so that both convs see the zero padding they see on a bare crop;
- paste: a gather from the canvas and a ``where`` on the window, parts in the order of ``PARTS`` (the later wins).

The PyTorch path is unchanged; ``transfer_scale_batched`` equals ``arch.transfer.transfer_scale`` (tests/test_onnx.py).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from dfdcore.arch.generator import DFDNet
from dfdcore.arch.transfer import DictionaryBank, channel_stats
from dfdcore.config import PARTS

OPSET = 18
INPUT_NAMES = ("faces", "part_boxes")
OUTPUT_NAMES = ("restored",)


class ExportError(Exception):
    """The model or the output path cannot be exported; the message says what was expected."""


# ------------------------------------------------------------------------------------------------ geometry
def feature_windows(boxes: torch.Tensor, stride: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``components.scale_boxes`` on tensors: face-pixel boxes (B, 4, 4) → windows (B, 4, 4) ``[x1, y1, x2, y2]``
    in cells of a ``size``-side map (exclusive upper bounds, at least one cell) and ``valid`` (B, 4) bool.

    A box entirely outside the map is not valid; its window is set to (0, 0, 1, 1) so that every gather stays in
    range, and nothing computed from it is written."""
    cells = torch.div(boxes.to(torch.int64), stride, rounding_mode="floor")
    x1, y1, x2, y2 = cells.unbind(-1)
    valid = (x2 > 0) & (y2 > 0) & (x1 < size) & (y1 < size)
    x1, y1 = x1.clamp(min=0), y1.clamp(min=0)
    x2 = torch.minimum(torch.maximum(x2, x1 + 1), torch.full_like(x2, size))
    y2 = torch.minimum(torch.maximum(y2, y1 + 1), torch.full_like(y2, size))
    unit = torch.tensor([0, 0, 1, 1], dtype=torch.int64)
    windows = torch.where(valid[..., None], torch.stack([x1, y1, x2, y2], dim=-1), unit)
    return windows, valid


def bilinear_taps(length: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source taps of an ``align_corners=False`` bilinear resize from ``length`` (N,) cells to ``out``, as PyTorch's
    CPU kernel computes them (float32 scale ``length / out``, negative sources clamped to 0).

    Returns: i0, i1 (N, out) int64 indices into [0, length) and their weights w0, w1 (N, out)."""
    scale = length.to(torch.float32)[:, None] / out
    source = (scale * (torch.arange(out, dtype=torch.float32) + 0.5) - 0.5).clamp(min=0.0)
    last = (length - 1)[:, None]
    i0 = torch.minimum(source.floor().to(torch.int64), last)
    i1 = torch.minimum(i0 + 1, last)
    w1 = (source - i0.to(torch.float32)).clamp(0.0, 1.0)
    return i0, i1, 1.0 - w1, w1


def nearest_taps(length: torch.Tensor, source: int, out: torch.Tensor) -> torch.Tensor:
    """Source index of each of ``out`` canvas cells for a ``nearest`` resize of ``source`` cells to ``length`` (N,)
    cells (PyTorch's rule ⌊i · source / length⌋ in float32) → (N, out) int64; cells past ``length`` repeat the
    last source cell (they are masked)."""
    scale = source / length.to(torch.float32)[:, None]
    index = (torch.arange(out, dtype=torch.float32) * scale).floor().to(torch.int64)
    return index.clamp(max=source - 1)


def gather2d(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x[b, :, rows[b]][..., cols[b]]`` for every b: (B, C, H, W), rows (B, h), cols (B, w) → (B, C, h, w)."""
    channels = x.shape[1]
    picked = x.gather(2, rows[:, None, :, None].expand(-1, channels, -1, x.shape[3]))
    return picked.gather(3, cols[:, None, None, :].expand(-1, channels, picked.shape[2], -1))


def crop_resize(feature: torch.Tensor, windows: torch.Tensor, side: int) -> torch.Tensor:
    """Each face's window of ``feature`` (B, C, S, S), bilinearly resized to (side, side) → (B, C, side, side).

    Equal to ``F.interpolate(feature[b, :, y1:y2, x1:x2][None], (side, side), mode="bilinear")`` per face, with the
    kernel's order of operations: rows blended from two column blends."""
    x1, y1, x2, y2 = windows.unbind(-1)
    r0, r1, wr0, wr1 = bilinear_taps(y2 - y1, side)
    c0, c1, wc0, wc1 = bilinear_taps(x2 - x1, side)
    r0, r1, c0, c1 = r0 + y1[:, None], r1 + y1[:, None], c0 + x1[:, None], c1 + x1[:, None]
    wr0, wr1 = wr0[:, None, :, None], wr1[:, None, :, None]
    wc0, wc1 = wc0[:, None, None, :], wc1[:, None, None, :]
    top = wc0 * gather2d(feature, r0, c0) + wc1 * gather2d(feature, r0, c1)
    bottom = wc0 * gather2d(feature, r1, c0) + wc1 * gather2d(feature, r1, c1)
    return wr0 * top + wr1 * bottom


# ------------------------------------------------------------------------------------------------ transfer
def best_entries(entries: torch.Tensor, crops: torch.Tensor, crop_std: torch.Tensor) -> torch.Tensor:
    """``DictionaryBank.best_entries`` in float32: entries (K, D), crops (N, C, h, w), σ (N, C, 1, 1) → (N,)."""
    query = (crops * crop_std).flatten(1)
    query = query / query.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (query @ entries.to(torch.float32).t()).argmax(dim=1)


def transfer_part(feature: torch.Tensor, windows: torch.Tensor, valid: torch.Tensor, updated: torch.Tensor,
                  entries: torch.Tensor, side: int, attention: nn.Sequential,
                  fidelity: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One component for a batch: feature and updated (B, C, S, S), windows (B, 4), valid (B,), entries (K, C·side²)
    → updated with this part written inside its valid windows, and the chosen entry (B,), −1 where not valid."""
    batch, channels, size = feature.shape[0], feature.shape[1], feature.shape[-1]
    resized = crop_resize(feature, windows, side)
    mean, std = channel_stats(resized)
    index = best_entries(entries, resized, std)
    swapped = entries.index_select(0, index).to(mean.dtype).view(batch, channels, side, side) * std + mean

    x1, y1, x2, y2 = windows.unbind(-1)
    heights, widths = y2 - y1, x2 - x1
    # The canvas is as large as the largest window of the batch: a size the exporter takes from the data.
    canvas_h, canvas_w = heights.max().item(), widths.max().item()
    torch._check(canvas_h >= 1)
    torch._check(canvas_w >= 1)
    torch._check(canvas_h <= size)
    torch._check(canvas_w <= size)
    steps_h, steps_w = torch.arange(canvas_h), torch.arange(canvas_w)
    inside = ((steps_h[None, :] < heights[:, None])[:, :, None] & (steps_w[None, :] < widths[:, None])[:, None, :])
    inside = inside[:, None].to(feature.dtype)                                        # (B, 1, h, w)
    rows = (y1[:, None] + steps_h[None, :]).clamp(max=size - 1)
    cols = (x1[:, None] + steps_w[None, :]).clamp(max=size - 1)
    crop = gather2d(feature, rows, cols) * inside
    swap = gather2d(swapped, nearest_taps(heights, side, canvas_h), nearest_taps(widths, side, canvas_w)) * inside

    first, act, second = attention
    confidence = second(act(first(swap - crop)) * inside)
    value = crop + fidelity * confidence * swap

    cells = torch.arange(size)
    in_rows = (cells[None, :] >= y1[:, None]) & (cells[None, :] < y2[:, None])      # (B, S)
    in_cols = (cells[None, :] >= x1[:, None]) & (cells[None, :] < x2[:, None])
    write = (in_rows[:, :, None] & in_cols[:, None, :] & valid[:, None, None])[:, None]
    pasted = gather2d(value, (cells[None, :] - y1[:, None]).clamp(0, canvas_h - 1),
                      (cells[None, :] - x1[:, None]).clamp(0, canvas_w - 1))
    chosen = torch.where(valid, index, torch.full_like(index, -1))
    return torch.where(write, pasted, updated), chosen


def transfer_scale_batched(feature: torch.Tensor, boxes: torch.Tensor, stride: int, scale: int, bank: DictionaryBank,
                           attention: dict[str, nn.Module], fidelity: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``arch.transfer.transfer_scale`` with fixed-rank tensors only: feature (B, C, S, S), boxes (B, 4, 4) →
    updated (B, C, S, S) and the chosen entry per (face, part), (B, 4), −1 where a box lies outside the map."""
    windows, valid = feature_windows(boxes, stride, feature.shape[-1])
    updated, chosen = feature, []
    for p, part in enumerate(PARTS):
        updated, index = transfer_part(feature, windows[:, p], valid[:, p], updated, bank.entries(scale, part),
                                       bank.config.dict_size(scale, part), attention[part], fidelity)
        chosen.append(index)
    return updated, torch.stack(chosen, dim=1)


class ExportableDFDNet(nn.Module):
    """``DFDNet.forward`` through ``transfer_scale_batched``: the graph that is exported. Shares the generator's
    modules and dictionary (no copy). The stored spectral-norm vectors are used as they are (eval behaviour)."""

    def __init__(self, model: DFDNet) -> None:
        super().__init__()
        if model.power_iterate:
            raise ExportError("the generator power-iterates its spectral norms on every forward (training mode): "
                              "call set_spectral_norm_power_iteration(False) before exporting")
        self.model = model

    def restore(self, faces: torch.Tensor, part_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S), (B, 4, 4) → restored (B, 3, S, S) and the chosen entries (B, 4 scales, 4 parts)."""
        model = self.model
        taps = model.VggExtract(faces)
        if model.bank is None or model.fidelity == 0.0:
            chosen = torch.full((faces.shape[0], len(taps), len(PARTS)), -1, dtype=torch.int64)
            return model._output(faces, model.decode(taps[3], taps)), chosen
        styles, chosen = [], []
        for tap, scale in zip(taps, model.config.scales):
            stride = model.config.face_size // tap.shape[-1]
            updated, index = transfer_scale_batched(tap, part_boxes, stride, scale, model.bank,
                                                    model.attention_blocks(scale), model.fidelity)
            styles.append(updated)
            chosen.append(index)
        return model._output(faces, model.decode(taps[3], styles)), torch.stack(chosen, dim=1)

    def forward(self, faces: torch.Tensor, part_boxes: torch.Tensor) -> torch.Tensor:
        return self.restore(faces, part_boxes)[0]


# ------------------------------------------------------------------------------------------------ export
def check_output_path(path: str | os.PathLike) -> Path:
    """The ``.onnx`` path resolved, or ExportError saying why it cannot be written (before any export work)."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise ExportError(f"the output must be a .onnx file, got {str(path)!r}")
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise ExportError(f"cannot write {path}: its folder {parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc} (folder {parent})") from exc
    return path


@contextlib.contextmanager
def _export_state(model: DFDNet):
    """Whole-map stages in one band (row bands only save PyTorch memory; the result is the same) and no grad."""
    bands = model.row_bands
    model.row_bands = 1
    try:
        with torch.no_grad():
            yield
    finally:
        model.row_bands = bands


def example_inputs(model: DFDNet, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Faces in [-1, 1] and boxes of the official size around the template's component centres (B ≥ 2 so the
    exporter does not specialise the batch to 1)."""
    size = model.config.face_size
    gen = torch.Generator().manual_seed(seed)
    faces = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    centres = torch.tensor([[0.37, 0.45], [0.63, 0.45], [0.5, 0.6], [0.5, 0.75]]) * size
    half = torch.tensor([model.config.part_side(p) / 2 for p in PARTS])[:, None]
    boxes = torch.cat([centres - half + 1, centres + half], dim=1).trunc().to(torch.int64)
    jitter = torch.randint(-2, 3, (batch, 4, 1), generator=gen)
    return faces.to(model.VggExtract.RGB_mean.device), boxes[None] + jitter


def export_onnx(model: DFDNet, path: str | os.PathLike, *, opset: int = OPSET) -> list[Path]:
    """Write ``model`` and its dictionary as an ONNX graph with a dynamic batch.

    Inputs ``faces`` (B, 3, S, S) float32 in [-1, 1] and ``part_boxes`` (B, 4, 4) int64 ``[x1, y1, x2, y2]`` per part
    in face pixels (``dfdcore.part_boxes``); output ``restored`` (B, 3, S, S). The weights and dictionary entries
    (float32, also for a 16-bit bank) go to ``path`` + ``.data`` beside it (ONNX's 2 GiB limit); both files are
    written under temporary names and renamed when complete.

    Returns: the files written. Raises ExportError for a path that cannot be written or a model it cannot export.
    """
    path = check_output_path(path)
    if not isinstance(model, DFDNet):
        raise ExportError(f"only DFDNet generators are exported, got {type(model).__name__}")
    graph = ExportableDFDNet(model.eval()).eval()
    batch = torch.export.Dim("batch", min=1)
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        with _export_state(model):
            program = torch.onnx.export(
                graph, example_inputs(model), dynamo=True, opset_version=opset, input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES), dynamic_shapes={"faces": {0: batch}, "part_boxes": {0: batch}},
                # onnxscript's graph optimiser ran > 10 min on this graph without finishing; onnxruntime folds
                # constants itself when it loads the file.
                external_data=True, optimize=False)
            program.save(str(work / path.name), external_data=True)
        written = []
        for part in sorted(work.iterdir(), key=lambda p: p.suffix == ".onnx"):  # the graph last: it names the data
            target = path.parent / part.name
            os.replace(part, target)
            written.append(target)
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)
