#!/usr/bin/env python3
"""Writes the Parquet fixtures of tests/fixtures/parquet/ with pyarrow (the reference's writer).

Usage: make-parquet-fixtures.py DATA_DIR OUT_DIR
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


def main():
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
