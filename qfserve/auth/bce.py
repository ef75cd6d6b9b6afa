"""BCE AK/SK request signatures (`Authorization: bce-auth-v1/...`): verify incoming ones, make our own.

The algorithm is in shared/spec/qianfan-wire.md §2. Real clients disagree on details the algorithm
leaves open, so `verify` accepts every reading a known client produces rather than one strict form:

- the path may have been signed as received (percent-encoded), re-encoded from its decoded form,
  or decoded (the qianfan SDK signs `request.url` before `requests` encodes it);
- `Host` may have been signed with or without its port (the Go SDK drops the port);
- `x-bce-*` headers are folded in either all (the reference Python signer's quirk) or only when listed.

Whatever the reading, a signature must sign `host`, may list only headers the request carries, and
a signed body digest (`Content-MD5`, `x-bce-content-sha256`) must match the body. A signature is
good once: the HTTP layer remembers verified ones until they expire (`qfserve.auth.replay`).

Every candidate costs one short HMAC, and there are at most a dozen, so trying them all is cheap.
All canonical forms are built as bytes: header values arrive latin-1 decoded (the ASGI convention),
so their original bytes are recovered with `.encode("latin-1")`.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import quote, unquote_to_bytes

from qfserve.protocol.errors import Code, QianfanError

SCHEME = "bce-auth-v1"
# Signed when the client lists no headers; every present x-bce-* header joins them.
DEFAULT_SIGNED = frozenset({"host", "content-length", "content-type", "content-md5"})
BCE_PREFIX = "x-bce-"
# Headers that carry a digest of the body: when signed, they must match it.
DIGEST_HEADERS = ("content-md5", "x-bce-content-sha256")

_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_SIGNATURE = re.compile(r"^[0-9a-fA-F]{64}$")
_ACCESS_KEY = re.compile(r"^[A-Za-z0-9_\-.]{1,128}$")


@dataclass(frozen=True)
class AuthString:
    """The parsed `Authorization` header."""

    access_key: str
    timestamp: str  # as sent: it is part of the signing-key derivation, so it must not be reformatted
    expiration: int
    signed_headers: tuple[str, ...]  # lowercased, in the client's order; empty means the default set
    signature: str  # lowercase hex

    @property
    def prefix(self) -> str:
        return f"{SCHEME}/{self.access_key}/{self.timestamp}/{self.expiration}"

    @property
    def epoch(self) -> int:
        return calendar.timegm(time.strptime(self.timestamp, "%Y-%m-%dT%H:%M:%SZ"))


def _fail() -> QianfanError:
    # One answer for every failure: telling the caller *why* would help someone guessing keys.
    return QianfanError(Code.IAM_FAILED)


def parse_authorization(value: str) -> AuthString:
    parts = value.strip().split("/")
    if len(parts) != 6 or parts[0].lower() != SCHEME:
        raise _fail()
    access_key, timestamp, expiration, signed, signature = parts[1:]
    if not (
        _ACCESS_KEY.match(access_key)
        and _TIMESTAMP.match(timestamp)
        and expiration.isascii()
        and expiration.isdigit()
        and len(expiration) <= 10
        and _SIGNATURE.match(signature)
    ):
        raise _fail()
    names = tuple(n.strip().lower() for n in signed.split(";") if n.strip())
    auth = AuthString(access_key, timestamp, int(expiration), names, signature.lower())
    try:
        auth.epoch
    except ValueError:  # matches the pattern but is no date, e.g. month 13
        raise _fail() from None
    return auth


# --- canonical forms ---------------------------------------------------------------------------


def uri_encode(data: str | bytes, keep_slash: bool = False) -> bytes:
    """Percent-encode all but `A-Z a-z 0-9 - . _ ~` (and `/` in a path), uppercase hex."""
    return quote(data, safe="/" if keep_slash else "").encode("ascii")


def _hmac_hex(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def signing_key(secret_key: str, prefix: str) -> bytes:
    # The *hex string* of the first HMAC keys the second, not its raw digest.
    return _hmac_hex(secret_key.encode(), prefix.encode()).encode("ascii")


def canonical_query(query: Iterable[tuple[str, str]]) -> bytes:
    pairs = [uri_encode(k) + b"=" + uri_encode(v) for k, v in query if k.lower() != "authorization"]
    return b"&".join(sorted(pairs))


def canonical_headers(headers: Iterable[tuple[str, bytes]]) -> bytes:
    """`headers` holds lowercased names with their raw values; empty values are left out."""
    lines = [uri_encode(name) + b":" + uri_encode(value.strip()) for name, value in headers if value.strip()]
    return b"\n".join(sorted(lines))


def _string_to_sign(method: str, uri: bytes, query: bytes, headers: bytes) -> bytes:
    return b"\n".join([method.encode("ascii"), uri, query, headers])


# --- verification ------------------------------------------------------------------------------


def _raw(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:  # not from an ASGI server: a plain Python string
        return value.encode("utf-8")


def _uri_forms(raw_path: str | bytes) -> set[bytes]:
    if isinstance(raw_path, bytes):
        received = {raw_path}
    else:  # a str may be ASGI bytes read as latin-1, or a decoded Python path: try both
        received = {raw_path.encode("utf-8")}
        try:
            received.add(raw_path.encode("latin-1"))
        except UnicodeEncodeError:
            pass
    forms = set()
    for path in received:
        decoded = unquote_to_bytes(path)
        forms |= {path, uri_encode(decoded, keep_slash=True), decoded}
    return forms


def _without_port(host: bytes) -> bytes:
    name, sep, port = host.rpartition(b":")
    if sep and port.isdigit() and (b":" not in name or name.endswith(b"]")):  # leaves bare IPv6 alone
        return name
    return host


def _present(headers: Mapping[str, str]) -> dict[str, bytes]:
    present: dict[str, bytes] = {}
    for name, value in headers.items():
        present.setdefault(name.lower(), _raw(value))  # the first of repeated headers, as Starlette does
    return present


def _header_forms(signed: tuple[str, ...], headers: Mapping[str, str]) -> set[bytes]:
    present = _present(headers)
    bce_names = {n for n in present if n.startswith(BCE_PREFIX)}
    listed = set(signed) if signed else DEFAULT_SIGNED | bce_names
    host = present.get("host")
    host_forms = {host, _without_port(host)} if host is not None else {None}
    forms = set()
    for names in (listed, listed | bce_names):  # the two readings of the x-bce-* quirk
        for host in host_forms:
            values = present if host is None else {**present, "host": host}
            forms.add(canonical_headers((n, values[n]) for n in names if n in values))
    return forms


def carries_body_digest(headers: Mapping[str, str]) -> bool:
    """Whether the request names a digest of its body, which `verify` must then compare."""
    return any(name in headers for name in DIGEST_HEADERS)


def _body_digests(body: bytes) -> dict[str, bytes]:
    return {
        "content-md5": base64.b64encode(hashlib.md5(body).digest()),
        "x-bce-content-sha256": hashlib.sha256(body).hexdigest().encode("ascii"),
    }


def _check_shape(auth: AuthString, present: Mapping[str, bytes], body: bytes | None) -> None:
    """What every reading must satisfy, whatever the signature says.

    - `host` is signed: without it a signature made for one server is good on any other;
    - every listed header is on the request: a list naming absent headers signs less than it claims;
    - a signed body digest matches the body: otherwise the body can be swapped under the signature.
    """
    listed = set(auth.signed_headers)
    if listed and "host" not in listed:
        raise _fail()
    if "host" not in present or any(name not in present for name in listed):
        raise _fail()
    if body is None:
        return
    signed = listed or DEFAULT_SIGNED
    digests = _body_digests(body)
    for name in DIGEST_HEADERS:
        value = present.get(name)
        # x-bce-* headers are signed whether listed or not (the reference signer's quirk).
        if value is not None and (name in signed or name.startswith(BCE_PREFIX)):
            if not hmac.compare_digest(value.strip().lower() if name.startswith(BCE_PREFIX) else value.strip(),
                                       digests[name]):
                raise _fail()


def verify_request(
    method: str,
    raw_path: str | bytes,
    query: list[tuple[str, str]],
    headers: Mapping[str, str],
    find_secret: Callable[[str], tuple[Any, str] | None],
    *,
    now: float,
    max_skew: int = 300,
    max_expiration: int = 3600,
    body: bytes | None = None,
) -> tuple[Any, AuthString]:
    """Check a bce-auth-v1 signed request; return the caller found by `find_secret` and the auth string.

    `raw_path` is the path as received (ASGI `scope["raw_path"]`, no query string); `query` the
    decoded query pairs; `headers` the request headers; `body` the request body, compared with a
    signed `Content-MD5` / `x-bce-content-sha256` (None: not available, not compared — the HTTP
    layer always passes it when such a header is present). The signing time is the auth string's
    own timestamp (curl users send no `x-bce-date`). Raises QianfanError 14 on any failure.
    Refusing a replayed signature is the caller's job (`replay_window` says how long to remember it).
    """
    authorization = headers.get("authorization") or headers.get("Authorization")
    if not authorization:
        raise _fail()
    auth = parse_authorization(authorization)
    issued = auth.epoch
    if auth.expiration > max_expiration or issued > now + max_skew or issued + auth.expiration < now - max_skew:
        raise _fail()
    _check_shape(auth, _present(headers), body)
    found = find_secret(auth.access_key)
    if found is None:
        raise _fail()
    caller, secret_key = found

    key = signing_key(secret_key, auth.prefix)
    query_part = canonical_query(query)
    claimed = auth.signature.encode("ascii")
    matched = False
    for uri in _uri_forms(raw_path):
        for header_part in _header_forms(auth.signed_headers, headers):
            expected = _hmac_hex(key, _string_to_sign(method.upper(), uri, query_part, header_part))
            # No early exit: the time taken must not depend on which candidate matched.
            matched |= hmac.compare_digest(expected.encode("ascii"), claimed)
    if not matched:
        raise _fail()
    return caller, auth


def verify(*args: Any, **kwargs: Any) -> Any:
    """`verify_request` returning only the caller."""
    return verify_request(*args, **kwargs)[0]


def replay_window(auth: AuthString, now: float, max_skew: int = 300) -> int:
    """Seconds a verified signature stays acceptable, so how long to remember it against replay."""
    return max(1, int(auth.epoch + auth.expiration + max_skew - now) + 1)


# --- signing (our own client side: tests, bench) -----------------------------------------------


def format_timestamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def sign(
    access_key: str,
    secret_key: str,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None,
    *,
    timestamp: float | str,
    expiration: int = 1800,
    signed_headers: Iterable[str] | None = None,
) -> str:
    """The `Authorization` value for a request, signing only the listed headers (none = default set).

    `path` is the decoded path: it is percent-encoded here, as the client library will on the wire.
    """
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    listed = [h.lower() for h in signed_headers or ()]
    names = set(listed) or DEFAULT_SIGNED | {n for n in headers if n.startswith(BCE_PREFIX)}
    stamp = timestamp if isinstance(timestamp, str) else format_timestamp(timestamp)
    prefix = f"{SCHEME}/{access_key}/{stamp}/{expiration}"
    message = _string_to_sign(
        method.upper(),
        uri_encode(path, keep_slash=True),
        canonical_query(query),
        canonical_headers((n, headers[n].encode("utf-8")) for n in names if n in headers),
    )
    signature = _hmac_hex(signing_key(secret_key, prefix), message)
    return f"{prefix}/{';'.join(listed)}/{signature}"
