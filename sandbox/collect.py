"""A job's output written to Parquet as it arrives from Spark, under its row and byte limits.

``DataFrame.toArrow()`` gathers the whole result in the executor's memory before anything
can be checked: an output of 700 MB under a 512 MB limit first costs 700 MB. Here Spark's
Arrow batches are read from its collect socket one at a time and spooled to an Arrow IPC
file in the (private, ephemeral) workspace while rows and bytes are counted; the first
batch past a limit stops the transfer. Spark sends partitions in the order they finish,
followed by their true order: the spool is then memory-mapped and written to Parquet in
that order, so nothing but one batch at a time is held in memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Written:
    """What was written: rows and schema; or the limit hit (then nothing is kept)."""

    num_rows: int
    schema: pa.Schema | None
    exceeded: str | None = None  # "OutputRowsExceeded" or "OutputBytesExceeded"


def _read_int(stream) -> int:
    data = stream.read(4)
    if len(data) < 4:
        raise EOFError("the engine closed the result stream early")
    return struct.unpack("!i", data)[0]


def write_parquet(frame, target: Path, max_rows: int, max_bytes: int) -> Written:
    """Collect ``frame`` into the Parquet file ``target`` unless it passes a limit."""
    from pyspark.errors.exceptions.captured import unwrap_spark_exception
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.traceback_utils import SCCallSiteSync
    from pyspark.util import local_connect_and_auth

    schema = to_arrow_schema(frame.schema, timezone="UTC")
    spool = target.with_suffix(".arrows")
    rows = size = 0
    exceeded: str | None = None
    with SCCallSiteSync(frame.sparkSession.sparkContext):
        port, secret, server = frame._jdf.collectAsArrowToPython()
    sockfile, sock = local_connect_and_auth(port, secret)
    # The handshake's timeout must not apply to the result: the query runs meanwhile
    # (as in pyspark's own _create_local_socket; the wall-clock limit bounds the job).
    sock.settimeout(None)
    try:
        order: list[int] = []
        reader = pa.ipc.open_stream(sockfile)
        with pa.OSFile(str(spool), "wb") as sink, pa.ipc.new_stream(sink, reader.schema) as out:
            for batch in reader:
                rows += batch.num_rows
                size += batch.nbytes
                if rows > max_rows or size > max_bytes:
                    exceeded = "OutputRowsExceeded" if rows > max_rows else "OutputBytesExceeded"
                    break
                out.write_batch(batch)
        if exceeded is None:
            count = _read_int(sockfile)
            if count == -1:
                raise RuntimeError("the engine failed while sending the result")
            order = [_read_int(sockfile) for _ in range(count)]
    finally:
        sockfile.close()
        sock.close()
        try:
            with unwrap_spark_exception():
                server.getResult()  # raises the job's own error, if it failed
        except Exception:
            if exceeded is None:
                spool.unlink(missing_ok=True)
                raise
    if exceeded is not None:
        spool.unlink(missing_ok=True)
        return Written(rows, None, exceeded)
    try:
        with pa.memory_map(str(spool)) as source:
            batches = list(pa.ipc.open_stream(source))  # mapped, not copied
            with pq.ParquetWriter(str(target), schema) as writer:
                for index in order:
                    writer.write_table(pa.Table.from_batches([batches[index]]).cast(schema))
                if not order:
                    writer.write_table(schema.empty_table())
            del batches
    finally:
        spool.unlink(missing_ok=True)
    if target.stat().st_size > max_bytes:
        target.unlink()
        return Written(rows, None, "OutputBytesExceeded")
    return Written(rows, schema)
