"""`segdist train`: the session, the loop and what runs around it (the loop's order: loop.py's docstring).

    loop.py         main, train_one_epoch, end_of_epoch, save_checkpoint
    step.py         one optimizer step decided with the other ranks (step, skip, stop)
    validation.py   validation during training, overlay panels
    session.py      Session: process group, data, model, optimizer; start() and --resume
    budget.py       a wall-clock budget: the step count that fits, re-planned as the run goes
    logbook.py      train_log.jsonl, trackers' scalars, summary.json
    optim.py        optimizer, LR schedule, loss from the config
    trackers.py     accelerate's trackers (TensorBoard by default), images to each

Named `training` (not `train`) so that `segdist.train`, the API function, is not shadowed by it.
"""
