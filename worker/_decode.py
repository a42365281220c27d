"""Chunk codecs: stored chunk bytes decoded straight into a buffer.

Zarr's own read path (``array[a:b]``) goes through its asynchronous codec
pipeline: an event loop thread, a thread per file read, a decoded buffer per
chunk and a copy of each into the result. On a Dask worker that shares its
core with another worker, that machinery costs more than the decoding itself
(measured in ``bench/compare.py``: a pass through zarr ran at about 0.65 of
the decode floor).

For the chunk encodings that are a plain byte stream, :func:`chunk_decoder`
gives a decoder that does the same work with none of it: the same numcodecs
codec zarr would use, decoding *into* a given buffer. The decoded values are
the same bits either way (decoding is exact). :func:`~._read.read_box` reads
the chunk files through the pin and uses it; ``reader="zarr"`` in
:func:`svdserve.worker.svd` keeps zarr's path.

Direct decoding applies when the chunk is C-ordered bytes with at most one
compressor and nothing else:

- zarr v3: ``bytes`` followed by at most one of ``zstd``, ``gzip``, ``blosc``;
- zarr v2: any numcodecs ``compressor`` (or none), no ``filters``, order C.

Sharded arrays, transposes, checksums and filters keep zarr's path.
"""

from __future__ import annotations

import numpy as np

__all__ = ["chunk_decoder"]


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
