"""Many runs: the plan (builds x modes x iterations, chains, shards), the loop, the record
store, bench.

May import: harness.run and everything below it.
"""
