#!/usr/bin/env python3
"""Writes the Parquet fixtures of tests/fixtures/parquet/ with pyarrow (the reference's writer).

Usage: make-parquet-fixtures.py DATA_DIR OUT_DIR
       make-parquet-fixtures.py --synthetic N OUT.parquet   (a large train-cluster file for timing)
  DATA_DIR holds train_clusters.tsv (ur50_id<TAB>ur90_id, one member a line, grouped by cluster)
  and valid.fasta.gz (headers are the validation sequences' ids), i.e. data/swissprot-sample/.
  OUT_DIR receives the .parquet files, expected.json (what pyarrow reads back from each file,
  the independent oracle of tests/data/parquet_test.cpp) and fixtures.tar (the same, packed).

The reference's two formats: train clusters (one row per UR50 cluster: ur50_id string,
ur90_id list<string>) and validation clusters (one row per sequence: ur50_id string). Each is
written in pyarrow's default settings and in the variants the reader must handle.
"""
import gzip
import json
import os
import sys
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

N_CLUSTERS = 300  # keeps all fixtures together well under 1 MB


def load_train(data_dir):
    order, members = [], {}
    with open(os.path.join(data_dir, "train_clusters.tsv")) as f:
        for line in f:
            ur50, ur90 = line.rstrip("\n").split("\t")
            if ur50 not in members:
                if len(order) == N_CLUSTERS:
                    break
                order.append(ur50)
                members[ur50] = []
            members[ur50].append(ur90)
    return order, [members[c] for c in order]


def load_valid(data_dir):
    ids = []
    with gzip.open(os.path.join(data_dir, "valid.fasta.gz"), "rt") as f:
        for line in f:
            if line.startswith(">"):
                ids.append(line[1:].split()[0])
    return ids


# ---- legacy list layouts pyarrow cannot write: derived by rewriting a pyarrow file's footer ----
# A required list of required strings has the same levels (max_def 1, max_rep 1) in all three
# layouts, so the pages of train_required.parquet stay valid when only the schema changes:
#   3-level: required group ur90_id (LIST) { repeated group list { required binary element } }
#   2-level: required group ur90_id (LIST) { repeated binary array }
#   1-level: repeated binary ur90_id
# The footer is Thrift compact protocol; this is a minimal generic decoder/encoder for it.

def _varint(b, i):
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return v, i


def _zz(v):
    return (v >> 1) ^ -(v & 1)


def _read_value(b, i, t):
    if t in (1, 2):  # bool field: the value is the type
        return t == 1, i
    if t == 3:
        return b[i], i + 1
    if t in (4, 5, 6):
        v, i = _varint(b, i)
        return _zz(v), i
    if t == 7:
        return b[i:i + 8], i + 8
    if t == 8:
        n, i = _varint(b, i)
        return bytes(b[i:i + n]), i + n
    if t in (9, 10):
        h = b[i]
        i += 1
        n, et = h >> 4, h & 0x0F
        if n == 15:
            n, i = _varint(b, i)
        items = []
        for _ in range(n):
            if et in (1, 2):
                items.append(b[i] == 1)
                i += 1
            else:
                v, i = _read_value(b, i, et)
                items.append(v)
        return (et, items), i
    if t == 12:
        return _read_struct(b, i)
    raise ValueError(f"thrift type {t} not handled")


def _read_struct(b, i):
    fields, last = [], 0
    while True:
        h = b[i]
        i += 1
        if h == 0:
            return fields, i
        t, d = h & 0x0F, h >> 4
        if d:
            fid = last + d
        else:
            v, i = _varint(b, i)
            fid = _zz(v)
        last = fid
        v, i = _read_value(b, i, t)
        fields.append([fid, t, v])


def _enc_varint(v):
    out = bytearray()
    while True:
        c = v & 0x7F
        v >>= 7
        if v:
            out.append(c | 0x80)
        else:
            out.append(c)
            return bytes(out)


def _enc_value(t, v):
    if t in (1, 2):
        return b""
    if t == 3:
        return bytes([v])
    if t in (4, 5, 6):
        return _enc_varint((v << 1) ^ (v >> 63))
    if t == 7:
        return bytes(v)
    if t == 8:
        return _enc_varint(len(v)) + v
    if t in (9, 10):
        et, items = v
        head = bytes([(len(items) << 4) | et]) if len(items) < 15 else bytes([0xF0 | et]) + _enc_varint(len(items))
        body = b"".join(bytes([1 if x else 2]) if et in (1, 2) else _enc_value(et, x) for x in items)
        return head + body
    if t == 12:
        return _enc_struct(v)
    raise ValueError(f"thrift type {t} not handled")


