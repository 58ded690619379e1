"""App settings, read once from the environment (Functions app settings or ``local.settings.json`` Values).

Every setting is listed in ``local.settings.sample.json``. A missing or malformed setting raises ``ConfigError``
whose message names the setting and what to put in it; secrets (connection strings) never appear in a repr.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from .iotcentral import ApiTokenCredential
from .storage import StorageSettings

STORAGE_CONNECTION = "DEVICE_STORAGE"  # the storage account of uploads, reports, backups and the ledger
# Timer schedules (six-field NCRONTAB) and their defaults. The host disables a timer whose %SETTING% does not resolve,
# so the app names the setting only when it is set and the default otherwise.
BACKUP_SCHEDULE = ("BACKUP_SCHEDULE", "0 0 2 * * *")
MONITOR_SCHEDULE = ("MONITOR_SCHEDULE", "*/30 * * * * *")
TRIGGER_SOURCES = ("EventGrid", "LogsAndContainerScan")


def schedule(setting: tuple[str, str], env: Mapping[str, str]) -> str:
    """A timer's schedule binding: ``%NAME%`` when the app setting exists, else its default."""
    name, default = setting
    return f"%{name}%" if env.get(name, "").strip() else default


def instance_id(env: Mapping[str, str]) -> str | None:
    """Which deployment answers (``GET /api/health``), so a client can tell two stacks apart:
    ``IOTJOBS_INSTANCE_ID`` (the local stack sets one per state folder), else the app's name, which App Service sets
    as ``WEBSITE_SITE_NAME`` (learn.microsoft.com/azure/app-service/reference-app-settings); None without either."""
    return env.get("IOTJOBS_INSTANCE_ID", "").strip() or env.get("WEBSITE_SITE_NAME", "").strip() or None


def uploads_trigger_source(env: Mapping[str, str]) -> str:
    """The blob trigger's source (read when the app is indexed): ``EventGrid``, the only one the Flex Consumption
    plan runs, or ``LogsAndContainerScan``, the polling source of the other plans (the default).

    Raises:
        ConfigError: any other value.
    """
    value = env.get("UPLOADS_TRIGGER_SOURCE", "").strip() or "LogsAndContainerScan"
    if value not in TRIGGER_SOURCES:
        raise ConfigError(f"UPLOADS_TRIGGER_SOURCE is '{value}': use EventGrid or LogsAndContainerScan")
    return value


_HUB_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,48}[a-z0-9]$")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


class StorageAuth(StrEnum):
    KEY_BASED = "keyBased"  # the hub gets container SAS URLs
    IDENTITY_BASED = "identityBased"  # the hub's managed identity reads/writes the containers


@dataclass(frozen=True, slots=True)
class HubSettings:
    name: str
    connection_string: str | None = field(default=None, repr=False)
    host_name: str | None = None
    # IOTHUB_<HUB>_REQUIRE_PLAN: a risky import (any delete line, or more update lines than ``plan_max_updates``)
    # waits ``awaiting_approval`` with a plan to read, until POST /api/jobs/<hub>/<job>/approve
    require_plan: bool = False
    plan_max_updates: int = 1000


class Snapshots(StrEnum):
    """Which imports get a snapshot of the devices they touch first (what a rollback puts back)."""

    EXPLICIT = "explicit"  # files with a line in any mode other than createOrUpdate (create, update*, delete*, twin)
    ALWAYS = "always"  # every import (a full export of the hub before each one)
    OFF = "off"


@dataclass(frozen=True, slots=True)
class CentralSettings:
    """The IoT Central app whose data export is backed up and applied (optional: unset, the feature is off)."""

    app_url: str
    api_token: str | None = field(default=None, repr=False)  # None: the app's managed identity (Entra ID)
    backup: bool = True


@dataclass(frozen=True, slots=True)
class Containers:
    uploads: str = "uploads"
    reports: str = "reports"
    archive: str = "archive"
    backups: str = "backups"
    plans: str = "plans"  # files sent to POST /api/imports/plan (read by their plan job, never imported)
    snapshots: str = "snapshots"  # snapshots/<import job>/: the devices an import touched, keys included
    bulk: str = "bulk"  # bulk/<id>/devices.txt: import files generated from a query
    migrations: str = "migrations"  # migrations/<migration job>/: the source hub's export (keys when asked)


