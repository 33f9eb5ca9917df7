"""A tapmig namespace's own failures raise NetnsFailed, with the operation, the namespace
and the interface as fields: what a caller tells apart, never the message.

Real namespaces (root); no QEMU.
"""

from __future__ import annotations

import errno
import os

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
