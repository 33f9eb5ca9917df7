"""Records in, statistics and documents out: the campaign report (md, html, json), compare
with its like-for-like guard, the timeline, chain summaries.

Reads records only; never starts QEMU.
May import: harness.analysis and everything below it.
"""
