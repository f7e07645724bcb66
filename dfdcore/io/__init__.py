"""Robust file I/O: atomic writes and raw array files."""
from .atomic import atomic_path
from .images import read_rgb, write_image
from .arrays import ArraySource, FileArray, MemoryArray, read_npy_header, read_safetensors_header, write_safetensors

__all__ = ["ArraySource", "FileArray", "MemoryArray", "atomic_path", "read_npy_header", "read_rgb",
           "read_safetensors_header", "write_image", "write_safetensors"]
