"""A real network fault for client tests: a TCP proxy in front of the service that cuts the
connection in the middle of chosen responses, the way a flaky network or a restarting load
balancer does. The client under test talks to the proxy over real sockets; nothing is mocked.

    with CuttingProxy(service.port, match="/download", cut_after=4096, times=1) as proxy:
        Client(proxy.base_url, key).models.download(...)
    proxy.requests  # the request heads the service saw through the proxy (Range, Last-Event-ID, …)
"""

from __future__ import annotations

import socket
import threading


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to the service. The response to each of the first `times`
    requests whose request line contains `match` is cut after `cut_after` bytes (headers
    included): both sockets are closed mid-response."""

    def __init__(self, target_port: int, *, match: str, cut_after: int, times: int = 1):
        self.target_port, self.match, self.cut_after, self.times = target_port, match, cut_after, times
        self.requests: list[str] = []  # request heads, in arrival order
        self.cuts = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._closed = False

    def __enter__(self) -> "CuttingProxy":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            state = {"armed": False, "sent": 0}
            threading.Thread(target=self._pump_requests, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._pump_responses, args=(upstream, client, state), daemon=True).start()

    def _pump_requests(self, client: socket.socket, upstream: socket.socket, state: dict) -> None:
        try:
            while data := client.recv(65536):
                head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
                if head.split(" ", 1)[0] in ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"):
                    with self._lock:
                        self.requests.append(head)
                        if self.match in head.split("\r\n", 1)[0] and self.cuts < self.times:
                            self.cuts += 1
                            state["armed"], state["sent"] = True, 0
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _pump_responses(self, upstream: socket.socket, client: socket.socket, state: dict) -> None:
        try:
            while data := upstream.recv(65536):
                if state["armed"]:
                    room = self.cut_after - state["sent"]
                    if len(data) >= room:
                        client.sendall(data[:room])
                        return  # finally: both sockets closed mid-response
                    state["sent"] += len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
