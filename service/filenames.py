"""File names made from names a client or the server chose (a model's name is whatever its job's
metadata.name said): one plain basename, never a path, for both ends of a download.

The server names the file in `Content-Disposition` (RFC 6266: an ASCII `filename=` for old
clients and the exact name, percent-encoded UTF-8, in `filename*=`; a header value outside latin-1
cannot be sent at all, which made every download of such a model a 500). The SDK and the CLI save
under the same basename when the user gives no path, so a model named `../../x` cannot write
outside the folder asked for. Standard library only: the SDK imports this.
"""

from __future__ import annotations

import re
import urllib.parse

# Path separators, control characters, and what Windows forbids in a name.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')


def safe_basename(name: str | None) -> str | None:
    """The last path component of `name`, without control or reserved characters, ≤ 200
    characters; None when nothing usable is left (empty, `.`, `..`)."""
    if not name:
        return None
    base = re.split(r"[\\/]", name)[-1]
    base = _UNSAFE.sub("_", base).strip().strip(".")[:200].strip()
    return base or None


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact UTF-8 name (RFC 6266, RFC 8187)."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"
