"""bce-auth-v1 verification: the spec's vectors, the reference signer's output, and every refusal."""

from __future__ import annotations

import base64
import calendar
import hashlib
import time
from urllib.parse import quote

import pytest
from baidubce.auth import bce_v1_signer
from baidubce.auth.bce_credentials import BceCredentials
from starlette.datastructures import Headers

from qfserve.auth.bce import carries_body_digest, format_timestamp, parse_authorization, replay_window, sign, verify
from qfserve.protocol.errors import Code, QianfanError

AK, SK = "a" * 32, "b" * 32
APP = object()  # what find_secret returns and verify hands back
NOW = calendar.timegm((2026, 11, 25, 19, 27, 25, 0, 0, 0))


def find_secret(access_key: str):
    return (APP, SK) if access_key == AK else None


def wire_headers(headers: dict[str, str]) -> Headers:
    """Headers as Starlette hands them to the app: raw UTF-8 bytes, read back as latin-1."""
    return Headers(raw=[(k.lower().encode(), v.encode("utf-8")) for k, v in headers.items()])


def check(method, raw_path, query, headers, *, now=NOW, find=find_secret, **limits):
    return verify(method, raw_path, list(query), wire_headers(headers), find, now=now, **limits)


def refused(*args, **kwargs) -> None:
    with pytest.raises(QianfanError) as caught:
        check(*args, **kwargs)
    assert caught.value.code == Code.IAM_FAILED
    assert caught.value.body("as-x") == {"error_code": 14, "error_msg": "IAM Certification failed", "id": "as-x"}


def sdk_sign(method, signed_path, query, headers, *, timestamp=NOW, expiration=300, headers_to_sign=None, ak=AK, sk=SK):
    """The authoritative client-side signer, called the way the qianfan SDK calls it."""
    return bce_v1_signer.sign(
        BceCredentials(ak, sk),
        method.encode(),
        signed_path.encode(),
        {k.encode(): v for k, v in headers.items()},
        {k.encode(): v for k, v in query},
        timestamp=timestamp,
        expiration_in_seconds=expiration,
        headers_to_sign=None if headers_to_sign is None else {h.encode() for h in headers_to_sign},
    ).decode()


# --- the spec's test vectors (qianfan-wire.md §2) -----------------------------------------------

VECTOR_TIME = "2015-04-27T08:23:49Z"
VECTOR_NOW = calendar.timegm(time.strptime(VECTOR_TIME, "%Y-%m-%dT%H:%M:%SZ"))
VECTOR_PATH = "/v1/test/myfolder/readme.txt"
VECTOR_QUERY = [("partNumber", "9"), ("uploadId", "a44cc9bab11cbd156984767aad637851")]
VECTOR_HEADERS = {
    "Host": "bj.bcebos.com",
    "Content-Type": "text/plain",
    "Content-Length": "8",
    "Content-Md5": "NFzcPqhviddjRNnSOGo4rw==",
    "x-bce-date": VECTOR_TIME,
}
SDK_CAPTURE_HEADERS = {
    "Content-Type": "application/json",
    "Host": "127.0.0.1:18765",
    "Request_id": "sdk-py-0.4.12.3-cE6rekMSiwqtmnop",
    "x-bce-date": "2026-11-25T19:27:25Z",
}
CHAT_PATH = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/ernie_speed"

VECTORS = [
    ("PUT", VECTOR_PATH, VECTOR_QUERY, VECTOR_HEADERS, VECTOR_TIME, 1800, [],
     "d74a04362e6a848f5b39b15421cb449427f419c95a480fd6b8cf9fc783e2999e"),
    ("PUT", VECTOR_PATH, VECTOR_QUERY, VECTOR_HEADERS, VECTOR_TIME, 1800, ["host", "x-bce-date"],
     "1b8de5a23a56eef657c69f94c621e7acd227d049a4ba577f537d5e5cebf0cf32"),
    ("PUT", VECTOR_PATH, [], VECTOR_HEADERS, VECTOR_TIME, 1800, [],
     "0558aac491bbef484d3aaa30ac1e65d4ff10daccd351f15c91e922ee4ce72690"),
    ("POST", CHAT_PATH, [], SDK_CAPTURE_HEADERS, "2026-11-25T19:27:25Z", 300,
     ["x-bce-date", "content-type", "host", "request_id"],
     "542d1c0f599302b7c9a5c69ec229be33436ad10fa366fadc37f39b52488e9da3"),
]


