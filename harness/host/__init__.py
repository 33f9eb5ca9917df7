"""The host around a run: namespaces and TAPs (pyroute2), device nodes, rootless mode, the
run dir and RAM file, the orphan reaper.

Knows nothing of QEMU.
May import: harness.guest, harness.probes and the floor modules.
"""
