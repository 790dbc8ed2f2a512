"""Configuration of every relive process, read from ``RELIVE_*`` variables in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from relive.client.channel import DEFAULT_DATA_DIR, Access, default_data_dir


def _bool(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "on", "yes"}


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


@dataclass(frozen=True)
class Config:
    """Everything a service or the CLI needs to know about its surroundings."""

    data_dir: Path = Path(DEFAULT_DATA_DIR)
    # None means: start the embedded nx-27017 store under data_dir.
    mongodb_uri: str | None = None
    # Prefix of the per-service databases: "<prefix>_registry", "<prefix>_recorder", ...
    db_prefix: str = "relive"
    host: str = "127.0.0.1"
    port: int = 0
    # Where the other services are, as host:port.
    registry_endpoint: str | None = None
    recorder_endpoint: str | None = None
    executor_endpoint: str | None = None
    ray_address: str | None = None
    auth: bool = False
    auth_tokens_file: Path | None = None
    # The token (a ``role: service`` entry of the tokens file) a service sends when it calls
    # another on its own behalf.
    service_token: str | None = field(default=None, repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # The CA a service trusts when it calls another over TLS.
    tls_ca: Path | None = None
    # Directories searched for component code, in order.
    code_path: tuple[str, ...] = field(default_factory=lambda: (os.getcwd(),))
    # Bounds on input.
    max_event_bytes: int = 256 * 1024
    max_batch_events: int = 10_000
    max_page_size: int = 1000
    # The largest code snapshot archive the registry stores.
    max_code_snapshot_bytes: int = 256 * 1024 * 1024
    # The largest recorded input (a live batch, a call's result, a dataset snapshot).
    max_input_bytes: int = 64 * 1024 * 1024
    # Seconds between periodic retention sweeps.
    retention_interval_s: float = 3600.0
    grace_s: float = 5.0
    max_workers: int = 64

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Reads ``RELIVE_*`` variables; keyword arguments win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {"data_dir": default_data_dir(env)}
        if v := env.get("RELIVE_MONGODB_URI"):
            values["mongodb_uri"] = v
        if v := env.get("RELIVE_DB_PREFIX"):
            values["db_prefix"] = v
        if v := env.get("RELIVE_HOST"):
            values["host"] = v
        if v := env.get("RELIVE_PORT"):
            values["port"] = int(v)
        for service in ("registry", "recorder", "executor"):
            if v := env.get(f"RELIVE_{service.upper()}_ENDPOINT"):
                values[f"{service}_endpoint"] = v
        if v := env.get("RELIVE_RAY_ADDRESS"):
            values["ray_address"] = v
        values["auth"] = _bool(env.get("RELIVE_AUTH"))
        values["auth_tokens_file"] = _path(env.get("RELIVE_AUTH_TOKENS_FILE"))
        values["service_token"] = env.get("RELIVE_SERVICE_TOKEN") or None
        values["tls_cert"] = _path(env.get("RELIVE_TLS_CERT"))
        values["tls_key"] = _path(env.get("RELIVE_TLS_KEY"))
        values["tls_client_ca"] = _path(env.get("RELIVE_TLS_CLIENT_CA"))
        values["tls_ca"] = _path(env.get("RELIVE_TLS_CA"))
        if v := env.get("RELIVE_CODE_PATH"):
            values["code_path"] = tuple(p for p in v.split(os.pathsep) if p)
        if v := env.get("RELIVE_MAX_EVENT_BYTES"):
            values["max_event_bytes"] = int(v)
        if v := env.get("RELIVE_MAX_BATCH_EVENTS"):
            values["max_batch_events"] = int(v)
        if v := env.get("RELIVE_MAX_CODE_SNAPSHOT_BYTES"):
            values["max_code_snapshot_bytes"] = int(v)
        if v := env.get("RELIVE_MAX_INPUT_BYTES"):
            values["max_input_bytes"] = int(v)
        if v := env.get("RELIVE_RETENTION_INTERVAL_S"):
            values["retention_interval_s"] = float(v)
        values.update(overrides)
        return cls(**values)

    @property
    def trusted_ca(self) -> Path | None:
        """The CA for calls to the services: ``tls_ca``, else (with TLS on) the server's own
        certificate, which is its own CA when it is self-signed."""
        return self.tls_ca or (self.tls_cert if self.tls_cert and self.tls_key else None)

    def service_access(self, project: str = "") -> Access:
        """How this service calls another: with the service token, trusting ``trusted_ca``,
        for ``project`` when it works on that project's behalf."""
        ca = self.trusted_ca
        return Access(token=self.service_token or "", project=project, tls_ca=str(ca or ""))

    def with_(self, **changes: Any) -> Config:
        return replace(self, **changes)

    def database(self, service: str) -> str:
        """Each service has a database of its own (the embedded store serialises per database)."""
        return f"{self.db_prefix}_{service}"
