"""Distributed AdaIN decoder training on Ray Train: losses, the per-worker loop, the trainer, `adain train`."""
