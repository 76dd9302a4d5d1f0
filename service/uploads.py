"""Uploads, streamed: the multipart body is parsed as it arrives and the file part goes straight
to a temp file in the blob store, hashed on the way, stopped at KDSERVE_MAX_UPLOAD_BYTES (413).
Nothing is spooled anywhere else, and a refused upload leaves no file behind.

Archives are checked before anything opens them: no absolute or `..` member paths, no links, a
cap on the member count and on the declared uncompressed size (zip bombs).
"""

from __future__ import annotations

import hashlib
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import ApiError
from service.limits import ensure_free_space
from service.settings import Settings

MAX_FIELD_BYTES = 64 * 1024
DISK_CHECK_EVERY = 64 * 1024**2  # bytes of a file part between two looks at the disk's free space


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    path: Path | None = None  # the file part, in the blob store's temp folder
    filename: str | None = None
    sha256: str = ""
    size: int = 0

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def safe_name(name: str | None) -> str | None:
    """A display name from a client's filename: last path component, printable, ≤ 255 chars."""
    if not name:
        return None
    name = re.split(r"[\\/]", name)[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()[:255]
    return name or None


class _Receiver:
    """python-multipart callbacks: fields into memory (small), the file part onto disk."""

    def __init__(self, make_temp: Callable[[], Path], cap: int, file_field: str, disk_reserve: int = 0):
        self.upload = Upload()
        self.make_temp, self.cap, self.file_field = make_temp, cap, file_field
        self.disk_reserve = disk_reserve
        self._digest = hashlib.sha256()
        self._header_field = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._out = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end}

    def part_begin(self) -> None:
        self._headers, self._name, self._value = {}, None, bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._headers[self._header_field.lower()] = self._headers.get(self._header_field.lower(), b"") + data[start:end]

    def header_end(self) -> None:
        self._header_field = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == self.file_field:
            if self.upload.path is not None:
                raise ApiError(422, "invalid_request", f"send one {self.file_field!r} part, not several", self.file_field)
            self.upload.filename = safe_name(options.get(b"filename", b"").decode("utf-8", "replace"))
            self.upload.path = self.make_temp()
            self._out = open(self.upload.path, "wb")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._out is not None:
            self.upload.size += len(chunk)
            if self.upload.size > self.cap:
                raise ApiError(413, "payload_too_large", f"the file exceeds the {self.cap}-byte upload limit "
                               "(KDSERVE_MAX_UPLOAD_BYTES)", self.file_field)
            if self.upload.size // DISK_CHECK_EVERY != (self.upload.size - len(chunk)) // DISK_CHECK_EVERY:
                ensure_free_space(self.upload.path.parent, DISK_CHECK_EVERY, self.disk_reserve)  # 507
            self._digest.update(chunk)
            self._out.write(chunk)
        else:
            self._value += chunk
            if len(self._value) > MAX_FIELD_BYTES:
                raise ApiError(413, "payload_too_large", f"form field {self._name!r} is over {MAX_FIELD_BYTES} bytes",
                               self._name)

    def part_end(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
            self.upload.sha256 = self._digest.hexdigest()
        elif self._name:
            self.upload.fields[self._name] = self._value.decode("utf-8", "replace")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


async def receive(request: Request, settings: Settings, make_temp: Callable[[], Path], file_field: str = "file") -> Upload:
    """Parse a multipart/form-data request as it streams in; the file part goes to a file from
    make_temp(), created only once that part arrives. Raises ApiError (and removes the file) on a
    bad content type, a missing file part, or a body over the cap."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise ApiError(415, "unsupported_media_type", "send the file as multipart/form-data (curl -F file=@PATH)")
    cap = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap + MAX_FIELD_BYTES * 16:
        raise ApiError(413, "payload_too_large", f"the request body ({declared} bytes) exceeds the {cap}-byte upload "
                       "limit (KDSERVE_MAX_UPLOAD_BYTES)", file_field)
    receiver = _Receiver(make_temp, cap, file_field, settings.disk_reserve_bytes)
    parser = MultipartParser(options[b"boundary"], receiver.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except ApiError:
        receiver.close()
        receiver.upload.discard()
        raise
    except Exception as exc:  # malformed multipart framing
        receiver.close()
        receiver.upload.discard()
        raise ApiError(422, "invalid_request", f"malformed multipart body: {exc}")
    upload = receiver.upload
    if upload.path is None:
        raise ApiError(422, "invalid_request", f"the {file_field!r} part is missing", file_field)
    if upload.size == 0:
        upload.discard()
        raise ApiError(422, "invalid_request", "the uploaded file is empty", file_field)
    return upload


def check_archive(path: Path, settings: Settings) -> None:
    """Refuse a zip whose members could escape a folder or whose unpacked size is a bomb."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise ApiError(422, "unsupported_format", f"corrupted zip archive: {exc}", "file")
    if len(members) > settings.max_zip_members:
        raise ApiError(413, "payload_too_large", f"the archive has {len(members)} members; the limit is "
                       f"{settings.max_zip_members}", "file")
    total = 0
    for m in members:
        name = m.filename
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in re.split(r"[\\/]", name):
            raise ApiError(422, "unsafe_file", f"archive member {name!r} points outside the archive", "file")
        if stat.S_ISLNK(m.external_attr >> 16):
            raise ApiError(422, "unsafe_file", f"archive member {name!r} is a symbolic link", "file")
        total += m.file_size
    if total > settings.max_unzipped_bytes:
        raise ApiError(413, "payload_too_large", f"the archive unpacks to {total} bytes; the limit is "
                       f"{settings.max_unzipped_bytes} (KDSERVE_MAX_UNZIPPED_BYTES)", "file")