@pytest.mark.parametrize("method,path,query,headers,stamp,expiration,signed,signature", VECTORS)
def test_spec_vectors(method, path, query, headers, stamp, expiration, signed, signature):
    authorization = sign(AK, SK, method, path, query, headers, timestamp=stamp, expiration=expiration, signed_headers=signed)
    assert authorization == f"bce-auth-v1/{AK}/{stamp}/{expiration}/{';'.join(signed)}/{signature}"
    now = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    assert check(method, path, query, {**headers, "Authorization": authorization}, now=now) is APP


def test_vector_signed_by_reference_sdk():
    authorization = sdk_sign(
        "POST", CHAT_PATH, [], SDK_CAPTURE_HEADERS,
        expiration=300, headers_to_sign=["x-bce-date", "content-type", "host", "request_id"],
    )
    assert authorization.endswith("/542d1c0f599302b7c9a5c69ec229be33436ad10fa366fadc37f39b52488e9da3")
    assert check("POST", CHAT_PATH, [], {**SDK_CAPTURE_HEADERS, "Authorization": authorization}) is APP


# --- the reference signer over varied requests ----------------------------------------------------

PATHS = [
    CHAT_PATH,
    "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/my-svc_01",
    "/a b/c+d/e=f",
    "/中文/路径.txt",
    "/tilde~/dot./under_/dash-",
]
QUERIES = [
    [],
    [("access_token", "24.abc.2592000")],
    [("b", "2"), ("a", "1"), ("empty", "")],
    [("中", "文 x/y"), ("plus", "1+1=2")],
]
HEADER_SETS = {
    # what the Python SDK signs for chat
    "python-sdk": (SDK_CAPTURE_HEADERS, ["content-type", "host", "request_id", "x-bce-date"]),
    # what the Node SDK signs
    "node-sdk": (
        {"Host": "127.0.0.1:8000", "Content-Type": "application/json", "Content-Length": "42", "x-bce-date": format_timestamp(NOW)},
        ["content-length", "content-type", "host", "x-bce-date"],
    ),
    "default-set": ({"Host": "example.com", "Content-Type": "application/json", "x-bce-date": format_timestamp(NOW)}, None),
    # an x-bce-* header present but unlisted: the reference signer folds it in anyway
    "unlisted-bce": ({"Host": "example.com", "x-bce-request-id": "r-1", "x-bce-date": format_timestamp(NOW)}, ["host"]),
    "non-ascii-value": ({"Host": "example.com", "x-bce-meta-name": "名字 ünï"}, ["host", "x-bce-meta-name"]),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("query", QUERIES, ids=lambda q: "&".join(k for k, _ in q) or "no-query")
@pytest.mark.parametrize("header_set", HEADER_SETS)
@pytest.mark.parametrize("style", ["decoded", "encoded"])
def test_reference_signer_accepted(path, query, header_set, style):
    """`decoded`: the qianfan SDK signs the path before `requests` encodes it.
    `encoded`: the bce SDK's own clients sign the already-encoded path they send."""
    headers, to_sign = HEADER_SETS[header_set]
    wire_path = quote(path, safe="/~")
    signed_path = path if style == "decoded" else wire_path
    authorization = sdk_sign("POST", signed_path, query, headers, headers_to_sign=to_sign)
    assert check("POST", wire_path, query, {**headers, "Authorization": authorization}) is APP


@pytest.mark.parametrize("path", PATHS)
def test_own_signer_accepted(path):
    headers = {"Host": "example.com", "x-bce-date": format_timestamp(NOW)}
    authorization = sign(AK, SK, "POST", path, [("k", "v w")], headers, timestamp=NOW, signed_headers=["host", "x-bce-date"])
    assert check("POST", quote(path, safe="/~"), [("k", "v w")], {**headers, "Authorization": authorization}) is APP


# --- what real clients do that a strict server would refuse ------------------------------------------


def test_curl_style_host_only_without_x_bce_date():
    authorization = sign(AK, SK, "POST", CHAT_PATH, [], {"Host": "example.com"}, timestamp=NOW, signed_headers=["host"])
    headers = {"Host": "example.com", "Content-Type": "application/x-www-form-urlencoded", "Authorization": authorization}
    assert check("POST", CHAT_PATH, [], headers) is APP


def test_signed_header_list_in_any_order():
    headers = {"Host": "example.com", "Content-Type": "application/json", "x-bce-date": format_timestamp(NOW)}
    for order in (["x-bce-date", "host", "content-type"], ["content-type", "x-bce-date", "host"]):
        authorization = sign(AK, SK, "POST", CHAT_PATH, [], headers, timestamp=NOW, signed_headers=order)
        assert f"/{';'.join(order)}/" in authorization
        assert check("POST", CHAT_PATH, [], {**headers, "Authorization": authorization}) is APP


@pytest.mark.parametrize("signed_host,received_host", [
    ("127.0.0.1:8000", "127.0.0.1:8000"),
    ("127.0.0.1", "127.0.0.1:8000"),  # the Go SDK drops the port
    ("localhost", "localhost"),
    ("[::1]", "[::1]:8000"),
])
def test_host_with_or_without_port(signed_host, received_host):
    authorization = sign(AK, SK, "POST", CHAT_PATH, [], {"Host": signed_host}, timestamp=NOW, signed_headers=["host"])
    assert check("POST", CHAT_PATH, [], {"Host": received_host, "Authorization": authorization}) is APP


def test_host_with_a_port_the_request_lacks_is_refused():
    authorization = sign(AK, SK, "POST", CHAT_PATH, [], {"Host": "example.com:8000"}, timestamp=NOW, signed_headers=["host"])
    refused("POST", CHAT_PATH, [], {"Host": "example.com", "Authorization": authorization})


def test_unlisted_bce_header_either_reading():
    """A signer that folds only listed headers and one that folds every x-bce-* header both pass."""
    headers = {"Host": "example.com", "x-bce-request-id": "r-1"}
    strict = sign(AK, SK, "POST", CHAT_PATH, [], headers, timestamp=NOW, signed_headers=["host"])
    quirky = sdk_sign("POST", CHAT_PATH, [], headers, headers_to_sign=["host"])
    assert strict != quirky
    for authorization in (strict, quirky):
        assert check("POST", CHAT_PATH, [], {**headers, "Authorization": authorization}) is APP


def test_uppercase_signature_hex_accepted():
    authorization = sign(AK, SK, "POST", CHAT_PATH, [], {"Host": "h"}, timestamp=NOW, signed_headers=["host"])
    prefix, _, signature = authorization.rpartition("/")
    assert check("POST", CHAT_PATH, [], {"Host": "h", "Authorization": f"{prefix}/{signature.upper()}"}) is APP


# --- refusals -----------------------------------------------------------------------------------------

BASE_HEADERS = {"Host": "example.com", "Content-Type": "application/json", "x-bce-date": format_timestamp(NOW)}
BASE_QUERY = [("a", "1")]


def signed_request(**overrides):
    args = dict(ak=AK, sk=SK, method="POST", path=CHAT_PATH, query=BASE_QUERY, headers=BASE_HEADERS, timestamp=NOW, expiration=300)
    args.update(overrides)
    authorization = sdk_sign(
        args["method"], args["path"], args["query"], args["headers"],
        timestamp=args["timestamp"], expiration=args["expiration"],
        headers_to_sign=["host", "content-type", "x-bce-date"], ak=args["ak"], sk=args["sk"],
    )
    return {**BASE_HEADERS, "Authorization": authorization}


def test_untampered_request_accepted():
    assert check("POST", CHAT_PATH, BASE_QUERY, signed_request()) is APP


@pytest.mark.parametrize("change", ["method", "path", "query-value", "query-added", "header-value", "access-key", "secret-key"])
def test_tampered_request_refused(change):
    method, path, query, headers = "POST", CHAT_PATH, BASE_QUERY, signed_request()
    if change == "method":
        method = "PUT"
    elif change == "path":
        path = CHAT_PATH + "x"
    elif change == "query-value":
        query = [("a", "2")]
    elif change == "query-added":
        query = BASE_QUERY + [("b", "1")]
    elif change == "header-value":
        headers = {**headers, "Content-Type": "text/plain"}
    elif change == "access-key":  # a known AK, but the signature was made for another
        headers = {**headers, "Authorization": headers["Authorization"].replace(AK, "c" * 32)}
        return refused(method, path, query, headers, find=lambda ak: (APP, SK))
    elif change == "secret-key":
        headers = signed_request(sk="c" * 32)
    refused(method, path, query, headers)


def test_unknown_access_key_refused():
    refused("POST", CHAT_PATH, BASE_QUERY, signed_request(ak="d" * 32))


@pytest.mark.parametrize("age,accepted", [
    (300 + 300, True),  # issued at the edge of expiration + allowed skew
    (300 + 301, False),  # expired
    (-300, True),  # within the allowed skew into the future
    (-301, False),  # dated in the future
])
def test_signature_lifetime(age, accepted):
    headers = signed_request(timestamp=NOW - age)
    if accepted:
        assert check("POST", CHAT_PATH, BASE_QUERY, headers) is APP
    else:
        refused("POST", CHAT_PATH, BASE_QUERY, headers)


def test_expiration_above_maximum_refused():
    headers = signed_request(expiration=3601)
    refused("POST", CHAT_PATH, BASE_QUERY, headers)
    assert check("POST", CHAT_PATH, BASE_QUERY, headers, max_expiration=7200) is APP


@pytest.mark.parametrize("authorization", [
    None,
    "",
    "Bearer abc",
    f"bce-auth-v1/{AK}/{format_timestamp(NOW)}/300/host",
    f"bce-auth-v1/{AK}/{format_timestamp(NOW)}/300/host/{'0' * 64}/extra",
    f"bce-auth-v1/{AK}/2026-13-45T99:00:00Z/300/host/{'0' * 64}",
    f"bce-auth-v1/{AK}/{format_timestamp(NOW)}/-300/host/{'0' * 64}",
    f"bce-auth-v1/{AK}/{format_timestamp(NOW)}/300/host/not-hex",
    f"bce-auth-v1//{format_timestamp(NOW)}/300/host/{'0' * 64}",
    f"bce-auth-v1/{AK}/{format_timestamp(NOW)}/300/host/{'0' * 64}",  # well formed, wrong signature
])
def test_malformed_or_missing_authorization_refused(authorization):
    headers = dict(BASE_HEADERS)
    if authorization is not None:
        headers["Authorization"] = authorization
    refused("POST", CHAT_PATH, BASE_QUERY, headers)


def test_parse_authorization():
    auth = parse_authorization(f"bce-auth-v1/{AK}/2015-04-27T08:23:49Z/1800/X-Bce-Date; Host/{'A' * 64}")
    assert auth.signed_headers == ("x-bce-date", "host")
    assert auth.signature == "a" * 64
    assert auth.prefix == f"bce-auth-v1/{AK}/2015-04-27T08:23:49Z/1800"
    assert auth.epoch == VECTOR_NOW


@pytest.mark.parametrize("as_received", ["bytes", "latin-1 str", "utf-8 str"])
def test_raw_non_ascii_path_in_any_caller_convention(as_received):
    """A client may put raw UTF-8 in the request line; the server may hand us bytes or either str reading."""
    path = "/中文/路径"
    raw = path.encode("utf-8")
    raw_path = {"bytes": raw, "latin-1 str": raw.decode("latin-1"), "utf-8 str": path}[as_received]
    for signed in (path, quote(path, safe="/")):
        authorization = sdk_sign("POST", signed, [], {"Host": "h"}, headers_to_sign=["host"])
        assert check("POST", raw_path, [], {"Host": "h", "Authorization": authorization}) is APP


# --- what no reading may omit (issue 16) ----------------------------------------------------------------


def test_signed_list_without_host_refused():
    headers = {"Host": "example.com", "x-bce-date": format_timestamp(NOW)}
    for authorization in (
        sign(AK, SK, "POST", CHAT_PATH, [], headers, timestamp=NOW, signed_headers=["x-bce-date"]),
        sdk_sign("POST", CHAT_PATH, [], headers, headers_to_sign=["x-bce-date"]),
    ):
        refused("POST", CHAT_PATH, [], {**headers, "Authorization": authorization})


def test_default_list_needs_a_host_header():
    headers = {"x-bce-date": format_timestamp(NOW)}
    authorization = sign(AK, SK, "POST", CHAT_PATH, [], headers, timestamp=NOW)
    refused("POST", CHAT_PATH, [], {**headers, "Authorization": authorization})


def test_listed_header_the_request_lacks_refused():
    headers = {"Host": "example.com", "x-bce-date": format_timestamp(NOW)}
    # Signed over what is present (absent headers drop out of the canonical form), yet it lists more.
    authorization = sign(AK, SK, "POST", CHAT_PATH, [], headers, timestamp=NOW,
                         signed_headers=["host", "x-bce-date", "content-md5"])
    refused("POST", CHAT_PATH, [], {**headers, "Authorization": authorization})


BODY = b'{"messages": [{"role": "user", "content": "hi"}]}'
MD5 = base64.b64encode(hashlib.md5(BODY).digest()).decode()
SHA256 = hashlib.sha256(BODY).hexdigest()


@pytest.mark.parametrize("header,digest,listed", [
    ("Content-MD5", MD5, ["host", "content-md5"]),
    ("Content-MD5", MD5, []),  # the default set includes content-md5
    ("x-bce-content-sha256", SHA256, ["host", "x-bce-content-sha256"]),
    ("x-bce-content-sha256", SHA256, ["host"]),  # x-bce-* folded in unlisted (the reference signer)
])
def test_signed_body_digest_must_match_the_body(header, digest, listed):
    headers = {"Host": "example.com", header: digest}
    headers["Authorization"] = sdk_sign("POST", CHAT_PATH, [], headers, headers_to_sign=listed or None)
    assert check("POST", CHAT_PATH, [], headers, body=BODY) is APP
    refused("POST", CHAT_PATH, [], headers, body=BODY + b" ")
    refused("POST", CHAT_PATH, [], headers, body=b"")


def test_unsigned_content_md5_is_not_compared():
    headers = {"Host": "example.com", "Content-MD5": "bm90IHRoZSBib2R5"}
    authorization = sign(AK, SK, "POST", CHAT_PATH, [], headers, timestamp=NOW, signed_headers=["host"])
    assert check("POST", CHAT_PATH, [], {**headers, "Authorization": authorization}, body=BODY) is APP


def test_carries_body_digest():
    assert carries_body_digest(Headers(raw=[(b"content-md5", b"x")]))
    assert carries_body_digest(Headers(raw=[(b"x-bce-content-sha256", b"x")]))
    assert not carries_body_digest(Headers(raw=[(b"host", b"x")]))


def test_replay_window_covers_the_whole_validity():
    auth = parse_authorization(signed_request()["Authorization"])
    assert replay_window(auth, NOW, max_skew=300) == 300 + 300 + 1
    assert replay_window(auth, NOW + 10_000, max_skew=300) == 1
