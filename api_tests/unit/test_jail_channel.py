"""The jail's framed pipe protocol (service/sandbox/jail.py Channel): a wait cut short while a
message is arriving must not leave the reader in the middle of it. The worker waits for a jailed
teacher in one-second slices (to notice a cancel); a slice that ended halfway through an MCMI epoch
event read the rest of that event as the next message's length ("a 1986339451-byte message header",
the bytes '{"ev') and failed the job."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from kdserve.service.sandbox.jail import Channel, encode


def pipe_channel() -> tuple[Channel, int]:
    r, w = os.pipe()
    return Channel(os.fdopen(r, "rb", buffering=0), None), w


def test_a_message_that_arrives_in_pieces_is_read_whole_past_the_wait_deadline():
    channel, w = pipe_channel()
    first = encode({"event": "epoch", "epoch": 1, "loss": 0.5}, [np.arange(6, dtype=np.float32)])
    second = encode({"ok": True, "file": "teacher.pt"})

    def child() -> None:
        os.write(w, first[:7])  # the length and a few bytes of the header, then a pause
        time.sleep(0.5)
        os.write(w, first[7:] + second)

    writer = threading.Thread(target=child)
    writer.start()
    head, arrays = channel.receive(time.monotonic() + 0.1, 1 << 20)  # the wait ends long before the message
    writer.join()
    assert head["event"] == "epoch" and arrays[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert channel.receive(time.monotonic() + 1, 1 << 20)[0] == {"ok": True, "file": "teacher.pt", "arrays": 0}
    os.close(w)


def test_nothing_is_read_when_no_message_begins_before_the_deadline():
    channel, w = pipe_channel()
    with pytest.raises(TimeoutError):
        channel.receive(time.monotonic() + 0.05, 1 << 20)
    os.write(w, encode({"ok": True}))
    assert channel.receive(time.monotonic() + 1, 1 << 20)[0]["ok"] is True
    os.close(w)


def test_a_message_that_stalls_past_its_own_deadline_times_out():
    channel, w = pipe_channel()
    os.write(w, encode({"ok": True})[:3])
    with pytest.raises(TimeoutError):
        channel.receive(time.monotonic() + 1, 1 << 20, message_deadline=time.monotonic() + 0.1)
    os.close(w)
