"""`segdist prepare`: COCO, Cityscapes and image/mask folders -> WebDataset shards + dataset.json, on Ray.

    coco.py cityscapes.py folder.py   the sources: select inputs (specs), convert one (read, check, label)
    coco_json.py     a COCO instances file read (msgspec, in C) and checked; coco_segmentation.py one
                     segmentation checked; coco_select.py the images drawn and their annotations
    inputs.py        reading and checking image and mask files, the Sample every source returns
    jobs.py          PrepareJob, and the job each source's options build (coco_job, ...)
    fingerprint.py   the resume fingerprint of a split; the order its shards hold the inputs
    driver.py        the Ray driver: shard tasks fanned out, records collected, rollback on error
    task.py          one Ray task: convert one shard's inputs and write that shard (tar_writer)
    members.py       a converted sample -> its tar members; tally.py its statistics, summed per split
    staging.py       the hidden directory a split is written in before it is moved into place
    splits.py        a split's manifest entry and the dataset.json that publishes the run
    upload.py        `--out s3://...`: convert in a work directory, then upload, manifest last
    run.py           prepare(build, out): the job built while Ray starts, written, the closing report
    ray_cluster.py   the local Ray cluster started early (behind the parse), or an existing one joined

Nothing here imports torch or webdataset (an import-linter contract): Ray workers stay light.
"""
