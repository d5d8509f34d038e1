"""The training side's data: dataset info, the training and evaluation loaders, the tar reader.

    info.py           DatasetInfo from dataset.json (local or remote), normalisation
    train_loader.py   the training batches of each process, a pure function of their position
    eval_loader.py    every sample of a split once across (process, worker) slots, padded batches
    tar_reader.py     samples from tar shards through segdist.storage, breaks counted, byte ranges
    decode.py         shard sample -> arrays -> uint8 tensors; Normalizer on the device
    augment.py        albumentations pipelines, each sample's draws seeded by its own place
    workers.py        DataLoader workers that survive SLURM's signals and are always released
    bench.py          `segdist bench-data`: the loader alone, images/s per process and core
    show.py           `segdist show`: image | mask | overlay panels read from the shards
"""
