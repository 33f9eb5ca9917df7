"""The per-queue check's pure logic (harness.analysis.queues), on the lines tapmig-guest
prints for its queue counters."""

from __future__ import annotations

import pytest

from harness.analysis.queues import QueueCounts, check_every_queue
from harness.errors import CheckFailed, UsageError

# --- queues ---------------------------------------------------------------------------


def test_queue_counts_parse_and_difference() -> None:
    before = QueueCounts.parse("x TAPMIG-QUEUES live=4 max=4 rx=1,2,3,4 tx=5,6,7,8 "
                               "xps=1,2,4,8\r")
    after = QueueCounts.parse("TAPMIG-QUEUES live=4 max=4 rx=11,2,13,14 tx=15,16,7,18 "
                              "xps=1,2,4,8")
    delta = after.since(before)
    assert (delta.rx, delta.tx) == ([10, 0, 10, 10], [10, 10, 0, 10])
    assert delta.silent() == ["rx 1", "tx 2"]
    assert [delta.queue_of_cpu(c) for c in range(5)] == [0, 1, 2, 3, None]
    with pytest.raises(CheckFailed) as err:
        check_every_queue(delta, "on the target")
    assert err.value.check == "queues"
    assert str(err.value).startswith("queue rx 1, tx 2 of the 4 live queue pairs carried no "
                                     "packets on the target")


def test_one_live_queue_pair_is_all_that_must_carry() -> None:
    one = QueueCounts.parse("TAPMIG-QUEUES live=1 max=4 rx=7 tx=7 xps=1")
    assert one.silent() == [] and one.to_json() == {"live": 1, "max": 4, "rx": [7], "tx": [7]}
    check_every_queue(one, "on the target")
    with pytest.raises(UsageError):
        QueueCounts.parse("TAPMIG-QUEUES-FAILED eth0: Operation not supported")
