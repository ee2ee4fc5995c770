"""Read the official NAS-Bench-101 files without TensorFlow.

NAS-Bench-101 (Ying et al., "NAS-Bench-101: Towards Reproducible Neural Architecture Search",
ICML 2019; google-research/nasbench) ships its table as TFRecord files: `nasbench_only108.tfrecord`
(the 108-epoch runs) and `nasbench_full.tfrecord` (4, 12, 36 and 108 epochs). Each record is one
training run of one cell. This module reads them with the standard library only, in three layers:

- the TFRecord framing (`iter_records`, `write_records`), every integer little endian:

      uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

  where CRC32C is the Castagnoli CRC (`crc32c`), table-driven in pure Python, or the `crc32c`
  / `google_crc32c` package where one is installed (the same numbers, faster);
- one row of the table (`parse_row`, `iter_rows`): the payload is UTF-8 JSON of
  `[module_hash, epochs, raw_adjacency, raw_operations, raw_metrics]`;
- the `ModelMetrics` protobuf inside a row (`decode_model_metrics`, `encode_model_metrics`),
  decoded from the protobuf wire format by hand (nasbench/lib/model_metrics.proto, proto2).

A damaged file or a file that is not NAS-Bench-101 is one `RecordError` (a `UserError`) whose
one-line message names the file, the record's number and byte offset, what is wrong and the fix.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import reprlib
import stat
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple

from darts.errors import UserError

StrPath = str | os.PathLike


class RecordError(UserError):
    """A TFRecord file that is damaged, or whose rows are not NAS-Bench-101 rows."""


class WireError(ValueError):
    """A protobuf message that cannot be decoded (truncated, or not the wire format)."""


# ---------------------------------------------------------------------------------------------
# CRC32C (Castagnoli): the checksum of the TFRecord framing

CRC32C_CHECK = 0xE3069283  # crc32c(b"123456789"), the published check value
_CRC32C_POLY = 0x82F63B78  # the Castagnoli polynomial 0x1EDC6F41, bit-reversed
_MASK_DELTA = 0xA282EAD8  # TFRecord stores CRCs rotated and offset by this constant
_U32 = 0xFFFFFFFF


def _crc32c_table() -> tuple[int, ...]:
    """The CRC of each single byte value: eight shift-and-xor steps per byte, done once."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c_python(data: bytes, crc: int = 0) -> int:
    """CRC32C of `data` in pure Python, one table lookup per byte (about 10 MB/s).

    `crc` is the CRC of the bytes before `data`, to checksum a stream in pieces.
    """
    table = _CRC32C_TABLE
    crc ^= _U32
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


def _native_crc32c() -> Callable[[bytes], int] | None:
    """A compiled CRC32C from an installed package, if one is there and gives the check value."""
    candidates: list[Callable[[bytes], int]] = []
    try:
        import google_crc32c  # type: ignore[import-not-found]

        if getattr(google_crc32c, "implementation", "c") == "c":
            candidates.append(google_crc32c.value)
    except ImportError:
        pass
    try:
        import crc32c as crc32c_package  # type: ignore[import-not-found]

        candidates.append(crc32c_package.crc32c)
    except (ImportError, AttributeError):
        pass
    for candidate in candidates:
        try:
            if candidate(b"123456789") == CRC32C_CHECK:
                return candidate
        except Exception:  # a broken optional package: the pure-Python path still works
            continue
    return None


_CRC32C_IMPL: Callable[[bytes], int] = _native_crc32c() or crc32c_python


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli) of `data`: a compiled package's where installed, else pure Python."""
    return _CRC32C_IMPL(data)


