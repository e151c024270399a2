"""The Ray pipelines: stages passed to map_batches, and the jobs that wire them."""
