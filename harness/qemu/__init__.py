"""One QEMU and what it can do: the VM (process and lifecycle, vm), its QMP session
(monitor) and serial console (console), its capabilities, the accelerator, and the
builder of QEMU from source.

qemu.build and qemu.source are stdlib only, for `ci/build-qemu` without a venv.
May import: harness.host, harness.guest, harness.probes and the floor modules.
"""
