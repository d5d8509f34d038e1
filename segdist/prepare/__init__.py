"""`segdist prepare`: COCO, Cityscapes, VOC (+SBD), ADE20K, LabelMe and image/mask folders -> WebDataset
shards + dataset.json, on Ray.

    sources/         one module per source (COCO's parts in sources/coco/) and SOURCES, the table the CLI,
                     the API and the docs come from: each source's job(**options) selects its inputs
                     (specs) and its convert(spec, opts) reads, checks and labels one
    inputs.py        reading and checking image and mask files (local or URLs), the Sample every source returns
    locations.py     remote inputs on the driver: URLs joined, prefixes listed (sizes, ETags), a file fetched
    label_values.py  mask values -> class ids (identity, --reduce-zero-label, --map, ignore values)
    jobs.py          PrepareJob, and what every source's job builder shares (classes, split lists)
    fingerprint.py   the resume fingerprint of a split; the order its shards hold the inputs
    driver.py        the Ray driver: shard tasks fanned out, records collected, rollback on error
    task.py          one Ray task: convert one shard's inputs and write that shard (tar_writer)
    members.py       a converted sample -> its tar members; tally.py its statistics, summed per split
    staging.py       the hidden directory a split is written in before it is moved into place
    splits.py        a split's manifest entry and the dataset.json that publishes the run
    upload.py        `--out s3://...` with local inputs: convert in a work directory, then upload, manifest last
    to_store.py      `--out s3://...` with remote inputs: each task uploads its own shard, manifest last
    store_staging.py the hidden prefix in the store a split is written in before it is copied into place
    run.py           prepare(build, out): the job built while Ray starts, written, the closing report
    ray_cluster.py   the local Ray cluster started early (behind the parse), or an existing one joined

Nothing here imports torch or webdataset (an import-linter contract): Ray workers stay light.
"""
