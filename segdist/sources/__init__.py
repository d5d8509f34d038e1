"""Raw dataset formats turned into (image bytes, label map) samples."""
