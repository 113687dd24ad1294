"""What a transport is configured with, checked without importing the HTTP stack.

The API URL, the headers, the timeout and the proxy are checked and resolved
here, with the standard library alone: a handler checks them on the thread
that makes it (``configure()``, the app's start-up), while the HTTP stack
(urllib3, TLS) is loaded on the pipeline's own thread, when the transport is
made. Error messages name what is wrong and never quote a URL, which may hold
a password or a key.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import re
from collections.abc import Mapping
from typing import Any, Optional, Union
from urllib.parse import unquote, urlsplit

from massugc_logging._version import __version__
from massugc_logging.contract import API_KEY_PATTERN, DEFAULT_ENDPOINT, LEGACY_ENDPOINT

Timeout = Union[float, tuple[float, float]]
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)
#: The usage-log paths the API is known to answer on; a 404 or 405 on one tries the other.
KNOWN_ENDPOINTS = (DEFAULT_ENDPOINT, LEGACY_ENDPOINT)


class TransportError(Exception):
    """A configuration the transport refuses to use."""


class InsecureURLError(TransportError):
    """A plain ``http://`` API URL for a host that is not loopback."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_api_url(api_url: str, *, allow_insecure_http: bool = False) -> str:
    """Validate the API base URL and return it without a trailing slash.

    Error messages name what is wrong (the scheme, a missing host, credentials or a
    query present) and never quote the URL: a mistyped one may carry a password or
    a key. A URL written without ``://`` (``127.0.0.1:8765``) is told the URL to
    write instead, naming its host and port only when nothing else is in them.

    Raises:
        TransportError: not an http(s) URL, or it carries credentials or a query.
        InsecureURLError: plain http to a non-loopback host without explicit consent.
    """
    text = api_url.strip()
    try:
        parts = urlsplit(text)
        hostname = parts.hostname
        has_credentials = bool(parts.username or parts.password or "@" in parts.netloc)
    except ValueError:
        raise TransportError("api_url is not a URL; use one such as "
                             "https://api.example.com") from None
    if parts.scheme not in ("http", "https"):
        if "://" not in text:
            # 'localhost:8765' parses as scheme 'localhost': it is a host without a scheme.
            written, loopback = None, False
            try:
                bare = urlsplit("//" + text)
                host, port = bare.hostname, bare.port
                if host and "@" not in bare.netloc and not API_KEY_PATTERN.search(text):
                    loopback = is_loopback(host)
                    shown = f"[{host}]" if ":" in host else host
                    written = shown + (f":{port}" if port is not None else "")
            except ValueError:
                pass
            if written is None:
                fix = ("https://<host> (or http://127.0.0.1:8765 for the local collector on "
                       "this machine)")
            else:
                fix = f"http://{written}" if loopback else f"https://{written}"
            raise TransportError(f"api_url has no scheme (no '://'); write it as {fix}")
        if not parts.scheme:
            raise TransportError("api_url has no scheme before '://'; start it with https:// "
                                 "(or http:// for loopback)")
        scheme = API_KEY_PATTERN.sub("[REDACTED]", parts.scheme[:20])
        raise TransportError(f"api_url must start with https:// (or http:// for loopback); "
                             f"its scheme is {scheme!r}")
    if not hostname:
        raise TransportError("api_url has no host name; use one such as "
                             "https://api.example.com (two slashes after the scheme)")
    if has_credentials or parts.query or parts.fragment:
        present = ", ".join(what for what, there in (
            ("user name or password", has_credentials), ("a query string", parts.query),
            ("a fragment", parts.fragment)) if there)
        raise TransportError(
            f"api_url must not carry {present}; give the bare base URL. The key travels "
            "only in the X-API-Key header"
        )
    if parts.scheme == "http" and not is_loopback(hostname) and not allow_insecure_http:
        raise InsecureURLError(
            f"refusing plain http:// to {hostname}: the API key would travel unencrypted. "
            "Use https://, or set allow_insecure_http: true if you really mean it"
        )
    return api_url.strip().rstrip("/")


