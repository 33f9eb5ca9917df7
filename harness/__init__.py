"""tapmig: prove a virtio-net guest keeps its network through migration, and time the outage."""
