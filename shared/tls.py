"""MQTT over TLS, one rule for central and the edge: the broker's certificate and host name are always
verified, a client certificate is presented when configured, and TLS settings beside a plain mqtt:// URL are
refused (an operator who set a CA meant TLS: never a silent downgrade)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path


def check_settings(
    tls: bool, url_field: str, files: Mapping[str, str | Path | None], cert: str, key: str
) -> None:
    """Raises ValueError naming the field: a TLS file with a plain URL (`files` by field name), or the key
    file `key` without the certificate file `cert`."""
    if not tls:
        for name, value in files.items():
            if value is not None:
                raise ValueError(
                    f"{name}: TLS settings need an mqtts:// {url_field} (the {url_field} is plain mqtt://)"
                )
    if files[key] is not None and files[cert] is None:
        raise ValueError(f"{key}: needs {cert} (the client certificate)")


def client_context(ca: str | Path | None, cert: str | Path | None, key: str | Path | None) -> ssl.SSLContext:
    """Verification and host-name checks always on: a certificate problem is an error, not plain text."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx
