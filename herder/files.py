"""Checks on the files a client sends to a minion or a daemon, before Docker is touched."""

from __future__ import annotations

import re

from django.conf import settings

from herder.bodycap import minion_body_cap
from herder.errors import BadFileName, PayloadTooLarge


def files_from_request(request, *, protocol_fields: tuple[str, ...]) -> dict[str, bytes]:
    """Every form field but `protocol_fields`, and every upload, as name -> bytes.

    A body far larger than the files may total is refused from its
    Content-Length (herder.bodycap refuses it sooner, while it streams).
    """
    length = int(request.META.get("CONTENT_LENGTH") or 0)
    if length > minion_body_cap():
        raise PayloadTooLarge(f"The request has {length} bytes; files may total {settings.HERDER_MINION_MAX_BYTES}.")
    files = {name: values[-1].encode() for name, values in request.POST.lists() if name not in protocol_fields}
    for name, upload in request.FILES.items():
        files[name] = upload.read()
    return files


# Control characters would break herder-run's line-based header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME = 1024
_MAX_PART = 255


def check_name(name: str) -> str:
    """A relative path inside /minion, sub-folders allowed. Raises BadFileName."""
    if not name:
        raise BadFileName("A file name is empty.")
    if "\x00" in name:
        raise BadFileName("A file name holds a NUL byte.")
    if "\\" in name:
        raise BadFileName(f"File name {name!r} holds a backslash.")
    if _CONTROL.search(name):
        raise BadFileName(f"File name {name!r} holds a control character.")
    if name.startswith("/"):
        raise BadFileName(f"File name {name!r} is an absolute path.")
    if len(name) > _MAX_NAME:
        raise BadFileName(f"A file name is longer than {_MAX_NAME} characters.")
    for part in name.split("/"):
        if part == "..":
            raise BadFileName(f"File name {name!r} climbs out with '..'.")
        if part in ("", "."):
            raise BadFileName(f"File name {name!r} has an empty or '.' part.")
        if len(part) > _MAX_PART:
            raise BadFileName(f"A part of file name {name[:40]!r}... is longer than {_MAX_PART}.")
    return name


def check_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """All names valid, none both a file and a folder, within the count and size caps."""
    if len(files) > settings.HERDER_MINION_MAX_FILES:
        raise PayloadTooLarge(f"{len(files)} files sent; at most {settings.HERDER_MINION_MAX_FILES} are allowed.")
    total = sum(len(data) for data in files.values())
    if total > settings.HERDER_MINION_MAX_BYTES:
        raise PayloadTooLarge(f"{total} bytes of files sent; at most {settings.HERDER_MINION_MAX_BYTES} are allowed.")
    for name in files:
        check_name(name)
    folders = {name.rsplit("/", 1)[0] for name in files if "/" in name}
    folders |= {f.rsplit("/", i)[0] for f in list(folders) for i in range(1, f.count("/") + 1)}
    clash = folders & files.keys()
    if clash:
        raise BadFileName(f"{sorted(clash)[0]!r} is sent both as a file and as a folder.")
    return files