#: Headers the transport owns: extra headers may never replace them.
RESERVED_HEADERS = frozenset({"x-api-key", "content-type", "idempotency-key", "content-length",
                              "host", "transfer-encoding"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def check_headers(headers: Optional[Mapping[str, Any]],
                  agent: Optional[str] = None) -> tuple[dict[str, str], Optional[str]]:
    """Validate the app's extra static headers and User-Agent; return them as strings.

    Error messages name the header, never its value (a device fingerprint is an
    identifier the app may not want in a log).

    Raises:
        TransportError: a name that is not a header name, a reserved one
            (``X-API-Key``, ``Content-Type``, ``Idempotency-Key``...), or a value with
            a line break or another control character.
    """
    checked: dict[str, str] = {}
    for raw_name, value in (headers or {}).items():
        name = str(raw_name).strip()
        if not _HEADER_NAME.match(name):
            raise TransportError(f"headers: {name[:40]!r} is not a valid header name")
        if name.lower() in RESERVED_HEADERS or name.lower() == "user-agent":
            hint = "; use user_agent" if name.lower() == "user-agent" else ""
            raise TransportError(f"headers: {name} is set by the handler itself and cannot "
                                 f"be replaced{hint}")
        checked[name] = _header_value(name, value)
    return checked, (None if agent is None else _header_value("user_agent", agent))


#: Where the app may put its device fingerprint instead of the configuration.
FINGERPRINT_VARIABLE = "MASSUGC_DEVICE_FINGERPRINT"


def app_headers(headers: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The headers given, plus ``X-Device-Fingerprint`` from the environment when set
    there and not given."""
    merged = dict(headers or {})
    fingerprint = os.environ.get(FINGERPRINT_VARIABLE, "").strip()
    if fingerprint and not any(k.lower() == "x-device-fingerprint" for k in merged):
        merged["X-Device-Fingerprint"] = fingerprint
    return merged


def _header_value(name: str, value: Any) -> str:
    text = str(value)
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in text):
        raise TransportError(f"headers: the value of {name} contains a line break or another "
                             "control character; it would let it forge other headers")
    return text.strip()


def default_user_agent() -> str:
    """``massugc-logging/<version> (<platform>)``."""
    system = f"{platform.system() or 'unknown'} {platform.release()}".strip()
    return f"massugc-logging/{__version__} ({system}; Python {platform.python_version()})"


def coerce_timeout(timeout: Any) -> tuple[float, float]:
    """A (connect, read) pair from a number or a pair; both must be positive."""
    if isinstance(timeout, (list, tuple)) and len(timeout) == 2:
        pair = (float(timeout[0]), float(timeout[1]))
    elif isinstance(timeout, (int, float, str)) and not isinstance(timeout, bool):
        pair = (float(timeout), float(timeout))
    else:
        raise ValueError(f"timeout must be seconds or [connect, read], got {timeout!r}")
    if not all(v > 0 for v in pair):
        raise ValueError(f"timeouts must be positive, got {timeout!r}")
    return pair





def environ_proxy(url: str) -> Optional[str]:
    """The proxy for ``url`` from ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and
    ``NO_PROXY`` (and, on Windows and macOS, the system's proxy settings), as requests
    reads them; None for a loopback host, whose traffic must never leave the machine."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or is_loopback(host):
        return None
    no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    if _listed(host, parts.port, no_proxy):
        return None
    import urllib.request  # noqa: PLC0415 - heavy; only on the thread that makes the transport

    try:
        if urllib.request.proxy_bypass(host):
            return None
        proxies = urllib.request.getproxies()
    except Exception:  # a broken system proxy setting: go direct
        return None
    return proxies.get(parts.scheme.lower()) or proxies.get("all")


def _listed(host: str, port: Optional[int], no_proxy: str) -> bool:
    """Whether ``host`` (``host:port``) is excluded by a ``NO_PROXY`` list."""
    for entry in (e.strip().lower() for e in no_proxy.replace(" ", ",").split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return True
            continue
        except ValueError:
            pass
        name, _, entry_port = entry.partition(":")
        if entry_port and port is not None and entry_port != str(port):
            continue
        name = name.lstrip(".")
        if host.lower() == name or host.lower().endswith("." + name):
            return True
    return False


def proxy_credentials(proxy: str) -> tuple[str, str]:
    """The user and password in a proxy URL, percent-decoded (empty when there are none)."""
    parts = urlsplit(proxy)
    return unquote(parts.username or ""), unquote(parts.password or "")


def destination_of(api_url: str, endpoint: str) -> str:
    """The address events are kept for: the API base URL and the endpoint, as one URL
    (``https://host/api/desktop/usage/log``), the scheme and host in lower case, without
    a default port or a trailing slash on the base, so that one API has one address."""
    base = api_url.strip().rstrip("/")
    try:
        parts = urlsplit(base)
        host, port = parts.hostname, parts.port
    except ValueError:
        host = None
    if host and parts.scheme and "@" not in parts.netloc:
        default = {"http": 80, "https": 443}.get(parts.scheme.lower())
        netloc = host if ":" not in host else f"[{host}]"
        if port is not None and port != default:
            netloc += f":{port}"
        base = f"{parts.scheme.lower()}://{netloc}{parts.path}"
    path = endpoint.strip()
    return base + (path if path.startswith("/") else "/" + path)
