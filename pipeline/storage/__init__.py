"""Storage: URIs, filesystems, atomic writes, the weight cache."""
