"""Parquet tables written whole and atomically to any fsspec URL (readers never see half a file)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from dfdcore.io.storage import write_bytes_atomic


def write_parquet(uri: str, table: pa.Table | Iterable[Mapping[str, object]], schema: pa.Schema | None = None,
                  **options) -> int:
    """Write ``table`` (an Arrow table, or rows as dicts with ``schema``) to ``uri`` → number of rows.

    ``options`` go to ``pyarrow.parquet.write_table`` (``row_group_size``, …); zstd compression by default. The
    file is built in memory and renamed into place, so it costs about its encoded size in memory."""
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pylist(list(table), schema=schema)
    elif schema is not None:
        table = table.cast(schema)
    write_bytes_atomic(uri, parquet_bytes(table, **options))
    return table.num_rows


def parquet_bytes(table: pa.Table, **options) -> bytes:
    """``table`` encoded as one Parquet file in memory; ``options`` as for ``write_parquet``."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **({"compression": "zstd"} | options))
    return sink.getvalue().to_pybytes()
