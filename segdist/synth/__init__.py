"""Synthetic datasets in real on-disk formats, for the demo, the tests and the benchmarks.

    coco.py         write_synthetic_coco: JPEGs + an instances JSON (polygons, RLE, crowd)
    cityscapes.py   write_synthetic_cityscapes: leftImg8bit PNGs + gtFine labelIds
    common.py       split sizes, size checks, one random stream per image

Same arguments, same bytes. Nothing here imports torch.
"""
