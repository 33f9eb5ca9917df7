"""Pure functions over what a run captured: ICMP, flow, TCP and queue logs, and trends over hops.

No processes, no QEMU, no namespaces: each takes text or typed data and returns a typed result.
May import: harness.qemu, .host, .guest, .probes (for their constants) and the floor modules.
"""
