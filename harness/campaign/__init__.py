"""Many runs: the plan (builds x modes x iterations, chains, shards), the preflight per
build, the one loop, the record store, the outcome and its exit code, shards, bench.

May import: harness.run and everything below it.
"""
