"""Server-Sent Events (text/event-stream), decoded line by line: how `jobs.wait` follows a job."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerSentEvent:
    id: str | None
    event: str
    data: str


class SSEDecoder:
    """text/event-stream, line by line (WHATWG rules that matter here: `id`, `event`, multi-line
    `data`, `:` comments such as the server's keep-alives, a blank line ends an event)."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> ServerSentEvent | None:
        if line == "":
            if not self._data:
                self._event = None
                return None
            event = ServerSentEvent(self.last_id, self._event or "message", "\n".join(self._data))
            self._event, self._data = None, []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None
