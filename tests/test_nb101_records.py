"""The NAS-Bench-101 file reader (`darts.benchmarks.tfrecord`): TFRecord framing with its CRC32C,
the ModelMetrics protobuf, and one row of the table. Files are written here in the real on-disk
format; the protobuf is checked against google.protobuf and the framing against TensorBoard's
own record writer, both written independently of ours. The metrics' numbers are made up."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading

import pytest

from darts.benchmarks import tfrecord
from darts.benchmarks.tfrecord import (
    Nb101Row,
    RecordError,
    WireError,
    crc32c,
    crc32c_python,
    decode_model_metrics,
    encode_model_metrics,
    iter_records,
    iter_rows,
    masked_crc32c,
    parse_row,
    write_records,
)
from darts.errors import UserError

# A cell of the NAS-Bench-101 README: 7 nodes, upper-triangular adjacency.
MATRIX = ((0, 1, 1, 1, 0, 1, 0),
          (0, 0, 0, 0, 0, 0, 1),
          (0, 0, 0, 0, 0, 0, 1),
          (0, 0, 0, 0, 1, 0, 0),
          (0, 0, 0, 0, 0, 0, 1),
          (0, 0, 0, 0, 0, 0, 1),
          (0, 0, 0, 0, 0, 0, 0))
OPS = ("input", "conv1x1-bn-relu", "conv3x3-bn-relu", "conv3x3-bn-relu", "conv3x3-bn-relu",
       "maxpool3x3", "output")
MODULE_HASH = hashlib.md5(b"a cell").hexdigest()


def evaluation(epoch: float, accuracy: float) -> dict:
    return {"current_epoch": epoch, "training_time": 10.0 * epoch, "train_accuracy": accuracy,
            "validation_accuracy": accuracy - 0.05, "test_accuracy": accuracy - 0.06,
            "checkpoint_path": f"gs://nasbench/run/model.ckpt-{int(epoch)}"}


# at initialisation, halfway, at the end of training
METRICS = {"evaluation_data": [evaluation(0.0, 0.1), evaluation(54.0, 0.8),
                               evaluation(108.0, 0.95)],
           "trainable_parameters": 8555530, "total_time": 1155.85}


def row_payload(fields: list) -> bytes:
    return json.dumps(fields).encode("utf-8")


def good_fields() -> list:
    adjacency = "".join(str(bit) for row in MATRIX for bit in row)
    metrics = base64.b64encode(encode_model_metrics(METRICS)).decode("ascii")
    return [MODULE_HASH, 108, adjacency, ",".join(OPS), metrics]


def one_line_error(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    assert isinstance(error.value, UserError)
    return message


# --- CRC32C ------------------------------------------------------------------------------------

def test_crc32c_gives_the_published_check_value():
    assert crc32c_python(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283  # whichever implementation is in use
    assert crc32c_python(b"") == 0


def test_crc32c_matches_the_iscsi_test_vectors():
    # RFC 3720, B.4: CRC32C of 32 bytes of zeros, of ones, and of 0, 1, ..., 31
    assert crc32c_python(bytes(32)) == 0x8A9136AA
    assert crc32c_python(b"\xff" * 32) == 0x62A8AB43
    assert crc32c_python(bytes(range(32))) == 0x46DD794E


def test_crc32c_continues_across_pieces():
    assert crc32c_python(b"6789", crc32c_python(b"12345")) == 0xE3069283


def test_masked_crc_matches_tensorboards():
    stub = pytest.importorskip("tensorboard.compat.tensorflow_stub.pywrap_tensorflow")
    for data in (b"", b"123456789", bytes(range(256)), b"\x00" * 8):
        assert masked_crc32c(data) == stub.masked_crc32c(data)


# --- TFRecord framing ----------------------------------------------------------------------------

PAYLOADS = [b"first", b"", b"the third record" * 7]


def offsets(payloads: list[bytes]) -> list[int]:
    """Byte offset of each record: 12 bytes of header and 4 of footer around each payload."""
    starts, offset = [], 0
    for payload in payloads:
        starts.append(offset)
        offset += 12 + len(payload) + 4
    return starts


def test_written_records_read_back(tmp_path):
    path = tmp_path / "records.tfrecord"
    assert write_records(path, PAYLOADS) == 3
    assert path.stat().st_size == sum(16 + len(p) for p in PAYLOADS)
    assert list(iter_records(path)) == PAYLOADS
    assert list(iter_records(str(path))) == PAYLOADS


def test_a_record_larger_than_a_read_chunk_reads_back(tmp_path, monkeypatch):
    monkeypatch.setattr(tfrecord, "_CHUNK", 64)
    big = bytes(range(256)) * 4
    path = tmp_path / "big.tfrecord"
    write_records(path, [big, b"after"])
    assert list(iter_records(path)) == [big, b"after"]


def test_our_files_are_byte_for_byte_tensorboards(tmp_path):
    record_writer = pytest.importorskip("tensorboard.summary.writer.record_writer")
    theirs = tmp_path / "theirs.tfrecord"
    with open(theirs, "wb") as stream:
        writer = record_writer.RecordWriter(stream)
        for payload in PAYLOADS:
            writer.write(payload)
    ours = tmp_path / "ours.tfrecord"
    write_records(ours, PAYLOADS)
    assert ours.read_bytes() == theirs.read_bytes()
    assert list(iter_records(theirs)) == PAYLOADS


def test_an_empty_file_has_no_records(tmp_path):
    path = tmp_path / "empty.tfrecord"
    path.write_bytes(b"")
    assert list(iter_records(path)) == []


def damaged(tmp_path, position: int) -> str:
    """A file of PAYLOADS with the byte at `position` flipped."""
    path = tmp_path / "nasbench_only108.tfrecord"
    write_records(path, PAYLOADS)
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))
    return str(path)


def test_a_flipped_data_byte_is_a_bad_data_crc_of_that_record(tmp_path):
    second, third = offsets(PAYLOADS)[1:]
    # record 2 is empty: flip its data CRC instead; then a data byte of record 3
    for number, position in ((2, second + 12), (3, third + 12 + 5)):
        path = damaged(tmp_path, position)
        start = offsets(PAYLOADS)[number - 1]
        with pytest.raises(RecordError) as error:
            list(iter_records(path))
        message = one_line_error(error)
        assert f"{path}: record {number} at byte {start}: bad data CRC" in message
        assert "download the file again" in message


def test_a_flipped_data_byte_in_record_2_of_3(tmp_path):
    payloads = [b"one", b"two two", b"three"]
    path = tmp_path / "nasbench_full.tfrecord"
    write_records(path, payloads)
    start = offsets(payloads)[1]
    data = bytearray(path.read_bytes())
    data[start + 12 + 3] ^= 0x80
    path.write_bytes(bytes(data))
    records = iter_records(path)
    assert next(records) == b"one"  # streamed: the good record comes before the error
    with pytest.raises(RecordError) as error:
        next(records)
    message = one_line_error(error)
    assert message.startswith(f"{path}: record 2 at byte {start}: bad data CRC;")
    assert "download the file again" in message


def test_a_flipped_length_byte_is_a_bad_length_crc(tmp_path):
    for number, start in enumerate(offsets(PAYLOADS), start=1):
        path = damaged(tmp_path, start)  # the length's least significant byte
        with pytest.raises(RecordError) as error:
            list(iter_records(path))
        assert f"record {number} at byte {start}: bad length CRC" in one_line_error(error)


def test_a_flipped_length_crc_byte_is_a_bad_length_crc(tmp_path):
    path = damaged(tmp_path, 8)
    with pytest.raises(RecordError, match="record 1 at byte 0: bad length CRC"):
        list(iter_records(path))


def test_a_truncated_file_says_how_much_of_the_record_is_there(tmp_path):
    path = tmp_path / "cut.tfrecord"
    write_records(path, PAYLOADS)
    whole = path.read_bytes()
    last, size = offsets(PAYLOADS)[2], 16 + len(PAYLOADS[2])
    for cut in (1, 4, 5, size - 12):
        path.write_bytes(whole[:-cut])
        with pytest.raises(RecordError) as error:
            list(iter_records(path))
        message = one_line_error(error)
        assert f"record 3 at byte {last}: truncated ({size - cut} of {size} bytes)" in message
    path.write_bytes(whole + b"\x07" * 5)  # a header cut short after the last record
    with pytest.raises(RecordError, match=r"record 4 at byte \d+: truncated \(5 of 12 bytes\)"):
        list(iter_records(path))


def test_a_missing_file_is_one_clear_error(tmp_path):
    path = tmp_path / "nasbench_only108.tfrecord"
    with pytest.raises(RecordError) as error:
        list(iter_records(path))
    assert str(path) in one_line_error(error)


# --- The ModelMetrics protobuf -------------------------------------------------------------------

def test_trainable_parameters_by_hand():
    # field 2, wire type 0 (varint): key = 2 << 3 | 0 = 0x10.
    # 8555530 = 0x828C0A; in 7-bit groups, least significant first:
    #   8555530 & 0x7F = 0x0A            -> 0x8A (more bytes follow: set bit 7)
    #   8555530 >> 7 = 66840, & 0x7F = 0x18 -> 0x98
    #   66840 >> 7 = 522, & 0x7F = 0x0A   -> 0x8A
    #   522 >> 7 = 4                      -> 0x04 (last byte)
    blob = bytes([0x10, 0x8A, 0x98, 0x8A, 0x04])
    assert encode_model_metrics({"trainable_parameters": 8555530}) == blob
    assert decode_model_metrics(blob) == {"evaluation_data": [], "trainable_parameters": 8555530,
                                          "total_time": None}
    # field 3, wire type 1 (fixed64): key 0x19, then the double 1.5 = 0x3FF8000000000000 little
    # endian
    assert decode_model_metrics(bytes([0x19, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F]))["total_time"] == 1.5


def test_metrics_round_trip_through_our_encoder():
    assert decode_model_metrics(encode_model_metrics(METRICS)) == METRICS
    assert decode_model_metrics(b"") == {"evaluation_data": [], "trainable_parameters": None,
                                         "total_time": None}


def reference_classes():
    """ModelMetrics and EvaluationData of nasbench/lib/model_metrics.proto, built by
    google.protobuf from a descriptor, plus `Extended`: ModelMetrics with fields of every wire
    type that ours does not know."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    proto = descriptor_pb2.FileDescriptorProto(name="nb101_test/model_metrics.proto",
                                               package="nb101_test", syntax="proto2")
    evaluation_data = proto.message_type.add(name="EvaluationData")
    for number, name in ((1, "current_epoch"), (2, "training_time"), (3, "train_accuracy"),
                         (4, "validation_accuracy"), (5, "test_accuracy")):
        evaluation_data.field.add(name=name, number=number, type=field.TYPE_DOUBLE,
                                  label=optional)
    evaluation_data.field.add(name="checkpoint_path", number=6, type=field.TYPE_STRING,
                              label=optional)
    for message_name in ("ModelMetrics", "Extended"):
        message = proto.message_type.add(name=message_name)
        message.field.add(name="evaluation_data", number=1, type=field.TYPE_MESSAGE,
                          label=repeated, type_name=".nb101_test.EvaluationData")
        message.field.add(name="trainable_parameters", number=2, type=field.TYPE_INT32,
                          label=optional)
        message.field.add(name="total_time", number=3, type=field.TYPE_DOUBLE, label=optional)
    for number, name, kind in ((7, "extra_varint", field.TYPE_INT64),
                               (8, "extra_fixed32", field.TYPE_FLOAT),
                               (9, "extra_string", field.TYPE_STRING),
                               (10, "extra_fixed64", field.TYPE_FIXED64)):
        message.field.add(name=name, number=number, type=kind, label=optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"nb101_test.{n}"))
                 for n in ("ModelMetrics", "Extended"))


