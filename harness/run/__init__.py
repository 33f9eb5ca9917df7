"""One run or one chain of hops: Config (frozen), the Lab, the phases, the traffic, the footprint.

May import: harness.report, harness.analysis and everything below them.
"""
