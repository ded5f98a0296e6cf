"""TLS credentials from PEM files, reloaded when the files change.

Server side (inbound, mTLS): :class:`ServerTlsFiles` builds
``grpc.dynamic_ssl_server_credentials`` whose fetcher gRPC calls at the start of every TLS
handshake. The fetcher ``stat``s the three files (cheap: no read) and only when a signature
(device, inode, mtime, size) changed re-reads them; if the bytes differ it hands gRPC a new
certificate configuration. Established connections keep their session; new handshakes use the
new certificate and client CA. ``os.stat`` follows symlinks, so the Kubernetes secret rotation
(an atomic swap of the ``..data`` symlink) is seen at once. A writer that replaces the cert and
the key non-atomically can make a few handshakes fail in between; the next handshake after both
are written picks up the consistent pair. Read errors keep the previous configuration (logged).

Client side (upstream clusters): :class:`ClientTlsFiles` gives ``grpc.ssl_channel_credentials``
(CA, optional client cert+key) plus channel options (``grpc.ssl_target_name_override`` for the
expected server name). Channel credentials are immutable inside grpcio, so reload means building
new channels: the owner polls :meth:`ClientTlsFiles.reload_if_changed` (the sidecar does on its
file-watch tick) and rebuilds the cluster's channels with the fresh credentials; calls in
flight on the old channels finish there. Existing connections are not interrupted.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc

from sidecar.files import file_signature

__all__ = ["ClientTlsFiles", "ServerTlsFiles"]

_LOG = logging.getLogger(__name__)

def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class _WatchedFiles:
    """A set of files read together, re-read only when a stat signature changes."""

    def __init__(self, paths: tuple[str, ...]) -> None:
        self._paths = paths
        self._lock = threading.Lock()
        self.signatures = tuple(file_signature(p) for p in paths)
        self.contents = tuple(_read(p) for p in paths)

    def poll(self) -> bool:
        """Re-read if any file changed on disk; True when the contents differ from before."""
        with self._lock:
            signatures = tuple(file_signature(p) for p in self._paths)
            if signatures == self.signatures:
                return False
            contents = tuple(_read(p) for p in self._paths)
            self.signatures = signatures
            if contents == self.contents:
                return False
            self.contents = contents
            return True


class ServerTlsFiles:
    """Server credentials from ``cert``/``key`` (PEM) and ``client_ca`` with hot reload.

    ``credentials()`` returns server credentials to pass to ``server.add_secure_port``. With
    ``require_client_auth`` (the default) a client must present a certificate chaining to
    ``client_ca``; gRPC (BoringSSL) also rejects expired certificates.
    """

    def __init__(
        self, cert: str, key: str, client_ca: str | None, *, require_client_auth: bool = True
    ) -> None:
        """Read the files now; raises ``OSError`` if one cannot be read.

        ``client_ca`` may be ``None`` only without ``require_client_auth`` (plain server TLS).
        """
        if client_ca is None and require_client_auth:
            raise ValueError("tls: client_ca is required to verify client certificates")
        self._files = _WatchedFiles((cert, key) if client_ca is None else (cert, key, client_ca))
        self._require_client_auth = require_client_auth
        self.reloads = 0

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        cert, key, *ca = self._files.contents
        return grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=ca[0] if ca else None
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The fetcher gRPC calls per handshake: a new configuration, or ``None`` (unchanged)."""
        try:
            if not self._files.poll():
                return None
            config = self._configuration()
        except Exception as exc:  # never break handshakes: keep serving the previous config
            _LOG.warning("TLS files unreadable, keeping the previous certificate: %s", exc)
            return None
        self.reloads += 1
        _LOG.info("TLS certificate reloaded (%d)", self.reloads)
        return config

    def credentials(self) -> grpc.ServerCredentials:
        """Dynamic server credentials reading the current files at each new handshake."""
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            self.fetch,
            require_client_authentication=self._require_client_auth,
        )


class ClientTlsFiles:
    """Upstream (client) TLS: CA bundle, optional client cert+key, optional server name.

    ``server_name`` overrides the name checked against the server certificate (the
    ``grpc.ssl_target_name_override`` channel option, also used as the ``:authority``), useful
    when dialing IPs from a resolver.
    """

    def __init__(
        self,
        ca: str | None,
        cert: str | None = None,
        key: str | None = None,
        *,
        server_name: str | None = None,
    ) -> None:
        """Read the files now (``OSError``); ``cert`` and ``key`` go together (``ValueError``).

        ``ca`` ``None`` verifies servers against the system's root certificates.
        """
        if (cert is None) != (key is None):
            raise ValueError("tls: cert and key must be given together")
        self._has_ca = ca is not None
        paths: tuple[str, ...] = () if ca is None else (ca,)
        if cert is not None and key is not None:
            paths += (cert, key)
        self._files = _WatchedFiles(paths)
        self._server_name = server_name
        self._credentials = self._build()

    def _build(self) -> grpc.ChannelCredentials:
        contents = self._files.contents
        ca = contents[0] if self._has_ca else None
        pair = contents[1:] if self._has_ca else contents
        if pair:
            return grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=pair[1], certificate_chain=pair[0]
            )
        return grpc.ssl_channel_credentials(root_certificates=ca)

    def credentials(self) -> grpc.ChannelCredentials:
        """The credentials built from the files as last read."""
        return self._credentials

    def channel_options(self) -> list[tuple[str, Any]]:
        """Channel options to add to the upstream channel (the server-name override)."""
        if self._server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self._server_name)]

    def reload_if_changed(self) -> bool:
        """Re-read the files if they changed; True when new credentials were built."""
        if not self._files.poll():
            return False
        self._credentials = self._build()
        return True