def reference_message(cls, metrics: dict):
    message = cls()
    for entry in metrics["evaluation_data"]:
        message.evaluation_data.add(**{k: v for k, v in entry.items() if v is not None})
    for key in ("trainable_parameters", "total_time"):
        if metrics.get(key) is not None:
            setattr(message, key, metrics[key])
    return message


def as_dict(message) -> dict:
    """What our decoder returns, read from a google.protobuf message."""
    def value(msg, name):
        return getattr(msg, name) if msg.HasField(name) else None

    names = [spec.name for spec in tfrecord.EVALUATION_DATA_FIELDS.values()]
    return {"evaluation_data": [{name: value(entry, name) for name in names}
                                for entry in message.evaluation_data],
            "trainable_parameters": value(message, "trainable_parameters"),
            "total_time": value(message, "total_time")}


SPARSE = {"evaluation_data": [{"current_epoch": 0.0}, {"checkpoint_path": "ü/model.ckpt-0"},
                              {}, {"test_accuracy": float("inf")}],
          "trainable_parameters": -7, "total_time": None}


@pytest.mark.parametrize("metrics", [METRICS, SPARSE], ids=["full", "sparse"])
def test_decoder_agrees_with_google_protobuf(metrics):
    model_metrics, _ = reference_classes()
    blob = reference_message(model_metrics, metrics).SerializeToString()
    assert decode_model_metrics(blob) == as_dict(model_metrics.FromString(blob))


