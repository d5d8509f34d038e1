"""Small helpers every layer may use; none imports another segdist package.

    files.py     complete-or-absent files: atomic_path, write_json_atomic, publish; names from data:
                 is_plain_name / check_plain_name (storage names), safe_file_name (output file names)
    console.py   print_line: one write per line, so ranks' lines never interleave
    images.py    decode_rgb / decode_label on the stored pixel grid (EXIF orientation ignored)
    viz.py       palettes, colour masks, overlays, panels and the PNG charts
    faults.py    fault injection for the reliability tests (SEGDIST_FAULT)
    secrets.py   redact: credentials in URLs and pipe: commands shown as *** wherever text leaves
    checksums.py Digest (size, sha256) of a shard; HashingWriter hashes while a shard is written
"""
