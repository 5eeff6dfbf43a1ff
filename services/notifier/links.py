"""Signed links a participant follows from their mail: one-click unsubscribe (RFC 8058).

A link is ``<NOTIFIER_PUBLIC_URL>/v1/unsubscribe/<token>``. The token names a participant's
directory entry, by agency and user id and nothing else (no address), and carries an
HMAC-SHA256 of those ids under the secret in ``NOTIFIER_LINK_SECRET_FILE``: whoever holds the
link may turn that one entry's celebrations off, and no other entry can be named without the
secret. Links do not expire: mail is read and acted on months later (docs/decisions/0203).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path

LEAST_SECRET_BYTES = 32
UNSUBSCRIBE_PATH = "/v1/unsubscribe/"
# what is signed starts with what it is for: a signature made for another purpose under the
# same secret can never pass for an unsubscribe token
_PURPOSE = b"casetrail unsubscribe v1\n"
_SIGNATURE_BYTES = 16  # HMAC-SHA256 cut to 128 bits (RFC 2104 allows it): a shorter link
# longer than any token made here (two ids of at most 200 characters): refused unread
MAX_TOKEN_CHARS = 2400


def read_secret(path: Path) -> bytes:
    """The signing secret held in ``path``, without the line break a file usually ends with;
    a file that cannot be read or holds fewer than 32 bytes is a ValueError saying so."""
    try:
        secret = path.read_bytes().strip()
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror})") from None
    if len(secret) < LEAST_SECRET_BYTES:
        raise ValueError(f"{path} holds {len(secret)} bytes; it must hold at least"
                         f" {LEAST_SECRET_BYTES} random bytes, e.g. made with"
                         f" `openssl rand -base64 48 > {path}`")
    return secret


@dataclass(frozen=True)
class Entry:
    """The participant's directory entry a token names."""

    agency: str
    user_id: str


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes:
    """Strict base64url: any character outside its alphabet is a ValueError."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


class UnsubscribeLinks:
    """Makes and reads the tokens of unsubscribe links, and the links themselves."""

    def __init__(self, public_url: str, secret: bytes) -> None:
        self._base = public_url.rstrip("/")
        self._secret = secret

    @classmethod
    def of(cls, public_url: str | None, secret_file: Path | None) -> UnsubscribeLinks | None:
        """The links of these settings; None when the notifier has no public address (the
        settings refuse an address without a usable secret)."""
        if public_url is None or secret_file is None:
            return None
        return cls(public_url, read_secret(secret_file))

    def _signature(self, payload: str) -> bytes:
        mac = hmac.new(self._secret, _PURPOSE + payload.encode("ascii"), hashlib.sha256)
        return mac.digest()[:_SIGNATURE_BYTES]

    def token(self, entry: Entry) -> str:
        ids = json.dumps([entry.agency, entry.user_id], ensure_ascii=False,
                         separators=(",", ":"))
        payload = _encode(ids.encode("utf-8"))
        return f"{payload}.{_encode(self._signature(payload))}"

    def url(self, entry: Entry) -> str:
        return f"{self._base}{UNSUBSCRIBE_PATH}{self.token(entry)}"

    def entry(self, token: str) -> Entry | None:
        """The entry ``token`` names; None for any token this notifier did not sign (too
        long, not ASCII, malformed, tampered with, or signed under another secret)."""
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            return None
        payload, dot, signature = token.partition(".")
        # compared as text: a signature written another way (padded, say) is not this one
        if not dot or not hmac.compare_digest(signature, _encode(self._signature(payload))):
            return None
        return _ids(payload)


def _ids(payload: str) -> Entry | None:
    """The ids of a payload signed here (so well-formed, unless the secret was shared with
    something else that signs the same way)."""
    try:
        ids = json.loads(_decode(payload).decode("utf-8"))
    except ValueError:  # binascii.Error, bad UTF-8 and bad JSON all are
        return None
    if not (isinstance(ids, list) and len(ids) == 2 and all(isinstance(i, str) for i in ids)):
        return None
    return Entry(ids[0], ids[1])
