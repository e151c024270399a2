"""Image decoding, resizing and encoding."""
