"""HTTP header rules every side of the gateway shares: which names are hop-by-hop, and which characters a
header value may hold when the gateway passes it on.

The caller-facing server, the pipeline's stages, the upstream client and the profile loader each keep
their own lists of names they strip or refuse, for their own reasons; the hop-by-hop names (RFC 9110
7.6.1, plus the legacy ones proxies still see) are one set here, so a fix to it reaches all of them.
"""

from __future__ import annotations

import re
from typing import Final

# Headers that belong to one connection, not to the message: never carried from one side to the other.
HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-authenticate", "proxy-authorization",
})

# What a header value the gateway passes on may hold: visible ASCII, space and tab. A line break or NUL
# would split a head; another control character or a non-ASCII byte (whose charset nobody agreed on) has
# no agreed meaning in a header.
_VALUE_CHARACTERS = r"\t\x20-\x7e"
is_passable_value: Final = re.compile(f"[{_VALUE_CHARACTERS}]*").fullmatch
find_unpassable_character: Final = re.compile(f"[^{_VALUE_CHARACTERS}]").search