@dataclass(frozen=True, slots=True)
class Settings:
    storage: StorageSettings
    hubs: dict[str, HubSettings]  # in the order configured; the first is the default for uploads
    storage_auth: StorageAuth = StorageAuth.KEY_BASED
    sas_lifetime: timedelta = timedelta(hours=24)
    backup_retention_days: int = 30
    backup_include_keys: bool = False
    backup_include_configurations: bool = False  # backups hold the hub's configurations (configurations.txt)
    max_errors: int = 100
    submit_grace: timedelta = timedelta(minutes=2)
    retry_backoff: timedelta = timedelta(seconds=30)
    # how long a job waits for storage that refuses the hub or the app (a role assignment not yet in effect)
    storage_denied_for: timedelta = timedelta(minutes=30)
    ledger_table: str = "jobledger"
    orphan_after: timedelta = timedelta(hours=1)
    upload_sweep_after: timedelta = timedelta(minutes=10)  # an upload this old with no job gets one from the monitor
    containers: Containers = field(default_factory=Containers)
    central: CentralSettings | None = None
    import_snapshots: Snapshots = Snapshots.EXPLICIT
    # a preview may read the latest backup younger than this instead of exporting (zero: always a fresh export)
    plan_backup_max_age: timedelta = timedelta(0)

    @property
    def default_hub(self) -> str:
        return next(iter(self.hubs))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        names = [n.strip() for n in env.get("IOTHUB_HUBS", "").split(",") if n.strip()]
        if not names:
            raise ConfigError("IOTHUB_HUBS is empty: list the hub names, e.g. IOTHUB_HUBS=prodhub,testhub")
        hubs: dict[str, HubSettings] = {}
        for name in names:
            if not _HUB_NAME.match(name):
                raise ConfigError(f"IOTHUB_HUBS: '{name}' is not a hub name (3-50 lowercase letters, digits, '-')")
            if name == "central":
                raise ConfigError("IOTHUB_HUBS: 'central' is reserved for IoT Central (uploads/central/...); rename it")
            var = name.upper().replace("-", "_")
            conn = env.get(f"IOTHUB_{var}_CONNECTION_STRING") or None
            host = env.get(f"IOTHUB_{var}_HOSTNAME") or None
            if not conn and not host:
                raise ConfigError(
                    f"hub '{name}' has no connection: set IOTHUB_{var}_CONNECTION_STRING, or IOTHUB_{var}_HOSTNAME "
                    "to use the app's managed identity"
                )
            hubs[name] = HubSettings(
                name,
                conn,
                host,
                require_plan=_flag(env, f"IOTHUB_{var}_REQUIRE_PLAN"),
                plan_max_updates=int(_number(env, f"IOTHUB_{var}_PLAN_MAX_UPDATES", 1000, low=0, high=10**7)),
            )
        auth = env.get("IOTHUB_STORAGE_AUTH", StorageAuth.KEY_BASED.value)
        try:
            storage_auth = StorageAuth(auth)
        except ValueError:
            raise ConfigError(f"IOTHUB_STORAGE_AUTH is '{auth}': use keyBased or identityBased") from None
        return cls(
            storage=StorageSettings.from_env(env, STORAGE_CONNECTION),
            hubs=hubs,
            storage_auth=storage_auth,
            sas_lifetime=timedelta(hours=_number(env, "SAS_LIFETIME_HOURS", 24, low=1, high=24 * 7)),
            backup_retention_days=int(_number(env, "BACKUP_RETENTION_DAYS", 30, low=1, high=3650)),
            backup_include_keys=_flag(env, "BACKUP_INCLUDE_KEYS"),
            backup_include_configurations=_flag(env, "BACKUP_INCLUDE_CONFIGURATIONS"),
            max_errors=int(_number(env, "MAX_ERRORS_SHOWN", 100, low=1, high=10_000)),
            submit_grace=timedelta(seconds=_number(env, "SUBMIT_GRACE_SECONDS", 120, low=0, high=3600)),
            retry_backoff=timedelta(seconds=_number(env, "RETRY_BACKOFF_SECONDS", 30, low=0.1, high=3600)),
            storage_denied_for=timedelta(minutes=_number(env, "STORAGE_DENIED_RETRY_MINUTES", 30, low=0, high=24 * 60)),
            ledger_table=env.get("LEDGER_TABLE", "jobledger"),
            orphan_after=timedelta(minutes=_number(env, "ORPHAN_CONTAINER_MINUTES", 60, low=0.01, high=7 * 24 * 60)),
            upload_sweep_after=timedelta(minutes=_number(env, "UPLOAD_SWEEP_MINUTES", 10, low=0.01, high=7 * 24 * 60)),
            central=_central(env),
            import_snapshots=_snapshots(env),
            plan_backup_max_age=timedelta(
                minutes=_number(env, "PLAN_BACKUP_MAX_AGE_MINUTES", 0, low=0, high=7 * 24 * 60)
            ),
        )


def _snapshots(env: Mapping[str, str]) -> Snapshots:
    raw = env.get("IMPORT_SNAPSHOTS", "").strip() or Snapshots.EXPLICIT.value
    try:
        return Snapshots(raw)
    except ValueError:
        raise ConfigError(f"IMPORT_SNAPSHOTS is '{raw}': use explicit, always or off") from None


def _central(env: Mapping[str, str]) -> CentralSettings | None:
    url = env.get("IOTCENTRAL_APP_URL", "").strip()
    if not url:
        return None
    if not re.match(r"^https://[^/\s]+/?$", url):
        raise ConfigError(f"IOTCENTRAL_APP_URL is '{url}': give the app's URL, e.g. https://myapp.azureiotcentral.com")
    token = env.get("IOTCENTRAL_API_TOKEN", "").strip() or None
    if token is not None:
        try:
            credential = ApiTokenCredential(token)
        except ValueError as exc:
            raise ConfigError(f"IOTCENTRAL_API_TOKEN: {exc}") from None
        if credential.expired:
            raise ConfigError("IOTCENTRAL_API_TOKEN has expired: create a new API token and update the setting")
    return CentralSettings(url.rstrip("/"), token, _flag(env, "IOTCENTRAL_BACKUP", default=True))


def _number(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} is '{raw}': give a number from {low:g} to {high:g}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} is {value:g}: give a number from {low:g} to {high:g}")
    return value


def _flag(env: Mapping[str, str], name: str, *, default: bool = False) -> bool:
    raw = env.get(name, str(default)).strip().lower()
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no", ""):
        return False
    raise ConfigError(f"{name} is '{raw}': use true or false")