def _enc_struct(fields):
    out, last = bytearray(), 0
    for fid, t, v in fields:
        if t in (1, 2):
            t = 1 if v else 2
        if 0 < fid - last <= 15:
            out.append(((fid - last) << 4) | t)
        else:
            out.append(t)
            out += _enc_varint((fid << 1) ^ (fid >> 63))
        last = fid
        out += _enc_value(t, v)
    out.append(0)
    return bytes(out)


def _field(fields, fid):
    return next(f for f in fields if f[0] == fid)


def derive_legacy_list_file(src, dst, layout):
    """Rewrites src (a pyarrow file with a required list<required string> `ur90_id`) to `layout`."""
    data = open(src, "rb").read()
    n = int.from_bytes(data[-8:-4], "little")
    meta, end = _read_struct(data, len(data) - 8 - n)
    assert end == len(data) - 8, "footer not fully parsed"
    assert _enc_struct(meta) == data[len(data) - 8 - n:-8], "Thrift codec does not round-trip the footer"
    meta = [f for f in meta if f[0] != 5]  # key_value_metadata: drop pyarrow's ARROW:schema
    schema = _field(meta, 2)[2][1]
    names = [_field(e, 4)[2] for e in schema]
    g = names.index(b"ur90_id")
    assert names[g + 1:g + 3] == [b"list", b"element"], names
    element = schema[g + 2]
    _field(element, 3)[2] = 2  # repetition_type REPEATED
    if layout == "2level":
        _field(element, 4)[2] = b"array"
        del schema[g + 1]
        new_path = [b"ur90_id", b"array"]
    else:
        _field(element, 4)[2] = b"ur90_id"
        del schema[g:g + 2]
        new_path = [b"ur90_id"]
    for rg in _field(meta, 4)[2][1]:
        for chunk in _field(rg, 1)[2][1]:
            cmeta = _field(chunk, 3)[2]
            path = _field(cmeta, 3)[2]
            if path[1][0] == b"ur90_id":
                path[1][:] = new_path
    footer = _enc_struct(meta)
    with open(dst, "wb") as f:
        f.write(data[:len(data) - 8 - n] + footer + len(footer).to_bytes(4, "little") + b"PAR1")


def write_synthetic(n_clusters, path):
    """N clusters of 1-8 unique UniRef-style member ids, pyarrow defaults (not a test fixture)."""
    import random
    rng = random.Random(42)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    acc = lambda: "".join(rng.choice(alphabet) for _ in range(10))
    ur50 = [f"UniRef50_{acc()}" for _ in range(n_clusters)]
    ur90 = [[f"UniRef90_{acc()}" for _ in range(rng.randint(1, 8))] for _ in range(n_clusters)]
    table = pa.table({"ur50_id": pa.array(ur50, pa.string()), "ur90_id": pa.array(ur90, pa.list_(pa.string()))})
    pq.write_table(table, path)
    md = pq.ParquetFile(path).metadata
    print(f"{path}: {os.path.getsize(path)} bytes, {n_clusters} clusters, {sum(map(len, ur90))} members, "
          f"{md.num_row_groups} row groups", flush=True)
    with open(path + ".sums", "w") as f:  # counts and last ids, to check the C++ reading
        f.write(f"{n_clusters} {sum(map(len, ur90))} {ur50[-1]} {ur90[-1][-1]}\n")


