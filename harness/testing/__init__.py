"""The pytest11 plugin: options, markers, the tapmig_* fixtures and the leak check.

May import: harness.campaign and everything below it.
"""
