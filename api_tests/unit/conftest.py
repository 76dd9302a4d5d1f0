"""Unit tests need nothing running: no Redis, no PostgreSQL, no server of their own, no network.

Every unit test runs with TCP/IP sockets refused, as on a machine with nothing running and no
network: connecting or binding one fails with ConnectionRefusedError (an OSError, as a stopped
service's would). A test that needs a service or a server belongs in api_tests/integration/.
(In-process only; `unshare -rn` runs the whole folder without a network, child processes included.)"""

from __future__ import annotations

import socket

import pytest

INET = (socket.AF_INET, socket.AF_INET6)


class NoNetworkInUnitTests(ConnectionRefusedError):
    pass


def _refuse(self: socket.socket, address: object) -> None:
    raise NoNetworkInUnitTests(f"a unit test used the network ({address!r}): move it to api_tests/integration/")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    for name in ("connect", "connect_ex", "bind"):
        real = getattr(socket.socket, name)

        def guarded(self, address, _real=real):
            if self.family in INET:
                _refuse(self, address)
            return _real(self, address)
        monkeypatch.setattr(socket.socket, name, guarded)
