"""The proof behind `make test-offline`: this test run really has no network.

`make test-offline` runs the acceptance tests inside `unshare -n`, a new network
namespace whose only interface (loopback) is down, and sets EDGE_WORKER_TEST_OFFLINE.
If the namespace were not in effect, this test fails, so a green offline run means
the daemon did its work with no network at all.
"""

from __future__ import annotations

import errno
import os
import socket

import pytest

pytestmark = pytest.mark.skipif(
    not os.environ.get("EDGE_WORKER_TEST_OFFLINE"),
    reason="runs only under `make test-offline` (unshare -n)",
)


@pytest.mark.parametrize("address", ["127.0.0.1", "192.0.2.1"])  # loopback; TEST-NET-1
def test_no_address_is_reachable(address: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        with pytest.raises(OSError) as info:
            sock.connect((address, 9))
    assert info.value.errno == errno.ENETUNREACH


def test_the_only_interface_is_loopback() -> None:
    assert [name for _index, name in socket.if_nameindex()] == ["lo"]
