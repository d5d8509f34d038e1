"""The contract between prepare and training: dataset.json and the tar shards' layout.

    manifest.py            dataset.json: its name, format version, reading, a shard's digest, label dtype
    tar_writer.py          deterministic tar shards, hashed as written under a temporary name, then published
    class_stats.py         class weights and the `segdist stats` table and histogram
    cityscapes_labels.py   the official Cityscapes label table (labelIds, trainIds, colours)

A sample is `__key__`, `jpg` or `png`, `seg.png` and `json`; the reader is segdist.data.tar_reader.
Nothing here imports torch or webdataset.
"""
