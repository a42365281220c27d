"""Direct chunk decoding: stored chunk bytes decoded straight into one panel buffer.

Zarr's own read path (``array[a:b]``) goes through its asynchronous codec
pipeline: an event loop thread, a thread per file read, a decoded buffer per
chunk and a copy of each into the result. On a Dask worker that shares its
core with another worker, that machinery costs more than the decoding itself
(measured in ``bench/compare.py``: a pass through zarr ran at about 0.65 of
the decode floor).

For the chunk encodings that are a plain byte stream, this module does the
same work with none of it: each chunk file is read through the pin's guard
(:func:`~._pin._local_get_ranges`: the stamp checked, exactly the pinned
bytes read) and decoded by the same numcodecs codec zarr would use, *into*
its rows of the panel buffer when the chunk covers whole rows of it, else
into one reused chunk buffer copied from. The decoded values are the same
bits either way (decoding is exact); ``reader="zarr"`` in
:func:`svdserve.worker.svd` keeps zarr's path.

Direct decoding applies when the chunk is C-ordered bytes with at most one
compressor and nothing else:

- zarr v3: ``bytes`` followed by at most one of ``zstd``, ``gzip``, ``blosc``;
- zarr v2: any numcodecs ``compressor`` (or none), no ``filters``, order C.

Sharded arrays, transposes, checksums and filters keep zarr's path.
"""

from __future__ import annotations

import numpy as np

from ._errors import InvalidInputError, SourceChangedError, StorageError

__all__ = ["READERS", "chunk_decoder", "decodes_directly", "read_box"]

#: Values of the ``reader`` setting: which code decodes the stored chunks.
READERS = ("direct", "zarr")


class _Decoder:
    """Decode one stored chunk: ``decode(raw, out)`` fills ``out`` (stored dtype, chunk shape)."""

    def __init__(self, codec, dtype, chunks, fill):
        self.codec, self.dtype, self.chunks, self.fill = codec, dtype, chunks, fill

    def decode(self, raw, out):
        """Decode ``raw`` into ``out``; a chunk that does not decode to exactly
        ``out.nbytes`` bytes raises ``ValueError`` (never a partly filled ``out``)."""
        if self.codec is not None:
            declared = _declared_size(self.codec, raw)
            if declared is not None:  # the header says how much it holds: decode in place
                _check_size(declared, out)
                self.codec.decode(raw, out=out)
                return
            raw = self.codec.decode(raw)
        data = np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8)
        _check_size(data.nbytes, out)
        out.view(np.uint8).reshape(-1)[:] = data


def _check_size(nbytes, out):
    if nbytes != out.nbytes:
        raise ValueError(f"the chunk holds {nbytes} bytes decoded, {out.nbytes} expected")


#: The zstd frame magic number (RFC 8878 §3.1.1).
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _declared_size(codec, raw):
    """Decoded size a zstd frame or blosc buffer declares in its header, else None.

    Decoding into a buffer larger than the data would leave its tail as it
    was, so the in-place path is taken only when the header gives the size:
    zstd's Frame_Content_Size (RFC 8878 §3.1.1.1; a single frame, as zarr
    writes) or blosc's ``nbytes`` (bytes 4–7 of its header).
    """
    from numcodecs import Blosc, Zstd

    head = bytes(memoryview(raw)[:18])
    if isinstance(codec, Blosc):
        return int.from_bytes(head[4:8], "little") if len(head) >= 16 else None
    if not isinstance(codec, Zstd) or len(head) < 6 or head[:4] != _ZSTD_MAGIC:
        return None
    fhd = head[4]
    single = (fhd >> 5) & 1
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
    width = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    if width == 0 or len(head) < pos + width:
        return None
    size = int.from_bytes(head[pos:pos + width], "little")
    return size + 256 if width == 2 else size


def _v3_codec(codecs):
    """The numcodecs codec behind a v3 chain ``bytes [+ compressor]``, or False if not direct.

    It is the very object zarr's pipeline decodes with (zarr is pinned in
    ``pyproject.toml``; each compressor codec keeps its numcodecs twin).
    """
    from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec

    if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
        return False
    if len(codecs) == 1:
        return None
    twins = {ZstdCodec: "_zstd_codec", GzipCodec: "_gzip_codec", BloscCodec: "_blosc_codec"}
    attr = twins.get(type(codecs[1]))
    return False if attr is None else getattr(codecs[1], attr)