@pytest.mark.parametrize("metrics", [METRICS, SPARSE], ids=["full", "sparse"])
def test_encoder_agrees_with_google_protobuf(metrics):
    model_metrics, _ = reference_classes()
    ours = encode_model_metrics(metrics)
    assert as_dict(model_metrics.FromString(ours)) == decode_model_metrics(ours)
    assert ours == reference_message(model_metrics, metrics).SerializeToString()


def test_decoder_skips_fields_it_does_not_know():
    _, extended = reference_classes()
    message = reference_message(extended, METRICS)
    message.extra_varint, message.extra_fixed32 = -(1 << 40), 2.5
    message.extra_string, message.extra_fixed64 = "not ours", (1 << 64) - 1
    assert decode_model_metrics(message.SerializeToString()) == METRICS


def test_a_truncated_message_is_a_wire_error():
    blob = encode_model_metrics(METRICS)
    for end in (1, 3, 20, len(blob) - 1):  # inside a key, a length, a submessage, a double
        with pytest.raises(WireError):
            decode_model_metrics(blob[:end])
    for end in range(len(blob)):  # every prefix either decodes or is a WireError
        try:
            decode_model_metrics(blob[:end])
        except WireError:
            pass
    assert issubclass(WireError, ValueError)
    with pytest.raises(WireError, match="wire type 3"):
        decode_model_metrics(bytes([0x0B]))  # field 1, wire type 3 (a group start)
    with pytest.raises(WireError, match="longer than 10 bytes"):
        decode_model_metrics(bytes([0x10]) + b"\xff" * 11)


