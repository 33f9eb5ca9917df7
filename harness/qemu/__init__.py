"""One QEMU and what it can do: the VM (process and lifecycle, vm), its QMP session
(monitor) and serial console (console), its capabilities, the accelerator, and the
builder of QEMU from source and of its variants.

qemu.build, qemu.source, qemu.tree and qemu.variants are stdlib only, for
`ci/build-qemu` without a venv.
May import: harness.host, harness.guest, harness.probes and the floor modules.
"""
