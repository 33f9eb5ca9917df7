"""The prober programs run inside the namespace, and the host's side that starts them.

Stdlib only (tests/test_architecture.py proves it): `python -m harness.probes.icmp`
(and .flow, .tcp) must start in a bare interpreter inside any namespace.
May import: the floor modules (harness.errors, .proc, .vocabulary) only.
"""