def main():
    if sys.argv[1] == "--synthetic":
        write_synthetic(int(sys.argv[2]), sys.argv[3])
        return
    data_dir, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    ur50, ur90 = load_train(data_dir)
    valid_ids = load_valid(data_dir)
    # The validation file repeats a cluster id once per member sequence: use runs of equal ids so
    # RLE runs of dictionary indices occur, as in the reference's file.
    valid_ur50 = [valid_ids[i // 3] for i in range(3 * 200)]

    train = pa.table({"ur50_id": pa.array(ur50, pa.string()),
                      "ur90_id": pa.array(ur90, pa.list_(pa.string()))})
    valid = pa.table({"ur50_id": pa.array(valid_ur50, pa.string())})
    required_schema = pa.schema([
        pa.field("ur50_id", pa.string(), nullable=False),
        pa.field("ur90_id", pa.list_(pa.field("element", pa.string(), nullable=False)), nullable=False),
    ])
    train_required = pa.table({"ur50_id": ur50, "ur90_id": ur90}, schema=required_schema)
    edge = pa.table({
        "ur50_id": pa.array(["c0", "c1", "c2", "c3", "c4", "c5"], pa.string()),
        "ur90_id": pa.array([["a", "b"], [], ["c"], ["d", "e", "f"], [], []], pa.list_(pa.string())),
        "ur50_null": pa.array(["x", "y", None, "z", "w", "v"], pa.string()),
        "ur90_null_list": pa.array([["a"], None, ["b"], [], ["c"], ["d"]], pa.list_(pa.string())),
        "ur90_null_elem": pa.array([["a"], ["b"], [], ["c", None], ["d"], []], pa.list_(pa.string())),
        "count": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
        "ids_int": pa.array([[1], [2], [], [3], [4], [5]], pa.list_(pa.int64())),
        "pair": pa.array([{"a": "p", "b": "q"}] * 6, pa.struct([("a", pa.string()), ("b", pa.string())])),
    })

    written = {}  # file name -> dataset name in expected.json

    def write(name, table, dataset, optional=False, **kw):
        path = os.path.join(out_dir, name)
        try:
            pq.write_table(table, path, **kw)
        except Exception as e:  # an option this pyarrow lacks: the test skips files not listed
            if not optional:
                raise
            print(f"skipped {name}: {e}", flush=True)
            return
        assert pq.read_table(path).to_pylist() == table.to_pylist(), name
        written[name] = dataset
        md = pq.ParquetFile(path).metadata
        cols = md.row_group(0).column(0) if md.num_row_groups else None
        print(f"{name}: {os.path.getsize(path)} bytes, {md.num_row_groups} row groups, "
              f"{cols.compression if cols else '-'}, {cols.encodings if cols else '-'}", flush=True)

    write("train_default.parquet", train, "train")
    write("train_zstd.parquet", train, "train", compression="zstd")
    write("train_none.parquet", train, "train", compression="none")
    write("train_gzip.parquet", train, "train", compression="gzip")
    write("train_plain.parquet", train, "train", use_dictionary=False)
    write("train_v2.parquet", train, "train", data_page_version="2.0")
    write("train_v2_zstd_rowgroups.parquet", train, "train", data_page_version="2.0", compression="zstd",
          row_group_size=70)
    write("train_v2_none.parquet", train, "train", data_page_version="2.0", compression="none")
    write("train_rowgroups.parquet", train, "train", row_group_size=64)
    # Many small pages in one chunk, and a dictionary that overflows mid-chunk so pyarrow falls back
    # to PLAIN pages after RLE_DICTIONARY ones.
    write("train_smallpages.parquet", train, "train", optional=True, data_page_size=256,
          write_batch_size=32, dictionary_pagesize_limit=1024)
    write("train_legacy_item.parquet", train, "train", use_compliant_nested_type=False)
    write("train_required.parquet", train_required, "train")
    for layout in ("2level", "1level"):
        name = f"train_{layout}.parquet"
        derive_legacy_list_file(os.path.join(out_dir, "train_required.parquet"), os.path.join(out_dir, name), layout)
        written[name] = "train"
    write("train_checksum.parquet", train, "train", optional=True, write_page_checksum=True,
          compression="none")
    write("train_empty.parquet", train.slice(0, 0), "empty")
    write("valid_default.parquet", valid, "valid")
    write("valid_plain_v2.parquet", valid, "valid", use_dictionary=False, data_page_version="2.0")
    write("edge.parquet", edge, "edge")
    for codec in ("brotli", "lz4"):  # codecs the reader rejects with a clear error
        write(f"valid_{codec}.parquet", valid, "unsupported", optional=True, compression=codec)

    expected = {
        "pyarrow_version": pa.__version__,
        "files": written,
        "datasets": {
            "train": {"ur50_id": ur50, "ur90_id": ur90},
            "empty": {"ur50_id": [], "ur90_id": []},
            "valid": {"ur50_id": valid_ur50},
            "unsupported": {"ur50_id": valid_ur50},
            "edge": {k: v for k, v in edge.to_pydict().items() if k in
                     ("ur50_id", "ur90_id", "ur50_null", "ur90_null_list", "ur90_null_elem")},
        },
        "columns": {name: pq.ParquetFile(os.path.join(out_dir, name)).schema_arrow.names for name in written},
    }
    # pyarrow's own view of every file must equal the dataset it was written from.
    for name, ds in written.items():
        got = pq.read_table(os.path.join(out_dir, name)).to_pydict()
        for col, want in expected["datasets"][ds].items():
            assert got[col] == want, (name, col)
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(expected, f, indent=0, sort_keys=True)
        f.write("\n")
    with tarfile.open(os.path.join(out_dir, "fixtures.tar"), "w") as tar:
        for name in sorted(written) + ["expected.json"]:
            tar.add(os.path.join(out_dir, name), arcname=name)
    total = sum(os.path.getsize(os.path.join(out_dir, n)) for n in list(written) + ["expected.json"])
    print(f"total fixture bytes: {total}", flush=True)


if __name__ == "__main__":
    main()
