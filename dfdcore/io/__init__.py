"""Robust file I/O: atomic writes, raw array files, image decode/encode and fsspec storage."""
from dfdcore.io.arrays import (
    ArraySource,
    FileArray,
    MemoryArray,
    read_npy_header,
    read_safetensors_header,
    write_safetensors,
)
from dfdcore.io.atomic import atomic_path
from dfdcore.io.images import DecodedImage, ImageDecodeError, decode_image, encode_image, read_rgb, write_image
from dfdcore.io.storage import (
    IMAGE_EXTENSIONS,
    Source,
    exists,
    filesystem_for,
    is_local,
    join_uri,
    list_images,
    read_bytes,
    storage_options_for,
    write_bytes_atomic,
)

__all__ = ["ArraySource", "DecodedImage", "FileArray", "IMAGE_EXTENSIONS", "ImageDecodeError", "MemoryArray",
           "Source", "atomic_path", "decode_image", "encode_image", "exists", "filesystem_for", "is_local",
           "join_uri", "list_images",
           "read_bytes", "read_npy_header", "read_rgb", "read_safetensors_header", "storage_options_for",
           "write_bytes_atomic", "write_image", "write_safetensors"]
