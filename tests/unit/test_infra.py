"""The deployment (infra/, azure.yaml, .funcignore) checked offline and held to the code.

- every ``.bicep`` file parses with pycep-parser, the parser checkov itself uses;
- checkov passes over ``infra/`` with every skip justified inline, and runs without the network;
- every setting the app reads is set by the template or listed as optional in docs/deploy.md, and every setting
  the template sets has a reader; every ``%SETTING%`` and connection a binding names is set, identity-based;
- the app identity holds exactly the roles the code and the Functions host need (Microsoft's docs), no more;
- a publish ships the app and nothing else.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
CHECKOV = REPO / ".venv-iac" / "bin" / "checkov"

# Built-in role ids as Microsoft publishes them (learn.microsoft.com/azure/role-based-access-control/built-in-roles),
# kept here apart from the template so that a mistyped id in the template is caught.
BUILT_IN_ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1": "Storage Blob Data Reader",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "17d1049b-9a84-46fb-8f53-869881c3d3ab": "Storage Account Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "4fc6c259-987e-4a07-842e-c321cc9d413f": "IoT Hub Data Contributor",
}

# Settings the template sets that shared/config.py does not read, and who reads them instead.
READ_OUTSIDE_CONFIG = {
    "AzureWebJobsStorage__credential": "the Functions host (host storage with the identity)",
    "AzureWebJobsStorage__clientId": "the Functions host",
    "AzureWebJobsStorage__blobServiceUri": "the Functions host",
    "AzureWebJobsStorage__queueServiceUri": "the Functions host (blob trigger internals)",
    "AzureWebJobsStorage__tableServiceUri": "the Functions host (diagnostic events)",
    "DEVICE_STORAGE__credential": "the blob extension (selects the user-assigned identity with __clientId)",
    "AZURE_CLIENT_ID": "azure-identity's DefaultAzureCredential (IoT Hub, IoT Central)",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "the Functions host and worker (telemetry)",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "the Functions host and worker (Entra ID telemetry)",
    "UPLOADS_TRIGGER_SOURCE": "function_app.py when the app is indexed (EventGrid on Flex Consumption)",
    "BACKUP_SCHEDULE": "function_app.py when the app is indexed (the timer binding names it when it is set)",
    "MONITOR_SCHEDULE": "function_app.py when the app is indexed (the timer binding names it when it is set)",
}

# What the code needs, per Microsoft's docs (docs/deploy.md, "Roles"), as (account symbol, role name).
HOST_STORAGE_ROLES = {  # AzureWebJobsStorage with a blob trigger in the app
    "Storage Blob Data Owner",
    "Storage Queue Data Contributor",
    "Storage Account Contributor",
    "Storage Table Data Contributor",  # the host's diagnostic events table
}
TRIGGER_ROLES = {"Storage Blob Data Owner", "Storage Queue Data Contributor"}  # a blob trigger's own connection
LEDGER_ROLE = "Storage Table Data Contributor"
HUB_ROLE = "IoT Hub Data Contributor"  # jobs/* and statistics/read beside devices/*
HUB_STORAGE_ROLE = "Storage Blob Data Contributor"  # the hub's identity, identityBased jobs
TELEMETRY_ROLE = "Monitoring Metrics Publisher"

SAMPLE_HUBS = ["prodhub", "edge-hub-2"]
SAMPLE_CENTRAL = "https://contoso.azureiotcentral.com"


# ----------------------------------------------------------------------------------------------------------------
# Reading the templates


@functools.cache
def parsed(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = BicepParser().parse(file_path=path)
    return result


def resources_bicep() -> dict[str, Any]:
    return parsed(INFRA / "resources.bicep")


def render(expr: Any) -> str:
    """A pycep expression as Bicep-like text, enough to compare references (``identity.properties.clientId``)."""
    if isinstance(expr, str):
        return expr
    if isinstance(expr, dict) and "operator" in expr:
        op = expr["operator"]
        a, b = op["operands"].get("operand_1"), op["operands"].get("operand_2")
        if op["type"] == "property_accessor":
            return f"{render(a)}.{render(b)}"
        if op["type"] == "index_accessor":
            return f"{render(a)}[{render(b)}]"
    return json.dumps(expr, sort_keys=True)


def body(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource's or module's properties, through a loop or a condition."""
    config: dict[str, Any] = resource["config"]
    return config["config"] if "config" in config and isinstance(config["config"], dict) else config


