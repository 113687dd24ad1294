"""Which certificates the transport trusts, chosen once at start, and what to say when
a certificate does not verify.

The order, first match wins:

1. an explicit ``ca_bundle`` (a PEM file, or a directory of certificates);
2. ``REQUESTS_CA_BUNDLE``, then ``SSL_CERT_FILE`` (read once, when the handler
   is made, like the proxy variables);
3. the operating system's trust store, through ``truststore`` (Python 3.10 and
   later): the Windows certificate store, the macOS keychain, the system bundle
   on Linux. This is where administrators install a company's TLS-inspecting CA;
4. certifi's bundle (what ``requests`` uses by default).

Verification is never off. ``~/.netrc`` is never read (the transport keeps
``trust_env`` off and reads only the variables above).
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

#: Environment variables naming a CA bundle, in the order they are honoured.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")

FIX = ("if this network inspects TLS (a company proxy), or the API uses a private CA, "
       "set ca_bundle: /path/to/ca.pem on the handler (--ca-bundle on the command line) or "
       "REQUESTS_CA_BUNDLE, or install that CA in the operating system's trust store")


class TrustError(Exception):
    """A CA bundle was named that cannot be used."""


@dataclass(frozen=True)
class Trust:
    """The certificates a transport verifies servers against.

    Attributes:
        description: what is trusted, for ``stats()`` and ``massugc-logging check``.
        verify: ``requests``' ``verify``: True, or the path of a bundle or directory.
        ssl_context: the system trust store's context, when that is what is trusted.
    """

    description: str
    verify: Union[bool, str]
    ssl_context: Optional[ssl.SSLContext] = None


def resolve_trust(ca_bundle: Optional[Union[str, os.PathLike[str]]] = None,
                  environ: Optional[Mapping[str, str]] = None) -> Trust:
    """The trust to use, by the order in the module docstring.

    Raises:
        TrustError: ``ca_bundle`` (or a variable) names a path that does not exist.
    """
    env = os.environ if environ is None else environ
    if ca_bundle is not None and str(ca_bundle).strip():
        return Trust(f"ca_bundle {_existing(Path(ca_bundle), 'ca_bundle')}",
                     str(Path(ca_bundle).expanduser()))
    for variable in CA_BUNDLE_VARIABLES:
        value = env.get(variable, "").strip()
        if value:
            return Trust(f"{variable} {_existing(Path(value), variable)}",
                         str(Path(value).expanduser()))
    context = system_trust_context()
    if context is not None:
        return Trust("system trust store", True, context)
    return Trust("certifi bundle (no system trust store on this Python: it needs 3.10 or "
                 "later)", True)


def _existing(path: Path, name: str) -> Path:
    full = path.expanduser()
    if not full.exists():
        raise TrustError(f"{name} names {full}, which does not exist; name a PEM file or a "
                         "directory of certificates")
    return full


def system_trust_context() -> Optional[ssl.SSLContext]:
    """A client context verifying against the operating system's trust store, if available."""
    if sys.version_info < (3, 10):
        return None
    try:
        import truststore  # noqa: PLC0415 - optional on old Pythons, loaded once per transport
    except ImportError:
        return None
    context: ssl.SSLContext = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return context


def is_certificate_failure(text: str) -> bool:
    """True when an SSL error's text says the server's certificate did not verify."""
    lowered = text.lower()
    return ("certificate verify failed" in lowered or "certificate_verify_failed" in lowered
            or "hostname mismatch" in lowered or "doesn't match" in lowered
            or "not valid for" in lowered)


def certificate_reason(text: str) -> str:
    """Why a certificate did not verify, in words (from the SSL error's text)."""
    lowered = text.lower()
    if "expired" in lowered:
        return "the certificate has expired"
    if "not yet valid" in lowered:
        return "the certificate is not valid yet (check this machine's clock)"
    if "hostname mismatch" in lowered or "doesn't match" in lowered or \
            "not valid for" in lowered or "ip address mismatch" in lowered:
        return "the certificate is for another host name"
    if "self-signed" in lowered or "self signed" in lowered:
        return "the certificate is self-signed and not trusted here"
    if "unable to get local issuer" in lowered or "unknown ca" in lowered or \
            "unable to get issuer" in lowered:
        return "the certificate is signed by a CA this machine does not trust (unknown CA)"
    return "the certificate could not be verified"
