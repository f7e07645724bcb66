"""How many pixels one photograph may have before restoring it would exhaust memory.

Measured (bench/RESULTS.md, "Memory per pixel"): restoring a photograph peaks at about 45 + 48·s² bytes per input
pixel, s the upscale factor (decoded copies at the input size, float32 RGB arrays at the output size), whatever
the file's format or size on disk. The default pixel limit gives each worker half of its share of the machine's
memory (or of the container's limit); images over it are refused from their header, before any decoding.
"""
from __future__ import annotations

import os
from pathlib import Path

BYTES_PER_INPUT_PIXEL = 45.0
BYTES_PER_OUTPUT_PIXEL = 48.0
MEMORY_SHARE = 0.5
PIL_HARD_LIMIT = 178_956_970 * 2  # Image.open refuses larger images before we could


def bytes_per_pixel(upscale: int) -> float:
    """Peak bytes of memory per input pixel when restoring at ``upscale``."""
    return BYTES_PER_INPUT_PIXEL + BYTES_PER_OUTPUT_PIXEL * upscale ** 2


def machine_memory_bytes() -> int:
    """Physical memory, or the cgroup (container) limit when that is lower."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            physical = min(physical, int(text))
    return physical


def default_max_pixels(upscale: int, workers: int = 1, memory_bytes: int | None = None) -> int:
    """The largest photograph (width × height) that ``workers`` processes restoring at ``upscale`` side by side
    can hold with half of ``memory_bytes`` (default: this machine's)."""
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    budget = MEMORY_SHARE * memory / max(1, workers)
    return int(min(PIL_HARD_LIMIT, budget / bytes_per_pixel(upscale)))