def variable(name: str) -> Any:
    return resources_bicep()["variables"][name]["value"]


def role_names() -> dict[str, str]:
    """The template's ``roles`` variable, as role key -> the built-in role's name (its id must be known)."""
    names = {}
    for key, role_id in variable("roles").items():
        assert role_id in BUILT_IN_ROLES, f"roles.{key}: {role_id} is not the id of a built-in role we know"
        names[f"roles.{key}"] = BUILT_IN_ROLES[role_id]
    return names


def template_settings() -> dict[str, str]:
    """App settings the template sets, name -> the value's expression, for the sample hubs and IoT Central."""
    site = body(resources_bicep()["resources"]["app"])
    parts = site["properties"]["siteConfig"]["appSettings"]["function"]["parameters"]
    assert list(parts.values()) == ["baseSettings", "hubSettings", "centralSettings", "extraAppSettings"]
    settings = {item["name"]: render(item["value"]) for item in variable("baseSettings")}
    hub_setting = variable("hubSettings")
    assert hub_setting["loop_type"]["detail"] == {"item_name": "hub", "array_name": "iotHubs"}
    for hub in SAMPLE_HUBS:
        name = evaluate(hub_setting["config"]["name"], hub)
        settings[name] = f"{hub}.azure-devices.net"
    (central,) = variable("centralSettings")["operator"]["operands"]["false_value"]
    settings[central["name"]] = render(central["value"])
    return settings


def evaluate(template: str, hub: str) -> str:
    """A Bicep interpolation over ``hub.name`` (toUpper, toLower, replace), evaluated for one hub name."""

    def expr(text: str) -> str:
        text = text.strip()
        if text == "hub.name":
            return hub
        call = re.fullmatch(r"(\w+)\((.*)\)", text, re.S)
        assert call, f"cannot evaluate {text!r}"
        fn, args = call.groups()
        if fn == "toUpper":
            return expr(args).upper()
        if fn == "toLower":
            return expr(args).lower()
        if fn == "replace":
            inner, old, new = re.fullmatch(r"(.*),\s*'([^']*)',\s*'([^']*)'", args, re.S).groups()  # type: ignore[union-attr]
            return expr(inner).replace(old, new)
        raise AssertionError(f"cannot evaluate {fn}()")

    return re.sub(r"\$\{([^}]*)\}", lambda m: expr(m.group(1)), template)


def documented_optional() -> set[str]:
    """The optional settings table of docs/deploy.md: the one place that lists what the template leaves unset."""
    text = (REPO / "docs" / "deploy.md").read_text()
    section = text.split("### Optional settings", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, re.M))


class RecordingEnv(Mapping[str, str]):
    """The environment as the template sets it, recording every name the code asks for."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return self.values.get(key, default)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return key in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def sample_values(settings: dict[str, str]) -> dict[str, str]:
    """Plausible values for the template's settings (what Azure would put there)."""
    endpoints = {"blob": "https://stx.blob.core.windows.net/", "queue": "https://stx.queue.core.windows.net/"}
    endpoints["table"] = "https://stx.table.core.windows.net/"
    values = {}
    for name, expr in settings.items():
        if expr.endswith(".clientId"):
            values[name] = "00000000-0000-0000-0000-000000000001"
        elif ".primaryEndpoints." in expr:
            values[name] = endpoints[expr.rsplit(".", 1)[1]]
        elif name == "IOTHUB_HUBS":
            values[name] = ",".join(SAMPLE_HUBS)  # the template joins the hubs' lower-cased names
        elif name == "IOTCENTRAL_APP_URL":
            values[name] = SAMPLE_CENTRAL
        else:
            values[name] = expr
    return values


def normalise(name: str) -> str:
    for hub in SAMPLE_HUBS:
        name = name.replace(f"IOTHUB_{hub.upper().replace('-', '_')}_", "IOTHUB_<HUB>_")
    return name


