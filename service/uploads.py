"""Uploads, streamed: the multipart body is parsed as it arrives and the file part goes straight
to a temp file in the blob store, hashed on the way, stopped at KDSERVE_MAX_UPLOAD_BYTES (413).
Nothing is spooled anywhere else, and a refused upload leaves no file behind. The form around the
file is bounded too: at most MAX_PARTS parts, MAX_FIELD_BYTES per field and MAX_FIELDS_BYTES for all
fields together, MAX_PART_HEADER_BYTES of headers per part (2000 fields of 64 KiB once held 120 MB
of memory).

Archives are checked before anything opens them: the member count, read from the end of the
central directory before zipfile builds its list (a zip of 300 k empty members took 1.4 s and
158 MiB to list), no absolute or `..` member paths, no links, a cap on the declared uncompressed
size (zip bombs).
"""

from __future__ import annotations

import hashlib
import re
import stat
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from kdserve.service.errors import ApiError
from kdserve.service.limits import ensure_free_space
from kdserve.service.settings import Settings

MAX_FIELD_BYTES = 64 * 1024  # one form field
MAX_FIELDS_BYTES = 256 * 1024  # all form fields together
MAX_PARTS = 32  # parts of a form, the file's included (the upload forms have under ten fields)
MAX_PART_HEADER_BYTES = 8 * 1024  # the headers of one part
# what a form may add to its file: fields, part headers, boundaries (a longer body is refused)
FORM_ALLOWANCE = MAX_FIELDS_BYTES + MAX_PARTS * (MAX_PART_HEADER_BYTES + 256)
DISK_CHECK_EVERY = 64 * 1024**2  # bytes of a file part between two looks at the disk's free space


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    path: Path | None = None  # the file part, in the blob store's temp folder
    filename: str | None = None
    sha256: str = ""
    size: int = 0
    extra: dict[str, "Upload"] = field(default_factory=dict)  # further file parts the route accepts (by name)

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        for part in self.extra.values():
            part.discard()


