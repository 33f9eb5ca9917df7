"""tapmig: prove a virtio-net guest keeps its network through migration, and time the outage."""

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"