def masked_crc32c(data: bytes) -> int:
    """The CRC that TFRecord stores: CRC32C rotated right by 15 bits plus a constant, so that
    the CRC of a string of CRCs is not trivially related to them."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


# ---------------------------------------------------------------------------------------------
# TFRecord framing

_HEADER = struct.Struct("<QI")  # data length, masked CRC of the length's eight bytes
_FOOTER = struct.Struct("<I")  # masked CRC of the data
_CHUNK = 1 << 20  # read buffer, and the largest single read of a record's data
_DOWNLOAD_AGAIN = "download the file again (links in the google-research/nasbench README)"


class _Damage(Exception):
    """What is wrong with one record; `_iter_framed` adds where the record is."""


def iter_records(path: StrPath) -> Iterator[bytes]:
    """The payload of each record of the TFRecord file at `path`, in order, streamed.

    Both CRCs of every record are checked; a damaged record raises `RecordError`. An empty
    file has no records.
    """
    for _number, _offset, payload in _iter_framed(path):
        yield payload


def write_records(path: StrPath, payloads: Iterable[bytes]) -> int:
    """Write `payloads` as a TFRecord file at `path`; return how many records were written."""
    count = 0
    with open(path, "wb") as stream:
        for payload in payloads:
            stream.write(frame_record(bytes(payload)))
            count += 1
    return count


def frame_record(payload: bytes) -> bytes:
    """One record as it lies on disk: header, `payload`, footer."""
    length = struct.pack("<Q", len(payload))
    return (length + _FOOTER.pack(masked_crc32c(length)) + payload
            + _FOOTER.pack(masked_crc32c(payload)))


def _iter_framed(path: StrPath) -> Iterator[tuple[int, int, bytes]]:
    """(1-based record number, byte offset, payload) of each record of the file at `path`."""
    name = os.fspath(path)
    try:
        stream = open(name, "rb", buffering=_CHUNK)
    except OSError as error:
        raise RecordError(f"{name}: cannot read it ({error.strerror or error}); give the path "
                          f"of a downloaded NAS-Bench-101 .tfrecord file") from None
    with stream:
        size = _regular_file_size(stream)
        number, offset = 1, 0
        while header := stream.read(_HEADER.size):
            remaining = None if size is None else size - offset
            try:
                payload = _read_record(stream, header, remaining)
            except _Damage as damage:
                raise RecordError(f"{name}: record {number} at byte {offset}: {damage}; "
                                  f"the file is damaged, {_DOWNLOAD_AGAIN}") from None
            yield number, offset, payload
            number += 1
            offset += _HEADER.size + len(payload) + _FOOTER.size


def _regular_file_size(stream: IO[bytes]) -> int | None:
    """The size of the file behind `stream`, or None for a pipe or device."""
    status = os.fstat(stream.fileno())
    return status.st_size if stat.S_ISREG(status.st_mode) else None


def _read_record(stream: IO[bytes], header: bytes, remaining: int | None) -> bytes:
    """The payload of the record that starts with `header` (already read from `stream`).

    `remaining` is how many bytes the file holds from the record's start (None: unknown).
    Raises `_Damage` naming what is wrong.
    """
    if len(header) < _HEADER.size:
        raise _Damage(f"truncated ({len(header)} of {_HEADER.size} bytes)")
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
        raise _Damage("bad length CRC")
    total = _HEADER.size + length + _FOOTER.size
    if remaining is not None and remaining < total:
        raise _Damage(f"truncated ({remaining} of {total} bytes)")
    payload = _read_up_to(stream, length)
    footer = stream.read(_FOOTER.size) if len(payload) == length else b""
    if len(footer) < _FOOTER.size:
        raise _Damage(f"truncated ({_HEADER.size + len(payload) + len(footer)} of {total} bytes)")
    if masked_crc32c(payload) != _FOOTER.unpack(footer)[0]:
        raise _Damage("bad data CRC")
    return payload


def _read_up_to(stream: IO[bytes], count: int) -> bytes:
    """Up to `count` bytes of `stream` (fewer only at its end), read in bounded chunks so that
    a damaged length never asks for more memory than the file holds."""
    if count <= _CHUNK:
        return stream.read(count)
    parts = []
    while count > 0:
        part = stream.read(min(count, _CHUNK))
        if not part:
            break
        parts.append(part)
        count -= len(part)
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------
# Protobuf wire format: ModelMetrics and EvaluationData of nasbench/lib/model_metrics.proto

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_DOUBLE = struct.Struct("<d")


class _Field(NamedTuple):
    """A scalar field of a message: its name and protobuf type ("double", "int32", "string")."""

    name: str
    kind: str


_WIRE_TYPE = {"double": _FIXED64, "int32": _VARINT, "string": _LENGTH_DELIMITED}

# message EvaluationData: all optional; [0] is at initialisation, [1] halfway, [2] at the end
EVALUATION_DATA_FIELDS: dict[int, _Field] = {
    1: _Field("current_epoch", "double"),
    2: _Field("training_time", "double"),
    3: _Field("train_accuracy", "double"),
    4: _Field("validation_accuracy", "double"),
    5: _Field("test_accuracy", "double"),
    6: _Field("checkpoint_path", "string"),
}
# message ModelMetrics: field 1 is `repeated EvaluationData evaluation_data`
_EVALUATION_DATA_NUMBER = 1
MODEL_METRICS_FIELDS: dict[int, _Field] = {
    2: _Field("trainable_parameters", "int32"),
    3: _Field("total_time", "double"),
}


def decode_model_metrics(blob: bytes) -> dict[str, Any]:
    """Decode a serialized `ModelMetrics` message.

    Returns {"evaluation_data": [dict of the six EvaluationData fields], "trainable_parameters":
    int, "total_time": float}; a field absent from `blob` is None. Unknown fields are skipped;
    a truncated or malformed message raises `WireError` (a ValueError).
    """
    metrics: dict[str, Any] = {"evaluation_data": []}
    metrics.update((spec.name, None) for spec in MODEL_METRICS_FIELDS.values())
    for number, wire_type, raw in _iter_fields(blob):
        if number == _EVALUATION_DATA_NUMBER and wire_type == _LENGTH_DELIMITED:
            assert isinstance(raw, bytes)
            metrics["evaluation_data"].append(_decode_scalars(raw, EVALUATION_DATA_FIELDS))
        else:
            _set_scalar(metrics, MODEL_METRICS_FIELDS, number, wire_type, raw)
    return metrics


def _decode_scalars(blob: bytes, fields: Mapping[int, _Field]) -> dict[str, Any]:
    """The scalar `fields` of the message `blob`, None where absent."""
    values: dict[str, Any] = {spec.name: None for spec in fields.values()}
    for number, wire_type, raw in _iter_fields(blob):
        _set_scalar(values, fields, number, wire_type, raw)
    return values


def _set_scalar(values: dict[str, Any], fields: Mapping[int, _Field], number: int,
                wire_type: int, raw: int | bytes) -> None:
    """Store one decoded field in `values` if it is one of `fields`. The last occurrence of a
    field wins (proto2); a known number with another wire type is skipped as unknown."""
    spec = fields.get(number)
    if spec is not None and _WIRE_TYPE[spec.kind] == wire_type:
        values[spec.name] = _decode_scalar(spec, raw)


def _decode_scalar(spec: _Field, raw: int | bytes) -> int | float | str:
    """A field's value from its raw wire value (a varint's int, or the bytes it spans)."""
    if spec.kind == "int32":
        assert isinstance(raw, int)
        low = raw & _U32  # negative int32s are sign-extended to 64 bits on the wire
        return low - (1 << 32) if low & 0x80000000 else low
    assert isinstance(raw, bytes)
    if spec.kind == "double":
        return _DOUBLE.unpack(raw)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"field {spec.name} is not UTF-8") from None


def _iter_fields(blob: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, raw value) of each field of the message `blob`, in order.

    The raw value is the int of a varint, else the bytes the field spans (8 for fixed64, 4 for
    fixed32, the payload of a length-delimited field).
    """
    position = 0
    while position < len(blob):
        key, position = _read_varint(blob, position)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {position}: not a protobuf message")
        value: int | bytes
        if wire_type == _VARINT:
            value, position = _read_varint(blob, position)
        elif wire_type in (_FIXED64, _FIXED32):
            value, position = _take(blob, position, 8 if wire_type == _FIXED64 else 4)
        elif wire_type == _LENGTH_DELIMITED:
            size, position = _read_varint(blob, position)
            value, position = _take(blob, position, size)
        else:
            raise WireError(f"unsupported wire type {wire_type} (field {number})")
        yield number, wire_type, value