def chunk_decoder(meta):
    """A direct decoder for an array's chunks, or None when zarr's path is needed.

    Parameters
    ----------
    meta : ArrayV2Metadata or ArrayV3Metadata

    Returns
    -------
    _Decoder or None
    """
    if meta.zarr_format == 2:
        if meta.filters or meta.order != "C":
            return None
        codec, dtype = meta.compressor, meta.dtype.to_native_dtype()
    else:
        codec = _v3_codec(tuple(meta.codecs))
        if codec is False:
            return None
        dtype = np.dtype(meta.data_type.to_native_dtype())
        endian = getattr(meta.codecs[0].endian, "value", None)
        if endian and dtype.itemsize > 1:
            dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    chunks = tuple(meta.chunks)
    if len(chunks) != 2:
        return None
    return _Decoder(codec, np.dtype(dtype), chunks, meta.fill_value)


def _remote_whole(ref, expect, keys):
    """Whole objects of ``keys`` fetched concurrently; None for an allowed missing one."""
    from ._pin import _missing_message, _change_message, _remote_fs

    fs, path = _remote_fs(ref)
    got = fs.cat([f"{path}/{key}" for key in keys], on_error="return")  # a list: a dict back
    out = []
    for key in keys:
        data = got[f"{path}/{key}"]
        if isinstance(data, FileNotFoundError):
            where, stamp = expect[key]
            if stamp == "" and ref.allow_missing:
                data = None
            elif stamp == "":
                raise InvalidInputError(_missing_message(ref, where, 1), field="source")
            else:
                raise SourceChangedError(_change_message(ref, key, where, stamp, ""))
        elif isinstance(data, BaseException):
            raise data
        out.append(data)
    return out


def read_box(ref, expect, rows, cols):
    """Rows ``rows`` and columns ``cols`` (slices) of a pinned 2-D array, decoded directly.

    Parameters
    ----------
    ref : SourceRef
        Its chunks must have a :func:`chunk_decoder`.
    expect : dict
        Chunk key to ``((i, j), stamp)`` for every chunk the box touches.
    rows, cols : slice

    Returns
    -------
    ndarray of shape (rows, cols), float64, C order
    """
    from ._pin import _local_get_ranges, _meta_of, box_cells, chunk_region

    meta = _meta_of(ref)
    dec = chunk_decoder(meta)
    cm, cn = dec.chunks
    out = np.empty((rows.stop - rows.start, cols.stop - cols.start))
    cells = list(box_cells(rows, cols, (cm, cn)))
    keys = [meta.encode_chunk_key(cell) for cell, _, _ in cells]
    fetched = _remote_whole(ref, expect, keys) if ref.remote else None
    scratch = None
    for n_cell, (((i, j), (a0, a1, b0, b1), at), key) in enumerate(zip(cells, keys)):
        dst = out[at]
        if fetched is not None:
            raw = fetched[n_cell]
        else:
            got = _local_get_ranges(ref, expect, key, None)
            raw = None if got is None else got[0]
        if raw is None:  # missing at rest, allowed: the fill value
            dst[...] = dec.fill if dec.fill is not None else 0
            continue
        # A whole chunk spanning the box's width is contiguous in ``out``: decode in place.
        whole = dec.dtype == out.dtype and (a0, a1, b0, b1) == (0, cm, 0, cn) and cn == out.shape[1]
        try:
            if whole:
                dec.decode(raw, dst)
                continue
            if scratch is None:
                scratch = np.empty((cm, cn), dtype=dec.dtype)
            dec.decode(raw, scratch)
        except (MemoryError, SourceChangedError):
            raise
        except Exception as exc:  # noqa: BLE001 - codec, truncation
            raise StorageError(
                f"chunk {key!r} of {ref.name} ({chunk_region(ref, i, j)}) could not be read: "
                f"{type(exc).__name__}: {exc}. The stored chunk is corrupt or truncated; "
                "rewrite the array.") from exc
        dst[...] = scratch[a0:a1, b0:b1]
    return out


def decodes_directly(ref, reader):
    """Whether panels of the pinned array ``ref`` are read by :func:`read_box` under ``reader``."""
    from ._pin import _meta_of

    return (reader == "direct" and (ref.view is None or ref.view.is_identity)
            and chunk_decoder(_meta_of(ref)) is not None)
