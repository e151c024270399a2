"""adain-ray: AdaIN arbitrary style transfer as a distributed batch system on Ray."""

__version__ = "0.1.0"