def _read_varint(blob: bytes, position: int) -> tuple[int, int]:
    """The varint at `position` (seven bits a byte, least significant first) and the position
    after it."""
    value = shift = 0
    while True:
        if position >= len(blob):
            raise WireError(f"truncated varint at byte {position} of {len(blob)}")
        byte = blob[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes ending at byte {position}")


def _take(blob: bytes, position: int, size: int) -> tuple[bytes, int]:
    """The `size` bytes at `position` and the position after them."""
    end = position + size
    if end > len(blob):
        raise WireError(f"truncated field: {size} bytes wanted at byte {position}, "
                        f"{len(blob) - position} left")
    return blob[position:end], end


def encode_model_metrics(metrics: Mapping[str, Any]) -> bytes:
    """Serialize `metrics` (the dict `decode_model_metrics` returns) as a `ModelMetrics` message.

    Fields that are None or absent are left out; fields go in number order, as protobuf
    writes them. An unknown key raises ValueError.
    """
    _check_keys(metrics, MODEL_METRICS_FIELDS, "evaluation_data")
    out = bytearray()
    for entry in metrics.get("evaluation_data") or ():
        _check_keys(entry, EVALUATION_DATA_FIELDS)
        data = _encode_scalars(entry, EVALUATION_DATA_FIELDS)
        out += _encode_key(_EVALUATION_DATA_NUMBER, _LENGTH_DELIMITED)
        out += _encode_varint(len(data)) + data
    out += _encode_scalars(metrics, MODEL_METRICS_FIELDS)
    return bytes(out)


def _check_keys(values: Mapping[str, Any], fields: Mapping[int, _Field], *extra: str) -> None:
    """Refuse keys of `values` that are not fields of the message: a typo would be lost."""
    known = {spec.name for spec in fields.values()} | set(extra)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; known: {sorted(known)}")


def _encode_scalars(values: Mapping[str, Any], fields: Mapping[int, _Field]) -> bytes:
    """The scalar `fields` of `values` that are present and not None, in field-number order."""
    out = bytearray()
    for number in sorted(fields):
        spec = fields[number]
        value = values.get(spec.name)
        if value is None:
            continue
        out += _encode_key(number, _WIRE_TYPE[spec.kind])
        if spec.kind == "double":
            out += _DOUBLE.pack(float(value))
        elif spec.kind == "int32":
            if isinstance(value, bool) or not -(1 << 31) <= int(value) < (1 << 31):
                raise ValueError(f"{spec.name}={value!r} is not an int32")
            out += _encode_varint(int(value) & ((1 << 64) - 1))
        else:
            text = str(value).encode("utf-8")
            out += _encode_varint(len(text)) + text
    return bytes(out)


def _encode_key(number: int, wire_type: int) -> bytes:
    """A field's key: its number and wire type in one varint."""
    return _encode_varint(number << 3 | wire_type)


def _encode_varint(value: int) -> bytes:
    """`value` (0 <= value < 2**64) as a varint: seven bits a byte, least significant first."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# One NAS-Bench-101 row

_MODULE_HASH = re.compile(r"[0-9a-fA-F]{32}")
_NOT_NB101 = "give the official nasbench_only108.tfrecord or nasbench_full.tfrecord"


@dataclass(frozen=True)
class Nb101Row:
    """One training run of one NAS-Bench-101 cell (the official files hold three per cell and
    epoch budget).

    `matrix[i][j]` is 1 where the cell has an edge from node i to node j (upper triangular);
    `ops[i]` is node i's operation ("input", "conv3x3-bn-relu", ..., "output"); `metrics` is
    `decode_model_metrics` of the run's ModelMetrics.
    """

    hash: str
    epochs: int
    matrix: tuple[tuple[int, ...], ...]
    ops: tuple[str, ...]
    metrics: dict[str, Any] = field(hash=False)


def iter_rows(path: StrPath) -> Iterator[Nb101Row]:
    """The rows of an official NAS-Bench-101 file, streamed; any problem is a `RecordError`."""
    name = os.fspath(path)
    for number, offset, payload in _iter_framed(name):
        yield parse_row(payload, f"{name}: record {number} at byte {offset}")


def parse_row(payload: bytes, where: str) -> Nb101Row:
    """The row in one record's `payload`: UTF-8 JSON of
    `[module_hash, epochs, raw_adjacency, raw_operations, raw_metrics]`.

    `where` names the record in the one-line `RecordError` raised if the payload is not a row.
    """
    module_hash, epochs, raw_adjacency, raw_operations, raw_metrics = _load_fields(payload, where)
    if not isinstance(module_hash, str) or not _MODULE_HASH.fullmatch(module_hash):
        raise _not_a_row(where, f"module_hash {_short(module_hash)} is not 32 hex digits")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
        raise _not_a_row(where, f"epochs {_short(epochs)} is not a positive integer")
    matrix = _parse_adjacency(raw_adjacency, where)
    ops = _parse_operations(raw_operations, len(matrix), where)
    return Nb101Row(module_hash, epochs, matrix, ops, _parse_metrics(raw_metrics, where))


def _load_fields(payload: bytes, where: str) -> list[Any]:
    """The five fields of a row's JSON list."""
    try:
        fields = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise _not_a_row(where, "the record is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise _not_a_row(where, f"the record is not JSON ({error})") from None
    if not isinstance(fields, list) or len(fields) != 5:
        raise _not_a_row(where, f"expected a JSON list of 5 fields [module_hash, epochs, "
                                f"adjacency, operations, metrics], got {_short(fields)}")
    return fields


def _parse_adjacency(raw: Any, where: str) -> tuple[tuple[int, ...], ...]:
    """The n x n adjacency matrix from its row-major string of n*n '0'/'1' characters."""
    if not isinstance(raw, str) or not raw:
        raise _not_a_row(where, f"adjacency {_short(raw)} is not a string of 0s and 1s")
    if set(raw) - {"0", "1"}:
        raise _not_a_row(where, f"adjacency {_short(raw)} holds characters other than 0 and 1")
    n = math.isqrt(len(raw))
    if n * n != len(raw):
        raise _not_a_row(where, f"adjacency of {len(raw)} characters is not a square matrix")
    return tuple(tuple(int(bit) for bit in raw[row * n:(row + 1) * n]) for row in range(n))


def _parse_operations(raw: Any, nodes: int, where: str) -> tuple[str, ...]:
    """The comma-separated operation of each of the cell's `nodes` nodes."""
    ops = tuple(raw.split(",")) if isinstance(raw, str) else ()
    if len(ops) != nodes or not all(ops):
        raise _not_a_row(where, f"operations {_short(raw)} are not {nodes} comma-separated "
                                f"names, one per node of the adjacency matrix")
    return ops


def _parse_metrics(raw: Any, where: str) -> dict[str, Any]:
    """The run's ModelMetrics from the base64 of its serialized protobuf."""
    if not isinstance(raw, str):
        raise _not_a_row(where, f"metrics {_short(raw)} is not a base64 string")
    try:
        blob = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as error:
        raise _not_a_row(where, f"metrics are not valid base64 ({error})") from None
    try:
        return decode_model_metrics(blob)
    except WireError as error:
        raise _not_a_row(where, f"metrics are not a ModelMetrics protobuf ({error})") from None


def _not_a_row(where: str, problem: str) -> RecordError:
    """The one-line error for a record that is not a NAS-Bench-101 row."""
    return RecordError(f"{where}: not a NAS-Bench-101 row: {problem}; {_NOT_NB101}")


def _short(value: Any) -> str:
    """A short one-line repr of `value` for an error message."""
    return reprlib.repr(value)
