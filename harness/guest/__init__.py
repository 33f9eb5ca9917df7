"""What the guest is: its spec and console protocol, the embedded build, the assets.toml
downloads, the C source of its helper.

Knows nothing of QEMU: a booted guest is driven through guest.spec.Console.
May import: harness.probes and the floor modules (errors, vocabulary, atomic, cache, proc).
"""