def test_the_encoder_refuses_unknown_fields_and_out_of_range_int32():
    with pytest.raises(ValueError, match="trainable_params"):
        encode_model_metrics({"trainable_params": 1})
    with pytest.raises(ValueError, match="not an int32"):
        encode_model_metrics({"trainable_parameters": 1 << 31})


# --- One NAS-Bench-101 row -----------------------------------------------------------------------

def test_a_good_row_parses():
    row = parse_row(row_payload(good_fields()), "test: record 1")
    assert row == Nb101Row(MODULE_HASH, 108, MATRIX, OPS, METRICS)
    assert row.metrics["evaluation_data"][2]["test_accuracy"] == pytest.approx(0.89)
    assert row.metrics["trainable_parameters"] == 8555530


def test_rows_stream_from_a_file(tmp_path):
    path = tmp_path / "nasbench_only108.tfrecord"
    fields = [good_fields(), good_fields()]
    fields[1][1] = 36
    write_records(path, (row_payload(f) for f in fields))
    assert [row.epochs for row in iter_rows(path)] == [108, 36]
    assert hash(next(iter_rows(path))) is not None  # rows are hashable (metrics left out)


def with_field(index: int, value) -> bytes:
    fields = good_fields()
    fields[index] = value
    return row_payload(fields)


MALFORMED = {
    "not UTF-8": (b"\xff\xfe[]", "not UTF-8"),
    "not JSON": (b'["abc", 108', "not JSON"),
    "not a list": (row_payload({"hash": MODULE_HASH}), "list of 5 fields"),
    "four fields": (row_payload(good_fields()[:4]), "list of 5 fields"),
    "bad hash": (with_field(0, "xyz"), "module_hash"),
    "bad epochs": (with_field(1, "108"), "epochs"),
    "adjacency not square": (with_field(2, "0110011001"), "not a square matrix"),
    "adjacency not 0/1": (with_field(2, "0120"), "other than 0 and 1"),
    "adjacency not a string": (with_field(2, [0, 1, 0, 0]), "adjacency"),
    "ops per node": (with_field(3, "input,output"), "not 7 comma-separated names"),
    "bad base64": (with_field(4, "not base64!"), "not valid base64"),
    "bad protobuf": (with_field(4, base64.b64encode(b"\x10\xff").decode()), "not a ModelMetrics"),
}


@pytest.mark.parametrize("payload, problem", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_row_is_one_line_naming_the_record(payload, problem):
    where = "nasbench_only108.tfrecord: record 7 at byte 1234"
    with pytest.raises(RecordError) as error:
        parse_row(payload, where)
    message = one_line_error(error)
    assert message.startswith(f"{where}: not a NAS-Bench-101 row: ")
    assert problem in message
    assert "nasbench_only108.tfrecord or nasbench_full.tfrecord" in message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_truncated_pipe_is_caught_without_knowing_the_file_size(tmp_path):
    whole = b"".join(tfrecord.frame_record(p) for p in PAYLOADS)
    fifo = tmp_path / "pipe.tfrecord"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(whole[:-3]))
    writer.start()
    try:
        with pytest.raises(RecordError) as error:
            list(iter_records(fifo))
    finally:
        writer.join()
    size = 16 + len(PAYLOADS[2])
    assert f"truncated ({size - 3} of {size} bytes)" in one_line_error(error)
