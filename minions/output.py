"""How a minion's output file is answered: never as a document of the herder's origin.

Anyone can name the output file and send its bytes (`output=x.html`,
`x.html=<script>...`), from a cross-site form too. Answered inline as text/html
(or SVG, XML...) on the herder's own origin, that script would drive the admin
with an operator's session cookie. So every output file carries:

- `Content-Security-Policy: sandbox` (no allow-same-origin, no allow-scripts):
  were it rendered at all, it is an opaque origin and runs no script;
- `X-Content-Type-Options: nosniff`: the browser takes the type as given;
- `Content-Disposition: attachment` unless its type is one a browser only shows
  (images, PDF, plain text, audio, video): a navigation downloads it instead of
  rendering it. A type the herder does not know is application/octet-stream.

Pages on other origins (webstrates) read the bytes through fetch (CORS is open),
where these headers change nothing: a blob keeps its type and shows in an <img>.
"""

from __future__ import annotations

import mimetypes

from django.utils.http import content_disposition_header

# Shown by a browser, never run: these may be displayed inline.
PASSIVE_TYPES = frozenset(
    {
        "application/pdf",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/bmp",
        "text/plain",
        "text/csv",
        "application/json",
        "audio/mpeg",
        "audio/ogg",
        "audio/wav",
        "audio/x-wav",
        "audio/webm",
        "audio/flac",
        "video/mp4",
        "video/webm",
        "video/ogg",
    }
)

CONTENT_SECURITY_POLICY = "sandbox"

# Python's own table, not the machine's /etc/mime.types: the same answer on
# every machine, plus what that table lacks.
_TYPES = mimetypes.MimeTypes()
for _extension, _type in {
    ".xhtml": "application/xhtml+xml",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".ogg": "audio/ogg",
    ".flac": "audio/flac",
}.items():
    _TYPES.add_type(_type, _extension)


def output_file_headers(name: str) -> dict[str, str]:
    """The response headers of output file `name` (a path inside /minion)."""
    content_type, encoding = _TYPES.guess_type(name, strict=False)
    if content_type is None or encoding is not None:
        # Unknown, or compressed (x.html.gz): claim nothing about the bytes.
        content_type = "application/octet-stream"
    inline = content_type in PASSIVE_TYPES
    return {
        "Content-Type": content_type,
        "Content-Disposition": content_disposition_header(not inline, name.rsplit("/", 1)[-1]),
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
    }
