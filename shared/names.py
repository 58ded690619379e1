"""The one check of every blob name, backup folder and id the app accepts, wherever it comes from (the HTTP API, the
blob trigger and Event Grid, the monitor's sweep of ``uploads/``; the command line, installed without the app, has
the app check an upload's name through ``GET /api/jobs?source=`` before uploading).

Why it matters: a name with a ``.`` or ``..`` segment addresses another blob. HTTP clients (urllib3, under the
Azure SDK) remove dot segments from a URL's path before sending it (RFC 3986, section 5.2.4), so
``uploads/../backups/devhub/S/devices.txt`` is the backup. With shared-key auth the signature then no longer matches
(a 500 for the caller); with a token (the identity-based storage production uses) nothing signs the path, and the
app would read, archive and delete a blob of another container. Empty segments (``a//b``, a leading or trailing
``/``), backslashes (Azurite stores one as ``/``: the name is then not the one that was meant)
and control characters are refused as well: Azure's naming rules (learn.microsoft.com, "Naming and Referencing
Containers, Blobs, and Metadata") do not allow control characters (0x00-0x1F) and advise against names that end in a
dot, a slash or a backslash, and such names look like other names.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def problem(name: str) -> str | None:
    """What is wrong with a blob name (or any ``/``-separated path the app turns into one), or None when it is
    safe: no ``.``/``..``/empty segment, no backslash, no control character."""
    if not name:
        return "it is empty"
    if (char := _CONTROL.search(name)) is not None:
        return f"it holds a control character (U+{ord(char.group()):04X})"
    if "\\" in name:
        return "it holds a backslash (\\): folders are separated by /"
    for segment in name.split("/"):
        if segment in (".", ".."):
            return f"it has a '{segment}' folder: give the path itself, without . or .. segments"
        if not segment:
            return "it has an empty folder (a leading, trailing or doubled /)"
    return None


def addressable(name: str) -> bool:
    """False when no request can reach this blob by its name: a ``.``/``..`` segment is removed by the HTTP layer
    before the request is sent, so the request would address another blob. Such a name is never touched."""
    return not any(segment in (".", "..") for segment in name.split("/"))


class UnsafeName(ValueError):
    """A blob name the app refuses to address (see ``problem``); the message names the name's problem."""


def checked(name: str, what: str = "blob name") -> str:
    """``name`` when it is safe.

    Raises:
        UnsafeName: it is not; the message says what is wrong.
    """
    why = problem(name)
    if why is not None:
        raise UnsafeName(f"the {what} {name!r} is refused: {why}")
    return name
