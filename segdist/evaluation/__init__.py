"""Evaluation, prediction and export of a trained run.

    metrics.py              one summed confusion matrix -> mIoU, Dice, precision, recall, accuracy
    scoring.py              predict and score a split (shared by training's validation and evaluate)
    evaluate.py             `segdist evaluate`: exact figures over any number of processes
    report.py               metrics.json, the confusion and per-class IoU charts, TensorBoard
    cityscapes_results.py   predictions as Cityscapes labelIds PNGs for the official evaluator
    predict.py              `segdist predict`: index, colour and overlay images for image files
    export.py               `segdist export`: checked ONNX / TorchScript
"""
