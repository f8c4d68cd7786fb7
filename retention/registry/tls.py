"""TLS with the registry: one ``ssl.SSLContext`` from the policy, and what a failure means.

Built when the client starts, so a missing CA or key file fails the pass at once with the
key that names it; a TLS failure during a request becomes one line that says which
setting would help (``registry.ca_cert``, ``registry.client_cert``), not OpenSSL's words.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import structlog

from retention.core.policy import RegistrySettings
from retention.errors import ConfigError
from retention.registry.auth import public_url

# retention.logs sits above this package in .importlinter's layers; structlog is the same.
log = structlog.get_logger(__name__)

# TLS alerts a server sends about the client's certificate: missing (TLS 1.3 says
# "certificate required", Go's server says "bad certificate") or from an untrusted CA.
_CLIENT_CERTIFICATE_ALERTS = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    }
)


def tls_context(settings: RegistrySettings) -> ssl.SSLContext | bool:
    """httpx's default unless a TLS key is set; then one context for registry and realm.

    An in-house ``ca_cert`` is trusted in addition to the public CAs httpx trusts by default,
    because the token service may well have a public certificate. ``verify=<path>`` and
    ``cert=`` are deprecated in httpx 0.28: everything goes through the context.
    """
    if settings.ca_cert is None and not settings.insecure and settings.client_cert is None:
        return True
    if settings.insecure:
        log.warning(
            "tls verification disabled",
            registry=public_url(httpx.URL(settings.base_url)),
            setting="registry.insecure",
        )
    # httpx's own default (certifi, or SSL_CERT_FILE/SSL_CERT_DIR), to which we add.
    context = httpx.create_ssl_context(verify=not settings.insecure)
    if settings.ca_cert is not None:
        _readable("registry.ca_cert", settings.ca_cert)
        with _unusable("registry.ca_cert", settings.ca_cert):
            context.load_verify_locations(cafile=settings.ca_cert)
    if settings.client_cert is not None:
        _load_client_certificate(context, settings.client_cert, settings.client_key)
    return context


@functools.cache
def public_trust() -> ssl.SSLContext:
    """certifi's public CAs in one context per process, what the transport builds for
    ``verify=True`` when it ignores the environment (``trust_env=False``).

    Reading the bundle costs 30 to 50 ms of CPU, once per client without the cache: once
    per pass in the daemon, once per command, and hundreds of times in the tests. A context
    is safe to share between clients and connections; nothing changes it after this.
    """
    return httpx.create_ssl_context(verify=True, trust_env=False)


def _load_client_certificate(context: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    """The client certificate (and its key, unless both are in one PEM file) for mTLS.

    The password callback answers any passphrase prompt with nothing, so an encrypted key
    fails here instead of OpenSSL asking on the terminal of an unattended pass.
    """
    _readable("registry.client_cert", cert)
    if key is not None:
        _readable("registry.client_key", key)
    with _unusable("registry.client_cert", cert, key):
        context.load_cert_chain(cert, key, password=lambda: "")


def _readable(key: str, path: Path) -> None:
    """Fail with the key and file named; ssl reports a missing file without its name."""
    try:
        path.open("rb").close()
    except OSError as exc:
        raise ConfigError([f"{key}: cannot read {path}: {exc.strerror or exc}"]) from exc


@contextmanager
def _unusable(key: str, *paths: Path | None) -> Iterator[None]:
    """A file that is there but is not a PEM certificate or key, or a key of another cert."""
    try:
        yield
    except ssl.SSLError as exc:
        files = " and ".join(str(path) for path in paths if path is not None)
        reason = exc.reason or str(exc)
        raise ConfigError([f"{key}: cannot use {files}: {reason}"]) from exc


def tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The ssl error under the transport's wrappers, if TLS is what failed.

    The innermost one: aiohttp's own certificate errors subclass ``ssl.SSLError`` without
    its fields (``reason``, ``verify_message``) and carry the real one as their cause.
    """
    found: ssl.SSLError | None = None
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            found = seen
        seen = seen.__cause__ or seen.__context__
    return found


def tls_message(error: ssl.SSLError) -> str:
    """One line that says which setting would help, instead of OpenSSL's words alone."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"the registry's TLS certificate is not trusted ({error.verify_message}); set "
            "registry.ca_cert to the CA that signed it, or registry.insecure: true to skip checks"
        )
    reason = error.reason or str(error)
    if reason.upper() in _CLIENT_CERTIFICATE_ALERTS:
        return (
            f"the registry refused the TLS connection ({reason}): it wants a client "
            "certificate its http.tls.clientcas trust; set registry.client_cert and "
            "registry.client_key"
        )
    return f"TLS with the registry failed: {reason}"
