"""A tapmig namespace's own failures raise NetnsFailed, with the operation, the namespace
and the interface as fields: what a caller tells apart, never the message.

Real namespaces (root); no QEMU.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import threading
import time
from types import FrameType

import pytest

from harness.errors import NetnsFailed
from harness.host import netns
from harness.host.netns import NETNS_DIR, Namespace
from harness.proc import unique_name


def test_a_missing_interface_names_itself_and_its_namespace(
        tapmig_namespace: Namespace) -> None:
    with pytest.raises(NetnsFailed) as err:
        tapmig_namespace.index("tap9")
    assert (err.value.op, err.value.namespace, err.value.ifname, err.value.errno) == (
        "lookup", tapmig_namespace.name, "tap9", None)


@pytest.mark.usefixtures("tapmig_root_with_tun")
def test_a_namespace_that_cannot_be_removed_carries_the_os_error() -> None:
    # A directory where the namespace's bind mount would be: unlink refuses it (EISDIR).
    name = unique_name("dir-")
    path = NETNS_DIR / name
    path.mkdir(parents=True)
    try:
        with pytest.raises(NetnsFailed) as err:
            netns.remove(name)
    finally:
        os.rmdir(path)
    assert (err.value.op, err.value.namespace, err.value.ifname, err.value.errno) == (
        "remove", name, "", errno.EISDIR)


def test_removing_a_namespace_that_is_gone_is_no_error() -> None:
    netns.remove(unique_name("gone-"))


SIGNALS = 100  # SIGTERMs, each landing at a random moment of back-to-back netlink requests


def test_a_stop_signal_during_a_netlink_request_is_never_lost(
        tapmig_namespace: Namespace) -> None:
    """pyroute2 runs each request in an asyncio loop of its own, whose callbacks do not
    pass on what a signal handler raises in them: a SIGTERM that landed in get_links()
    was lost (a `tapmig run` went on to exit 0, 1 run in 30), or broke the loop. Each
    request holds the stop signals (harness.host.netns.Netlink), so every SIGTERM here
    becomes the KeyboardInterrupt that tapmig's handler raises, and none is lost."""
    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    main = threading.main_thread().ident
    assert main is not None
    usual = signal.signal(signal.SIGTERM, terminate)
    rng = random.Random(0)
    raised = 0
    try:
        for _ in range(SIGNALS):
            timer = threading.Timer(rng.uniform(0, 0.003), signal.pthread_kill,
                                    (main, signal.SIGTERM))
            deadline = time.monotonic() + 0.1
            try:
                timer.start()
                while time.monotonic() < deadline:
                    tapmig_namespace.index("lo")
            except KeyboardInterrupt:
                raised += 1
            timer.join()
    finally:
        signal.signal(signal.SIGTERM, usual)
    assert raised == SIGNALS
