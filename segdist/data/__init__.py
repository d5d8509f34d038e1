"""The training side's data: dataset info, the training and evaluation loaders, the tar reader.

    info.py           DatasetInfo from dataset.json (local or remote), normalisation
    order.py          the global sample order of an epoch: a pure function of (seed, epoch, dataset)
    plan.py           the run's order and global batch shape; what a resume must agree with
    nodes.py          which positions each node reads, so that nodes read disjoint shards (remote data)
    shared_orders.py  an epoch's order built once per node, shared as a memory-mapped file
    prefetch.py       the node's prefetcher: remote shards into the node cache ahead of training
    train_loader.py   each process's micro-batches, read by position from the epoch's order
    sample_reader.py  samples read by byte offset: neighbours coalesced, parts in parallel
    eval_loader.py    every sample of a split once across (process, worker) slots, padded batches
    tar_reader.py     samples from tar shards through segdist.storage, breaks counted, byte ranges
    augment.py        decode (stored pixel grid) and albumentations, each sample's draws seeded by its place;
                      uint8 tensors, Normalizer on the device
    workers.py        DataLoader workers that survive SLURM's signals and are always released
    bench.py          `segdist bench-data`: the loader alone, images/s per process and core
    show.py           `segdist show`: image | mask | overlay panels read from the shards
    verify.py         `segdist verify`: every shard present, with the size and sha256 dataset.json records
"""