def role_assignments(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(scope, role name, principal) of every role assignment in a parsed template."""
    names = role_names()
    found = []
    for resource in doc["resources"].values():
        if resource["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        props = body(resource)
        role = render(props["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"])
        role = names.get(role) or BUILT_IN_ROLES[doc["variables"][role]["value"]]
        found.append((render(props["scope"]), role, render(props["properties"]["principalId"])))
    return found


@functools.cache
def app_functions() -> dict[str, dict[str, Any]]:
    """function name -> its bindings (as the worker sends them to the host)."""
    import function_app

    # get_functions() is not idempotent (it remembers the names it returned): leave it as it was for others.
    function_app.app.functions_bindings = {}
    try:
        return {
            f.get_function_name(): {"bindings": [json.loads(b) for b in f.get_raw_bindings()]}
            for f in function_app.app.get_functions()
        }
    finally:
        function_app.app.functions_bindings = {}


# ----------------------------------------------------------------------------------------------------------------
# The templates parse and pass checkov, offline


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_bicep_file_parses(path: Path) -> None:
    doc = parsed(path)
    assert doc["resources"] or doc.get("modules"), f"{path} declares nothing"


def test_there_are_templates_to_check() -> None:
    assert {p.name for p in BICEP_FILES} >= {"main.bicep", "resources.bicep", "iot-hub-access.bicep"}


def offline_env() -> dict[str, str]:
    """checkov's environment: no platform key, no update check, no guideline download, and any stray HTTP call
    sent to a closed local port so that it fails at once instead of reaching the network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_", "CKV_", "CHECKOV_"))}
    env.update(
        CKV_SKIP_PACKAGE_UPDATE_CHECK="true",
        BC_SKIP_MAPPING="TRUE",
        CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false",
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        NO_PROXY="",
    )
    return env


def no_network_prefix() -> list[str]:
    """``unshare -rn`` (a network namespace with no interface) where the kernel allows it: proof of offline."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True, check=False).returncode == 0:
        return [unshare, "-rn"]
    return []


@functools.cache
def checkov_report() -> dict[str, Any]:
    assert CHECKOV.exists(), f"{CHECKOV} is missing: run `make setup` (it installs requirements-iac.txt there)"
    argv = [str(CHECKOV), "-d", str(INFRA), "--framework", "bicep", "--skip-download", "-o", "json", "--compact"]
    run = subprocess.run(
        [*no_network_prefix(), *argv], capture_output=True, text=True, env=offline_env(), timeout=300, check=False
    )
    assert run.stdout.strip().startswith("{"), f"checkov printed no report: {run.stderr[-2000:]}"
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def test_checkov_passes_over_infra() -> None:
    report = checkov_report()
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in report["results"]["failed_checks"]]
    assert failed == []
    assert summary["parsing_errors"] == 0
    assert summary["passed"] >= 20  # the storage, app and plan checks ran


def test_every_checkov_skip_is_justified_inline() -> None:
    skipped = checkov_report()["results"]["skipped_checks"]
    unjustified = [c["check_id"] for c in skipped if len(c["check_result"].get("suppress_comment", "").strip()) < 20]
    assert unjustified == []
    # pycep (checkov's parser) refuses long runs of comment lines inside a block: keep skip groups short.
    for path in BICEP_FILES:
        run = 0
        for line in path.read_text().splitlines():
            run = run + 1 if line.strip().startswith("// checkov:skip") else 0
            assert run <= 3, f"{path.name}: more than 3 checkov:skip lines in a row"


# ----------------------------------------------------------------------------------------------------------------
# Settings: the template and the code agree


def test_the_template_sets_what_the_code_needs_to_start() -> None:
    from shared.config import Settings, StorageAuth

    env = RecordingEnv(sample_values(template_settings()))
    settings = Settings.from_env(env)  # raises ConfigError on anything missing or malformed
    assert list(settings.hubs) == SAMPLE_HUBS
    assert all(hub.host_name and not hub.connection_string for hub in settings.hubs.values())  # identity, no keys
    assert settings.storage_auth is StorageAuth.IDENTITY_BASED
    assert settings.storage.connection_string is None  # identity-based storage
    assert settings.storage.client_id  # the user-assigned identity, not DefaultAzureCredential's guess
    assert settings.storage.blob_uri and settings.storage.queue_uri and settings.storage.table_uri
    assert settings.central is not None and settings.central.api_token is None  # Entra ID for IoT Central too


def test_every_setting_the_code_reads_is_set_or_documented_as_optional() -> None:
    from shared.config import Settings

    template = template_settings()
    env = RecordingEnv(sample_values(template))
    Settings.from_env(env)
    # the same without the identity-based blob endpoint, to see the alternatives the code falls back on
    bare = RecordingEnv({k: v for k, v in sample_values(template).items() if not k.endswith("__blobServiceUri")})
    with pytest.raises(ValueError):
        Settings.from_env(bare)
    read = {normalise(name) for name in env.asked | bare.asked}
    unaccounted = sorted(read - {normalise(n) for n in template} - documented_optional())
    assert unaccounted == [], "read by the code, but neither set by infra/ nor listed in docs/deploy.md"
    stale = sorted(documented_optional() - read)
    assert stale == [], "listed as optional in docs/deploy.md, but the code does not read them"


def test_every_setting_the_template_sets_has_a_reader() -> None:
    from shared.config import Settings

    template = template_settings()
    env = RecordingEnv(sample_values(template))
    Settings.from_env(env)
    from_bindings = {m for f in app_functions().values() for m in re.findall(r"%(\w+)%", json.dumps(f))}
    unread = sorted(set(template) - env.asked - set(READ_OUTSIDE_CONFIG) - from_bindings)
    assert unread == []


def test_no_secret_is_set_or_output() -> None:
    text = "\n".join(p.read_text() for p in BICEP_FILES)
    for forbidden in ("listKeys", "listkeys", "AccountKey=", "SharedAccessKey", "connectionString(", "@secure()"):
        assert forbidden not in text
    # Application Insights' connection string names an ingestion endpoint; with local auth disabled, ingestion
    # takes an Entra ID token (APPLICATIONINSIGHTS_AUTHENTICATION_STRING), so it opens nothing.
    names = set(template_settings()) - {"APPLICATIONINSIGHTS_CONNECTION_STRING"}
    assert not any(n.endswith(("_CONNECTION_STRING", "_API_TOKEN", "_KEY")) for n in names)
    assert body(resources_bicep()["resources"]["insights"])["properties"]["DisableLocalAuth"] is True
    assert "DEVICE_STORAGE" not in names and "AzureWebJobsStorage" not in names  # no connection strings
    for path in BICEP_FILES:
        for name in parsed(path).get("outputs", {}):
            assert not re.search(r"KEY|SECRET|TOKEN|PASSWORD|CONNECTION", name), f"{path.name}: output {name}"


def test_bindings_name_settings_the_template_sets_identity_based() -> None:
    settings = template_settings()
    for name, function in app_functions().items():
        for binding in function["bindings"]:
            for ref in re.findall(r"%(\w+)%", json.dumps(binding)):
                assert ref in settings, f"{name}: %{ref}% does not resolve, so Azure would disable the function"
            conn = binding.get("connection")
            if not conn:
                continue
            # A user-assigned identity needs both; the blob extension ignores __clientId alone.
            assert settings[f"{conn}__credential"] == "managedidentity"
            assert settings[f"{conn}__clientId"] == "identity.properties.clientId"
            assert f"{conn}__blobServiceUri" in settings
            if binding["type"] == "blobTrigger":  # the trigger uses queues on its own account
                account = settings[f"{conn}__blobServiceUri"].split(".")[0]
                assert settings[f"{conn}__queueServiceUri"] == f"{account}.properties.primaryEndpoints.queue"
    for host_setting in ("credential", "clientId", "blobServiceUri", "queueServiceUri"):
        assert f"AzureWebJobsStorage__{host_setting}" in settings


def test_the_upload_trigger_and_its_storage_match_the_template() -> None:
    from shared.config import Containers, Settings

    doc = resources_bicep()
    function = doc["outputs"]["UPLOADS_FUNCTION"]["value"]
    name = variable(function)
    (trigger,) = [b for b in app_functions()[name]["bindings"] if b["type"] == "blobTrigger"]
    containers = variable("dataContainers")
    assert trigger["path"].split("/", 1)[0] == containers[0]
    assert render(doc["outputs"]["UPLOADS_CONTAINER"]["value"]) == "dataContainers[0]"
    defaults = Containers()
    assert set(containers) == {defaults.uploads, defaults.archive, defaults.reports, defaults.backups}
    assert variable("ledgerTable") == Settings.__dataclass_fields__["ledger_table"].default
    assert render(body(doc["resources"]["ledger"])["parent"]) == "dataTables"
    scripts = (REPO / "scripts" / "postdeploy.sh").read_text() + (REPO / "scripts" / "postdeploy.ps1").read_text()
    assert f"'{name}'" in scripts or f"-{name}" in scripts  # the hooks' defaults name the same function


# ----------------------------------------------------------------------------------------------------------------
# Roles: exactly what is needed


def account_of(setting: str) -> str:
    return template_settings()[setting].split(".")[0]


def test_the_app_identity_holds_exactly_the_roles_it_needs() -> None:
    from shared.config import Settings, StorageAuth

    settings = Settings.from_env(sample_values(template_settings()))
    identity = "identity.properties.principalId"
    held = {(scope, role) for scope, role, who in role_assignments(resources_bicep()) if who == identity}

    host = account_of("AzureWebJobsStorage__blobServiceUri")
    trigger = {b["connection"] for f in app_functions().values() for b in f["bindings"] if b["type"] == "blobTrigger"}
    needed = {(host, role) for role in HOST_STORAGE_ROLES}
    needed |= {(account_of(f"{conn}__blobServiceUri"), role) for conn in trigger for role in TRIGGER_ROLES}
    assert settings.storage.table_uri  # the ledger is a table on DEVICE_STORAGE
    needed.add((account_of("DEVICE_STORAGE__tableServiceUri"), LEDGER_ROLE))
    needed.add((template_settings()["APPLICATIONINSIGHTS_CONNECTION_STRING"].split(".")[0], TELEMETRY_ROLE))
    assert held == needed

    # identityBased hub jobs: each hub's own identity on the account the work containers are on
    hub_identity = "hubAccess[i].outputs.hubPrincipalId"
    hub_roles = [(s, r) for s, r, w in role_assignments(resources_bicep()) if w == hub_identity]
    assert settings.storage_auth is StorageAuth.IDENTITY_BASED
    assert hub_roles == [(account_of("DEVICE_STORAGE__blobServiceUri"), HUB_STORAGE_ROLE)]
    everyone = {w for _, _, w in role_assignments(resources_bicep())}
    assert everyone == {identity, hub_identity, "operatorPrincipalId"}


def test_each_hub_grants_the_app_identity_its_data_role() -> None:
    module = body(resources_bicep()["modules"]["hubAccess"])
    assert resources_bicep()["modules"]["hubAccess"]["detail"]["path"] == "modules/iot-hub-access.bicep"
    assert render(module["params"]["appPrincipalId"]) == "identity.properties.principalId"
    hub_doc = parsed(INFRA / "modules" / "iot-hub-access.bicep")
    assert role_assignments(hub_doc) == [("hub", HUB_ROLE, "appPrincipalId")]
    assert "hubPrincipalId" in hub_doc["outputs"]


def test_the_hubs_storage_role_is_limited_to_the_work_containers() -> None:
    from shared.ledger import Job, JobKind, JobState

    now = datetime.now(UTC)
    job = Job(hub="prodhub", job_id="abc", kind=JobKind.IMPORT, state=JobState.QUEUED, created=now, updated=now)
    prefix = job.work_container.removesuffix(job.job_id)
    props = body(resources_bicep()["resources"]["hubDataRoles"])["properties"]
    assert props["conditionVersion"] == "2.0"
    condition = variable(props["condition"])
    assert condition.endswith(f"StringStartsWith \\'{prefix}\\'))")


def test_the_operator_roles_are_optional_and_read_mostly() -> None:
    operator = [(s, r) for s, r, w in role_assignments(resources_bicep()) if w == "operatorPrincipalId"]
    assert sorted(operator) == [
        ("containers[0]", "Storage Blob Data Contributor"),
        ("dataStorage", "Storage Blob Data Reader"),
    ]


# ----------------------------------------------------------------------------------------------------------------
# azd and the publish


def test_azure_yaml_runs_the_postdeploy_hook_in_both_shells() -> None:
    text = (REPO / "azure.yaml").read_text()
    assert re.search(r"^infra:\n(  .*\n)*  path: infra\n", text, re.M)
    assert re.search(r"^services:\n  app:\n(    .*\n)*    host: function\n", text, re.M)
    assert "run: ./scripts/postdeploy.sh" in text and "run: ./scripts/postdeploy.ps1" in text
    assert "'azd-service-name': 'app'" in (INFRA / "resources.bicep").read_text()
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    main = parsed(INFRA / "main.bicep")
    assert set(params) <= set(main["parameters"])
    required = {n for n, p in main["parameters"].items() if "default" not in p}
    assert required <= set(params)
    outputs = set(main["outputs"])
    hook = (REPO / "scripts" / "postdeploy.sh").read_text()
    used = set(re.findall(r"\$\{(\w+):[?-]", hook))
    # azd's own variables beside the template's outputs (learn.microsoft.com/azure/developer/azure-developer-cli/
    # environment-variables-faq: AZURE_SUBSCRIPTION_ID is set when the environment is made), and the hook's knobs
    azd_sets = outputs | {"AZURE_SUBSCRIPTION_ID"}
    knobs = {"POSTDEPLOY_WAIT_SECONDS", "POSTDEPLOY_RETRY_SECONDS"}
    assert used - knobs <= azd_sets, "the hook reads a variable azd does not set"


def test_the_hook_never_prints_the_key() -> None:
    for name in ("postdeploy.sh", "postdeploy.ps1"):
        text = (REPO / "scripts" / name).read_text()
        for line in text.splitlines():
            if re.search(r"\b(echo|Write-Host|Write-Output)\b", line):
                assert "$url" not in line and "$key" not in line, f"{name}: {line.strip()}"
        assert "set -x" not in text


def shipped_files() -> set[str]:
    patterns = [
        line.strip()
        for line in (REPO / ".funcignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {
        path
        for path in tracked
        if not any(fnmatch.fnmatch(part, pattern) for part in Path(path).parts for pattern in patterns)
    }


def test_a_publish_ships_the_app_only() -> None:
    shipped = shipped_files()
    top = {Path(p).parts[0] for p in shipped}
    assert top == {"function_app.py", "host.json", "requirements.txt", "shared"}
    assert all(p.endswith((".py", ".typed", ".html")) for p in shipped if p.startswith("shared/"))
    assert "shared/web/status.html" in shipped  # the status page is served from the package
    # and what ships imports nothing that stays behind
    left_behind = re.compile(r"^\s*(from|import)\s+(tests|emulators|bench)\b", re.M)
    offenders = [p for p in shipped if p.endswith(".py") and left_behind.search((REPO / p).read_text())]
    assert offenders == []


def test_the_deploy_docs_are_linked_from_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    assert "## Deploy to Azure" in readme and "docs/deploy.md" in readme
    docs = (REPO / "docs" / "deploy.md").read_text()
    for must in ("azd up", "az deployment group create", "webjobs-blobtrigger-poison", "Troubleshooting"):
        assert must in docs


def test_the_sample_settings_name_the_hub_role_and_identity_settings_the_template_uses() -> None:
    values = json.loads((REPO / "local.settings.sample.json").read_text())["Values"]
    hub_doc = parsed(INFRA / "modules" / "iot-hub-access.bicep")
    assigned = {role for _, role, _ in role_assignments(hub_doc)}
    named = re.findall(r"\((IoT Hub [A-Za-z ]+?)[:)]", values["IOTHUB_DEVHUB_HOSTNAME"])
    assert named and set(named) == assigned == {HUB_ROLE}, named
    # As the template sets them: a user-assigned identity is __credential=managedidentity and __clientId, both.
    for name in [n for n in values if n.endswith("__clientId")]:
        credential = name.replace("__clientId", "__credential")
        assert credential in values and "managedidentity" in values[credential], name
        assert template_settings().get(credential) == "managedidentity"


# ----------------------------------------------------------------------------------------------------------------
# The Event Grid subscription and the postdeploy hooks

# Event subscription names: 3-64 characters, a-z, A-Z, 0-9 and "-"
# (https://learn.microsoft.com/azure/event-grid/subscription-creation-schema).
EVENT_SUBSCRIPTION_NAME = re.compile(r"[A-Za-z0-9-]{3,64}")


def valid_event_subscription_name(name: str) -> bool:
    return EVENT_SUBSCRIPTION_NAME.fullmatch(name) is not None


def test_the_event_subscription_name_rule() -> None:
    assert valid_event_subscription_name("uploads-to-import-on-upload") and valid_event_subscription_name("a-1")
    for bad in ("uploads-to-import_on_upload", "ab", "x" * 65, "uploads.to", "uploads to", ""):
        assert not valid_event_subscription_name(bad), bad


FAKE_AZ = r"""#!/bin/sh
# A stand-in for the Azure CLI: records each call, answers what the hook reads, and fails
# `event-subscription create` as $FAKE_AZ_CREATE says, one word per try (ok, handshake, denied).
echo "$*" >> "$FAKE_AZ_LOG"
HANDSHAKE_URL=https://func-x.azurewebsites.net/runtime/webhooks/blobs?functionName=Host.Functions.x\&code=the-blobs-extension-key
HANDSHAKE_WHY="Http POST request failed with response code Unknown. For troublehooting, visit https://aka.ms/esvalidation."
DENIED="perform action 'Microsoft.EventGrid/systemTopics/eventSubscriptions/write'"
case "$*" in
    *"functionapp show"*) echo func-x.azurewebsites.net ;;
    *"functionapp keys list"*) echo the-blobs-extension-key ;;
    *"event-subscription list"*) ;;
    *"event-subscription create"*)
        tries=$(grep -c "event-subscription create" "$FAKE_AZ_LOG")
        outcome=$(echo "$FAKE_AZ_CREATE" | cut -d' ' -f"$tries")
        case "$outcome" in
            handshake) echo "ERROR: Webhook validation handshake failed for $HANDSHAKE_URL. $HANDSHAKE_WHY" >&2
                exit 1 ;;
            denied) echo "ERROR: (AuthorizationFailed) The client 'me' does not have authorization to $DENIED" >&2
                exit 1 ;;
            *) echo Succeeded ;;
        esac ;;
