"""One guest's session and its hops: Config (frozen), the Lab, the session that drives
every hop, the hop's steps, analysis and judgement, the record's assembly, the footprint.

Who holds what: config (the options), setup (what is settled before a Lab exists),
lab (the resources), session (boot and hop), steps (the hop on real QEMUs), hop_probes
and guest_traffic (both ends of the traffic), analyse, judge, results (the frozen values
between them), assemble (the record), scenario and chain (`tapmig run`, a chain).

May import: harness.report, harness.analysis and everything below them.
"""