def safe_name(name: str | None) -> str | None:
    """A display name from a client's filename: last path component, printable, ≤ 255 chars."""
    if not name:
        return None
    name = re.split(r"[\\/]", name)[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()[:255]
    return name or None


class _Receiver:
    """python-multipart callbacks: fields into memory (small, and bounded: see the module's
    docstring), the file part onto disk."""

    def __init__(self, make_temp: Callable[[], Path], cap: int, file_field: str, extra_files: tuple[str, ...] = (),
                 disk_reserve: int = 0):
        self.upload = Upload()
        self.make_temp, self.cap, self.file_field, self.extra_files = make_temp, cap, file_field, extra_files
        self.disk_reserve = disk_reserve
        self._part: Upload | None = None  # the file part being written
        self._total = 0
        self._digest = hashlib.sha256()
        self._header_field = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._out = None
        self._parts = 0
        self._header_bytes = 0  # of the current part
        self._fields_bytes = 0  # of every field so far

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end}

    def part_begin(self) -> None:
        self._headers, self._name, self._value = {}, None, bytearray()
        self._parts += 1
        self._header_bytes = 0
        if self._parts > MAX_PARTS:
            raise ApiError(413, "payload_too_large", f"the form has more than {MAX_PARTS} parts")

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise ApiError(413, "payload_too_large", f"a form part has over {MAX_PART_HEADER_BYTES} bytes of headers")

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._headers[self._header_field.lower()] = self._headers.get(self._header_field.lower(), b"") + data[start:end]

    def header_end(self) -> None:
        self._header_field = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == self.file_field or self._name in self.extra_files:
            part = self.upload if self._name == self.file_field else self.upload.extra.setdefault(self._name, Upload())
            if part.path is not None:
                raise ApiError(422, "invalid_request", f"send one {self._name!r} part, not several", self._name)
            part.filename = safe_name(options.get(b"filename", b"").decode("utf-8", "replace"))
            part.path = self.make_temp()
            self._part, self._digest = part, hashlib.sha256()
            self._out = open(part.path, "wb")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._out is not None:
            self._part.size += len(chunk)
            self._total += len(chunk)
            if self._total > self.cap:
                raise ApiError(413, "payload_too_large", f"the file exceeds the {self.cap}-byte upload limit "
                               "(KDSERVE_MAX_UPLOAD_BYTES)", self._name)
            if self._total // DISK_CHECK_EVERY != (self._total - len(chunk)) // DISK_CHECK_EVERY:
                ensure_free_space(self._part.path.parent, DISK_CHECK_EVERY, self.disk_reserve)  # 507
            self._digest.update(chunk)
            self._out.write(chunk)
        else:
            self._value += chunk
            self._fields_bytes += len(chunk)
            if len(self._value) > MAX_FIELD_BYTES:
                raise ApiError(413, "payload_too_large", f"form field {self._name!r} is over {MAX_FIELD_BYTES} bytes",
                               self._name)
            if self._fields_bytes > MAX_FIELDS_BYTES:
                raise ApiError(413, "payload_too_large", f"the form's fields are over {MAX_FIELDS_BYTES} bytes together")

    def part_end(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
            self._part.sha256 = self._digest.hexdigest()
        elif self._name:
            self.upload.fields[self._name] = self._value.decode("utf-8", "replace")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


async def receive(request: Request, settings: Settings, make_temp: Callable[[], Path], file_field: str = "file",
                  extra_files: tuple[str, ...] = ()) -> Upload:
    """Parse a multipart/form-data request as it streams in; the file part goes to a file from
    make_temp(), created only once that part arrives (so do the optional `extra_files` parts,
    into upload.extra; the cap counts every file part together). Raises ApiError (and removes the
    files) on a bad content type, a missing file part, or a body over the cap."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise ApiError(415, "unsupported_media_type", "send the file as multipart/form-data (curl -F file=@PATH)")
    cap = settings.max_upload_bytes
    too_large = ApiError(413, "payload_too_large", f"the request body exceeds the {cap}-byte upload limit "
                         "(KDSERVE_MAX_UPLOAD_BYTES) and what a form adds to it", file_field)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap + FORM_ALLOWANCE:
        raise too_large
    receiver = _Receiver(make_temp, cap, file_field, extra_files, settings.disk_reserve_bytes)
    parser = MultipartParser(options[b"boundary"], receiver.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > cap + FORM_ALLOWANCE:  # outside the parts (a preamble, an epilogue): never parsed
                raise too_large
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
    """Refuse a zip with too many members, whose members could escape a folder or whose unpacked
    size is a bomb. It reads the file: async routes call it in the thread pool."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return
        check_member_count(f, settings.max_zip_members)
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


# The end of a zip (APPNOTE 4.3.16, 4.3.14, 4.3.15): the end-of-central-directory record (22 bytes
# and a comment of up to 64 KiB), before it for zip64 a locator (20 bytes) pointing at a zip64 record.
EOCD, EOCD_SIZE = b"PK\x05\x06", 22
ZIP64_LOCATOR, ZIP64_LOCATOR_SIZE = b"PK\x06\x07", 20
ZIP64_EOCD, ZIP64_EOCD_SIZE = b"PK\x06\x06", 56
CENTRAL_ENTRY, CENTRAL_ENTRY_SIZE = b"PK\x01\x02", 46
CENTRAL_BYTES_PER_MEMBER = 1024  # a directory entry is 46 bytes and its name: 1 KiB on average is plenty


def check_member_count(f, limit: int) -> None:
    """413 for a zip of more than `limit` members, found without building zipfile's list of them:
    the count its end record declares, then the central directory's entries walked (up to
    limit + 1), since zipfile reads every entry there whatever the count says. Damaged or missing
    records are left to zipfile (which refuses them)."""
    end = _central_directory(f)
    if end is None:
        return
    declared, cd_start, cd_size = end
    if declared > limit or cd_size > limit * CENTRAL_BYTES_PER_MEMBER:
        raise ApiError(413, "payload_too_large", f"the archive declares {declared} members in a {cd_size}-byte "
                       f"directory; the limit is {limit} members (KDSERVE_MAX_ZIP_MEMBERS)", "file")
    f.seek(cd_start)
    walked, pos = 0, 0
    while pos < cd_size and walked <= limit:
        head = f.read(CENTRAL_ENTRY_SIZE)
        if len(head) < CENTRAL_ENTRY_SIZE or head[:4] != CENTRAL_ENTRY:
            return
        name_len, extra_len, comment_len = struct.unpack_from("<3H", head, 28)
        f.seek(name_len + extra_len + comment_len, 1)
        pos += CENTRAL_ENTRY_SIZE + name_len + extra_len + comment_len
        walked += 1
    if walked > limit:
        raise ApiError(413, "payload_too_large", f"the archive has more than {limit} members (its end record says "
                       f"{declared}); the limit is {limit} (KDSERVE_MAX_ZIP_MEMBERS)", "file")


def _central_directory(f) -> tuple[int, int, int] | None:
    """(declared member count, where the central directory starts, its size in bytes) from the end
    records, found where zipfile finds them (the last 22 bytes, else the last record signature in
    the final 64 KiB), or None without one. The directory is where zipfile reads it: right before
    the end record (or before the zip64 record and locator), whatever offset the record states."""
    size = f.seek(0, 2)
    tail_start = max(0, size - EOCD_SIZE - 0xFFFF)
    f.seek(tail_start)
    tail = f.read()
    at = len(tail) - EOCD_SIZE if tail[-EOCD_SIZE:-EOCD_SIZE + 4] == EOCD and tail[-2:] == b"\0\0" else tail.rfind(EOCD)
    if at < 0 or len(tail) - at < EOCD_SIZE:
        return None
    count, cd_size = struct.unpack_from("<HL", tail, at + 10)
    record_at = tail_start + at
    if record_at >= ZIP64_LOCATOR_SIZE + ZIP64_EOCD_SIZE:
        f.seek(record_at - ZIP64_LOCATOR_SIZE - ZIP64_EOCD_SIZE)
        record = f.read(ZIP64_EOCD_SIZE)
        locator = f.read(ZIP64_LOCATOR_SIZE)
        if locator[:4] == ZIP64_LOCATOR:
            if record[:4] != ZIP64_EOCD:
                return None
            count, cd_size = struct.unpack_from("<QQ", record, 32)
            record_at -= ZIP64_LOCATOR_SIZE + ZIP64_EOCD_SIZE
    return count, max(0, record_at - cd_size), cd_size