esac
"""


def run_hook(tmp_path: Path, create: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """scripts/postdeploy.sh with the fake az first on PATH; returns the run and the az calls it made."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    az = bin_dir / "az"
    az.write_text(FAKE_AZ)
    az.chmod(0o755)
    log = tmp_path / "az.log"
    log.write_text("")
    base = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_AZ_LOG": str(log),
        "FAKE_AZ_CREATE": create,
        "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-00000000abcd",
        "AZURE_RESOURCE_GROUP": "rg-x",
        "AZURE_FUNCTION_APP_NAME": "func-x",
        "EVENTGRID_SYSTEM_TOPIC": "evgt-x",
        "POSTDEPLOY_RETRY_SECONDS": "0",
    }
    base.update(env)
    run = subprocess.run(
        ["sh", str(REPO / "scripts" / "postdeploy.sh")],
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return run, log.read_text().splitlines()


def test_every_event_subscription_name_in_infra_and_the_hooks_is_valid(tmp_path: Path) -> None:
    # the template's output, which azd hands the hook as EVENTGRID_SUBSCRIPTION
    output = resources_bicep()["outputs"]["EVENTGRID_SUBSCRIPTION"]["value"]
    function = variable(resources_bicep()["outputs"]["UPLOADS_FUNCTION"]["value"])
    from_template = evaluate(variable(output).replace("uploadsFunction", "hub.name"), function)
    assert from_template == "uploads-to-" + function.replace("_", "-")
    # the POSIX hook's default, as it names it to az
    run, calls = run_hook(tmp_path, "ok", UPLOADS_FUNCTION=function)
    assert run.returncode == 0, run.stderr
    (create,) = [c for c in calls if "event-subscription create" in c]
    from_hook = re.search(r" -n (\S+)", create).group(1)  # type: ignore[union-attr]
    # the PowerShell hook's default: the same expression over the same function name
    ps1 = (REPO / "scripts" / "postdeploy.ps1").read_text()
    default = re.search(r"'EVENTGRID_SUBSCRIPTION' \(\"([\w-]+)\" \+ \(\$function -replace '_', '-'\)\)", ps1)
    assert default, "postdeploy.ps1 names its default subscription another way: check it here"
    from_ps1 = default.group(1) + function.replace("_", "-")
    deploy_md = re.findall(r"The subscription `([^`]+)`", (REPO / "docs" / "deploy.md").read_text())
    for name in (from_template, from_hook, from_ps1, *deploy_md):
        assert valid_event_subscription_name(name), name
    assert from_template == from_hook == from_ps1 and deploy_md == [from_template]
    # and a name given by hand that breaks the rule is refused before any az call
    bad, calls = run_hook(tmp_path, "ok", EVENTGRID_SUBSCRIPTION="uploads_to_x")
    assert bad.returncode == 1 and "not a valid Event Grid subscription name" in bad.stderr and calls == []


def test_the_hook_retries_the_webhook_handshake_only_and_names_azd_subscription(tmp_path: Path) -> None:
    # The handshake fails while the host starts: retried until it passes.
    run, calls = run_hook(tmp_path, "handshake handshake ok")
    assert run.returncode == 0, run.stderr
    assert sum("event-subscription create" in c for c in calls) == 3
    assert run.stdout.count("did not answer Event Grid's validation yet") == 2
    # Every az call names azd's subscription, never az's default one.
    assert calls and all("--subscription 00000000-0000-0000-0000-00000000abcd" in c for c in calls), calls
    # Any other error will not heal: shown at once, after one try, the key masked.
    denied, calls = run_hook(tmp_path, "denied ok")
    assert denied.returncode == 1
    assert sum("event-subscription create" in c for c in calls) == 1
    assert "AuthorizationFailed" in denied.stderr and "retrying" not in denied.stdout
    # A handshake that never passes ends at the deadline with the last error, the key masked.
    late, _ = run_hook(tmp_path, "handshake handshake", POSTDEPLOY_WAIT_SECONDS="0")
    assert late.returncode == 1 and "still fails Event Grid's validation" in late.stderr
    assert "the-blobs-extension-key" not in late.stdout + late.stderr and "code=***" in late.stderr
    # Without azd's subscription the hook refuses to guess.
    unset, calls = run_hook(tmp_path, "ok", AZURE_SUBSCRIPTION_ID="")
    assert unset.returncode != 0 and "AZURE_SUBSCRIPTION_ID" in unset.stderr and calls == []


def test_make_run_does_not_build_the_checkov_environment() -> None:
    def recipe(target: str) -> str:
        # -n: print what would run; -B: as on a fresh machine, everything out of date
        done = subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, check=True)
        return done.stdout

    assert "requirements-iac.txt" not in recipe("run") and "emulators.devstack" in recipe("run")
    assert "requirements-iac.txt" in recipe("pytest")  # test (lint + pytest) runs the infra checks: it needs it


def test_optional_settings_are_a_deployment_parameter_that_survives_the_next_provision() -> None:
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert params["appSettings"] == {"value": "${APP_SETTINGS}"}  # from the azd environment
    main = parsed(INFRA / "main.bicep")
    assert "default" in main["parameters"]["appSettings"]  # optional
    assert render(body(main["modules"]["resources"])["params"]["extraAppSettings"]) == "extraAppSettings"
    loop = main["variables"]["extraAppSettings"]["value"]
    assert loop["loop_type"]["detail"]["item_name"] == "setting" and "appSettings" in str(loop["loop_type"])
    assert render(loop["config"]["name"]) == "setting.key"
    # resources.bicep adds them after its own settings (template_settings checks the order of the parts)
    assert "extraAppSettings" in resources_bicep()["parameters"]
    docs = (REPO / "docs" / "deploy.md").read_text()
    assert "azd env set APP_SETTINGS" in docs.split("### Optional settings", 1)[1]
    # a setting set by hand is deleted by the next provision: the docs never suggest it without saying so
    for paragraph in docs.split("\n\n"):
        if "appsettings set" in paragraph:
            assert "deleted by the next `azd provision`" in paragraph, paragraph
