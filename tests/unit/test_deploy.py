"""Deployment files, checked as a reviewer would: Dockerfile, .dockerignore,
docker-compose.yml and deploy/envoy.yaml agree with each other and with the server.

No Docker engine is needed: the files are parsed, not run. deploy/envoy.yaml is parsed
strictly into Envoy's own API messages (xds-protos); `envoy --mode validate` (which also
checks value constraints) runs only where an `envoy` binary is on PATH.
"""

from __future__ import annotations

import base64
import importlib
import ipaddress
import json
import os
import pkgutil
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import ValidationError

import securenow.v1
from securenow.server import cli
from securenow.server.settings import Environment, Settings, SettingsError
from securenow.server.transport.interceptor import LOOPBACK_NETWORKS

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENVOY_FILE = ROOT / "deploy" / "envoy.yaml"

HCM = "envoy.filters.network.http_connection_manager"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Secrets the server refuses to start without in production.
REQUIRED_SECRETS = ("SECURENOW_SECRET_KEY", "SECURENOW_DATA_KEY")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|_KEY$|_KEYS_OLD$")
REQUIRED_VAR = re.compile(r"^\$\{(?P<name>\w+):\?(?P<message>[^}]+)\}$")
# Methods Envoy must never cut (the brief names these; all streaming methods are checked).
LONG_LIVED = {
    "/securenow.v1.AgencyService/StreamDispatch",
    "/securenow.v1.AgencyService/WatchDispatch",
    "/securenow.v1.SosService/WatchSos",
}


# --- loading -----------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict), "docker-compose.yml has no services"
    assert found, "docker-compose.yml has no services"
    return found


@pytest.fixture(scope="module")
def envoy() -> dict[str, Any]:
    return load_yaml(ENVOY_FILE)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def with_defaults(value: str) -> str:
    """Resolves `${VAR:-default}` / `${VAR-default}` to the default, as compose would with
    VAR unset, and a required `${VAR:?message}` to a stand-in value (`var`)."""
    value = re.sub(r"\$\{(\w+):?\?[^}]*\}", lambda m: m[1].lower(), value)
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = with_defaults(addr).rpartition(":")
    return host.strip("[]"), int(port)


def server_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The replicas: services running `securenow serve`."""
    return {name: s for name, s in services.items() if command(s)[:1] == ["serve"]}


def one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no" and command(service)[:1] == ["migrate"]


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # short form: waits only for "started"
        return {name: {} for name in deps}
    return {name: (cond or {}) for name, cond in deps.items()}


def healthcheck_test(service: dict[str, Any]) -> list[str] | None:
    check = service.get("healthcheck")
    if not check or check.get("disable"):
        return None
    test = check.get("test")
    if isinstance(test, str):
        return ["CMD-SHELL", test]
    assert isinstance(test, list), f"healthcheck test is not a list: {test!r}"
    assert test, "healthcheck without a test"
    assert test[0] != "NONE", "healthcheck without a test"
    return [str(t) for t in test]


# --- Dockerfile --------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuations joined."""
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.strip().partition(" ")
        yield keyword.upper(), args.strip()
        logical = ""
    assert not logical, "Dockerfile ends inside a continued line"


def dockerfile_stages() -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(image=image, name=name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    assert stages, "Dockerfile has no FROM"
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(v) for v in value]


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    dest: str
    from_stage: str | None


def copies(stage: Stage) -> list[Copy]:
    found = []
    for args in stage.all("COPY") + stage.all("ADD"):
        words = shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        if paths and paths[0].startswith("["):
            paths = exec_form(" ".join(paths))
        from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        found.append(Copy(tuple(paths[:-1]), paths[-1], from_stage))
    return found


def env_vars(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        words = shlex.split(args)
        if words and "=" not in words[0]:  # legacy form: ENV KEY value
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


# --- .dockerignore (Docker's semantics: last matching pattern wins, parents count) ----


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = str(PurePosixPath(line.lstrip("!").strip().lstrip("/")))
        rules.append((negated, _glob_regex(pattern)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, rx in rules:
        if any(rx.fullmatch(c) for c in candidates):
            excluded = not negated
    return excluded


def repository_files(source: Path) -> list[str]:
    """Files under `source` that belong to the repository: tracked or not ignored by git
    (build outputs such as node_modules/, dist/ and caches may stay out of the context)."""
    git = shutil.which("git")
    if git is not None and (ROOT / ".git").exists():
        listed = subprocess.run(
            [git, "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", str(source)],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        return sorted({f for f in listed.split("\0") if f and (ROOT / f).is_file()})
    generated = {"__pycache__", "node_modules", "dist"}
    files = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
    return [
        f.relative_to(ROOT).as_posix()
        for f in files
        if not generated & set(f.parts) and not any(p.endswith(".egg-info") for p in f.parts) and f.suffix != ".pyc"
    ]


# --- Envoy -------------------------------------------------------------------------


def listeners(envoy: dict[str, Any]) -> list[dict[str, Any]]:
    found = envoy["static_resources"]["listeners"]
    assert isinstance(found, list)
    return found


def clusters(envoy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in envoy["static_resources"]["clusters"]}


def listener_port(listener: dict[str, Any]) -> int:
    return int(listener["address"]["socket_address"]["port_value"])


def hcms(listener: dict[str, Any]) -> list[dict[str, Any]]:
    return [f["typed_config"] for chain in listener["filter_chains"] for f in chain["filters"] if f["name"] == HCM]


def hcm(listener: dict[str, Any]) -> dict[str, Any]:
    found = hcms(listener)
    assert len(found) == 1, f"listener {listener['name']}: expected one HTTP connection manager"
    return found[0]


def all_routes(envoy: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for listener in listeners(envoy):
        for manager in hcms(listener):
            for vhost in manager["route_config"]["virtual_hosts"]:
                for route in vhost["routes"]:
                    yield listener["name"], route


def route_for(manager: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The route Envoy picks for `path` (first match wins; one catch-all virtual host)."""
    for vhost in manager["route_config"]["virtual_hosts"]:
        if "*" not in vhost["domains"]:
            continue
        routes: list[dict[str, Any]] = vhost["routes"]
        for route in routes:
            match = route["match"]
            if (
                ("prefix" in match and path.startswith(match["prefix"]))
                or ("path" in match and path == match["path"])
                or ("safe_regex" in match and re.fullmatch(match["safe_regex"]["regex"], path))
            ):
                return route
    return None


def routed_cluster(manager: dict[str, Any], path: str) -> str | None:
    route = route_for(manager, path)
    cluster = (route or {}).get("route", {}).get("cluster")
    return None if cluster is None else str(cluster)


def seconds(duration: str) -> float:
    assert re.fullmatch(r"\d+(\.\d+)?s", duration), f"not a protobuf Duration: {duration}"
    return float(duration[:-1])


def is_grpc_cluster(cluster: dict[str, Any]) -> bool:
    options = (cluster.get("typed_extension_protocol_options") or {}).get(HTTP_PROTOCOL_OPTIONS) or {}
    return "http2_protocol_options" in (options.get("explicit_http_config") or {})


def endpoints(cluster: dict[str, Any]) -> list[tuple[str, int]]:
    return [
        (
            lb["endpoint"]["address"]["socket_address"]["address"],
            int(lb["endpoint"]["address"]["socket_address"]["port_value"]),
        )
        for group in cluster["load_assignment"]["endpoints"]
        for lb in group["lb_endpoints"]
    ]


def grpc_method_paths() -> dict[str, bool]:
    """Every RPC of securenow.v1 as an HTTP/2 path -> whether it is streaming."""
    paths = {}
    for module in pkgutil.iter_modules(securenow.v1.__path__):
        if not module.name.endswith("_pb2"):
            continue
        pb2 = importlib.import_module(f"securenow.v1.{module.name}")
        for service in pb2.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                streaming = bool(method.client_streaming or method.server_streaming)
                paths[f"/{service.full_name}/{method.name}"] = streaming
    return paths


def browser_listener(envoy: dict[str, Any]) -> dict[str, Any]:
    found = [
        listener
        for listener in listeners(envoy)
        if any(f["name"] == "envoy.filters.http.grpc_web" for f in hcm(listener)["http_filters"])
    ]
    assert len(found) == 1, "expected exactly one listener with the grpc_web filter (the browser listener)"
    return found[0]


def native_listener(envoy: dict[str, Any]) -> dict[str, Any]:
    others = [listener for listener in listeners(envoy) if listener is not browser_listener(envoy)]
    assert len(others) == 1, "expected one native gRPC listener besides the browser listener"
    return others[0]


def grpc_cluster_name(envoy: dict[str, Any]) -> str:
    names = [name for name, c in clusters(envoy).items() if is_grpc_cluster(c)]
    assert len(names) == 1, f"expected one HTTP/2 (gRPC) cluster, found {names}"
    return names[0]


# === docker-compose.yml =============================================================


def test_depends_on_targets_exist_with_the_right_condition(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, spec in depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = spec.get("condition")
            if one_shot(services[target]):
                assert condition == "service_completed_successfully", f"{name} -> {target}: {condition}"
            else:
                assert condition == "service_healthy", f"{name} -> {target}: {condition}"
                assert healthcheck_test(services[target]), f"{name} waits for {target}, which has no healthcheck"


def test_startup_order(services: dict[str, dict[str, Any]]) -> None:
    replicas = server_services(services)
    assert len(replicas) >= 2, "expected at least two server replicas"
    migrate = [n for n, s in services.items() if one_shot(s)]
    assert migrate == ["migrate"]
    assert set(depends_on(services["migrate"])) == {"postgres"}
    for name, replica in replicas.items():
        # Elasticsearch too: replicas search it (SECURENOW_ELASTICSEARCH_URL) from the start.
        assert {"postgres", "redis", "elasticsearch", "migrate"} <= set(depends_on(replica)), name
    assert set(replicas) <= set(depends_on(services["envoy"])), "envoy must wait for every replica"


def test_every_service_but_migrate_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name == "migrate":
            # A one-shot job: the image's HEALTHCHECK must not apply to it.
            assert healthcheck_test(service) is None
            assert service.get("healthcheck", {}).get("disable") is True, "disable the image healthcheck for migrate"
        else:
            assert healthcheck_test(service), f"{name} has no healthcheck"


def test_replica_healthcheck_hits_healthz_on_the_http_port(services: dict[str, dict[str, Any]]) -> None:
    for name, replica in server_services(services).items():
        _, http_port = split_addr(environment(replica)["SECURENOW_HTTP_ADDR"])
        test = " ".join(healthcheck_test(replica) or [])
        assert f"127.0.0.1:{http_port}/healthz" in test, f"{name}: {test}"
        for tool in ("curl", "wget"):
            assert tool not in test, f"the slim image has no {tool}: use Python's urllib"


def test_envoy_config_is_mounted_from_the_repository(services: dict[str, dict[str, Any]]) -> None:
    envoy_service = services["envoy"]
    mounts = []
    for volume in envoy_service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts.append((source, target, "ro" in mode))
        else:
            mounts.append((volume["source"], volume["target"], bool(volume.get("read_only"))))
    cmd = command(envoy_service)
    config_path = cmd[cmd.index("-c") + 1] if "-c" in cmd else "/etc/envoy/envoy.yaml"
    mounted = [(s, ro) for s, t, ro in mounts if t == config_path]
    assert mounted, f"nothing mounted at {config_path}, the file envoy is started with"
    source, read_only = mounted[0]
    assert (COMPOSE_FILE.parent / source).resolve() == ENVOY_FILE.resolve()
    assert ENVOY_FILE.is_file()
    assert read_only, "mount the Envoy config read-only"


def test_production_secrets_are_required_never_literal(services: dict[str, dict[str, Any]]) -> None:
    app_services = {n: s for n, s in services.items() if "SECURENOW_ENV" in environment(s)}
    assert set(server_services(services)) <= set(app_services)
    for name, service in app_services.items():
        env = environment(service)
        assert env["SECURENOW_ENV"] == "production", name
        for secret in REQUIRED_SECRETS:
            match = REQUIRED_VAR.match(env.get(secret, ""))
            assert match, f"{name}: {secret} must be ${{{secret}:?message}}, got {env.get(secret)!r}"
            assert match["name"] == secret
            assert match["message"].strip(), f"{name}: {secret} needs an error message"
        # The database password is a secret too: required, never a default.
        password = re.search(r"\$\{POSTGRES_PASSWORD[^}]*\}", env["SECURENOW_DATABASE_URL"])
        assert password, f"{name}: SECURENOW_DATABASE_URL must take ${{POSTGRES_PASSWORD:?message}}"
        assert REQUIRED_VAR.match(password[0]), f"{name}: POSTGRES_PASSWORD must be required, got {password[0]}"
        for key, value in env.items():
            if key.startswith("SECURENOW_") and SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+(:?[?-][^}]*)?\}", value), f"{name}: {key} holds a literal value"
                assert not re.fullmatch(r"\$\{\w+:?-.+\}", value), f"{name}: {key} has a non-empty default"


def test_postgres_password_is_required(services: dict[str, dict[str, Any]]) -> None:
    value = environment(services["postgres"]).get("POSTGRES_PASSWORD", "")
    match = REQUIRED_VAR.match(value)
    assert match, f"postgres: POSTGRES_PASSWORD must be ${{POSTGRES_PASSWORD:?message}}, got {value!r}"
    assert match["name"] == "POSTGRES_PASSWORD"


def test_replicas_share_one_config_with_distinct_instance_ids(services: dict[str, dict[str, Any]]) -> None:
    replicas = server_services(services)
    envs = {name: environment(s) for name, s in replicas.items()}
    ids = [env.get("SECURENOW_INSTANCE_ID") for env in envs.values()]
    assert all(ids), f"every replica needs SECURENOW_INSTANCE_ID: {ids}"
    assert len(set(ids)) == len(ids), f"instance ids must be distinct: {ids}"
    stripped = [{k: v for k, v in env.items() if k != "SECURENOW_INSTANCE_ID"} for env in envs.values()]
    assert all(env == stripped[0] for env in stripped), "replicas differ in more than SECURENOW_INSTANCE_ID"
    images = {s.get("image") for s in replicas.values()} | {services["migrate"].get("image")}
    assert None not in images, "migrate and the replicas need an image name"
    assert len(images) == 1, f"migrate and the replicas must run one image: {images}"


def test_replicas_point_at_the_compose_services(services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "SECURENOW_DATABASE_URL": ("postgres", 5432),
        "SECURENOW_REDIS_URL": ("redis", 6379),
        "SECURENOW_ELASTICSEARCH_URL": ("elasticsearch", 9200),
    }
    for name, replica in server_services(services).items():
        env = environment(replica)
        for key, (host, port) in expected.items():
            url = urlsplit(with_defaults(env[key]))
            assert (url.hostname, url.port) == (host, port), f"{name}: {key}={env[key]}"
            assert host in services
        for key in ("SECURENOW_GRPC_ADDR", "SECURENOW_HTTP_ADDR"):
            host, _ = split_addr(env[key])
            assert host == "0.0.0.0", f"{name}: {key} must listen on all interfaces in a container"


def test_replicas_trust_the_forwarded_address_of_envoy_only(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """Per-address sign-in limits and the access log go by x-forwarded-for from trusted
    proxies: Envoy's fixed address (and loopback, the embedded gateway), not the whole
    network, whose other containers are no proxies."""
    envoy_address = ipaddress.ip_address(services["envoy"]["networks"]["default"]["ipv4_address"])
    subnets = [ipaddress.ip_network(c["subnet"]) for c in compose["networks"]["default"]["ipam"]["config"]]
    assert any(envoy_address in subnet for subnet in subnets), f"{envoy_address} is outside {subnets}"
    for name, replica in server_services(services).items():
        trusted = Settings(trusted_proxies=environment(replica)["SECURENOW_TRUSTED_PROXIES"]).trusted_proxy_networks
        outside_loopback = [n for n in trusted if n not in LOOPBACK_NETWORKS]
        assert outside_loopback == [ipaddress.ip_network(f"{envoy_address}/32")], f"{name}: {trusted}"


def test_only_envoy_is_published(services: dict[str, dict[str, Any]], envoy: dict[str, Any]) -> None:
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"envoy"}, f"only Envoy may publish ports (metrics stay internal): {published}"
    container_ports = set()
    for port in services["envoy"]["ports"]:
        target = str(port).rsplit(":", 1)[-1] if not isinstance(port, dict) else str(port["target"])
        container_ports.add(int(target.split("/")[0]))
    assert container_ports == {8080, 50051}
    assert container_ports == {listener_port(listener) for listener in listeners(envoy)}


def test_stateful_services_keep_their_data(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert "--appendonly" in command(services["redis"])
    assert command(services["redis"])[command(services["redis"]).index("--appendonly") + 1] == "yes"
    named = set(compose.get("volumes") or {})
    for name in ("postgres", "redis", "elasticsearch"):
        sources = {str(v).split(":", 1)[0] for v in services[name].get("volumes", [])}
        assert sources & named, f"{name} needs a named volume"


def test_compose_commands_exist_in_the_cli(
    services: dict[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    app_services = [s for s in services.values() if "SECURENOW_ENV" in environment(s)]
    for service in app_services:
        with pytest.raises(SystemExit) as exited:
            cli.main([*command(service), "--help"])
        assert exited.value.code == 0, f"`securenow {' '.join(command(service))}` is not a command"
    capsys.readouterr()


# Stand-ins for the variables compose requires (`${VAR:?message}`): values of the shape
# docs/deployment.md tells operators to generate.
STAND_INS = {
    "SECURENOW_SECRET_KEY": "k" * 64,
    "SECURENOW_DATA_KEY": base64.b64encode(bytes(range(32))).decode(),
    "POSTGRES_PASSWORD": "0123456789abcdef" * 3,
}
# Variables the server reads from the environment outside Settings.
ENV_READ = re.compile(r"""(?:environ\.get|getenv|environ\[)\(?\s*["'](SECURENOW_\w+)["']""")


def resolved(value: str) -> str:
    """A compose value as the server would see it: required variables set to their
    stand-ins, `${VAR:-default}` to its default."""

    def required(match: re.Match[str]) -> str:
        assert match[1] in STAND_INS, f"${{{match[1]}}} is required, but the test has no stand-in for it"
        return STAND_INS[match[1]]

    value = re.sub(r"\$\{(\w+):?\?[^}]*\}", required, value)
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)


def known_variables() -> set[str]:
    names = {f"SECURENOW_{name.upper()}" for name in Settings.model_fields}
    for source in (ROOT / "server" / "src").rglob("*.py"):
        names.update(ENV_READ.findall(source.read_text()))
    return names


def test_securenow_variables_are_ones_the_server_reads(services: dict[str, dict[str, Any]]) -> None:
    """Settings ignores unknown SECURENOW_* variables: a misspelt one in compose or the
    image would silently leave the default in force."""
    known = known_variables()
    assert {"SECURENOW_MIGRATIONS_DIR", "SECURENOW_GRPC_ADDR"} <= known
    given = {f"{name}: {key}" for name, s in services.items() for key in environment(s) if key.startswith("SECURENOW_")}
    given |= {
        f"Dockerfile: {key}" for stage in dockerfile_stages() for key in env_vars(stage) if key.startswith("SECURENOW_")
    }
    assert given
    unknown = sorted(item for item in given if item.split(": ")[1] not in known)
    assert not unknown, f"not read by the server (see server/src/securenow/server/settings.py): {unknown}"


def test_app_services_pass_the_servers_production_checks(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the image and compose set, with the required secrets given, is a valid
    production configuration: the server would start rather than exit on bad settings."""
    image_env = env_vars(dockerfile_stages()[-1])
    app_services = {n: s for n, s in services.items() if "SECURENOW_ENV" in environment(s)}
    assert set(server_services(services)) | {"migrate"} <= set(app_services)
    for name, service in app_services.items():
        for key in [k for k in os.environ if k.startswith("SECURENOW_")]:
            monkeypatch.delenv(key)
        for key, value in {**image_env, **environment(service)}.items():
            if key.startswith("SECURENOW_"):
                monkeypatch.setenv(key, resolved(value))
        try:
            settings = Settings()
        except (SettingsError, ValidationError) as exc:
            pytest.fail(f"{name}: `securenow` would refuse these settings: {exc}")
        assert settings.env is Environment.PRODUCTION, name
        assert len(settings.data_keys) == 1, f"{name}: SECURENOW_DATA_KEYS_OLD must default to none"


def test_redis_healthcheck_wants_pong(services: dict[str, dict[str, Any]]) -> None:
    """redis-cli exits 0 on an error reply too, e.g. LOADING while Redis reads its
    append-only file: the check must look at the answer."""
    test = healthcheck_test(services["redis"]) or []
    assert test[:1] == ["CMD-SHELL"], test
    assert re.search(r"redis-cli ping \| grep -\w*q\w* .*PONG", test[1]), test


# === Dockerfile =====================================================================


def test_dockerfile_copy_sources_exist_and_reach_the_build_context() -> None:
    rules = dockerignore_rules()
    checked = 0
    for stage in dockerfile_stages():
        for copy in copies(stage):
            if copy.from_stage is not None:
                continue
            for source in copy.sources:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: no such path in the repository"
                for rel in repository_files(path):
                    assert not ignored(rel, rules), f"{rel} is copied but excluded by .dockerignore"
                    checked += 1
    assert checked > 0
    for private in (".git/HEAD", ".venv/pyvenv.cfg", "var/dev.env", "node_modules/x", "tests/conftest.py"):
        assert ignored(private, rules), f"{private} would be sent to the Docker daemon"


def test_dockerfile_builds_a_venv_with_pinned_packages() -> None:
    stages = dockerfile_stages()
    runtime = stages[-1]
    builders = [stage for stage in stages if any("pip install" in run for run in stage.all("RUN"))]
    assert len(builders) == 1, "expected one stage that pip-installs the packages"
    builder = builders[0]
    runs = " && ".join(builder.all("RUN"))
    installs = re.findall(r"pip install (?:-c|--constraint) requirements/constraints\.txt (?:\./)?(\S+)", runs)
    assert [i.rstrip("/") for i in installs] == ["clients/python", "server"], installs
    venv_copies = [c for c in copies(runtime) if c.from_stage == builder.name]
    assert Copy(("/opt/venv",), "/opt/venv", builder.name) in venv_copies, "the runtime stage must copy the venv"
    assert runtime.image == builder.image == "python:3.11-slim-bookworm"
    assert env_vars(runtime)["PATH"].startswith("/opt/venv/bin:")


def test_dockerfile_runtime_stage() -> None:
    runtime = dockerfile_stages()[-1]
    user = runtime.last("USER")
    assert user is not None, "no USER: the container runs as root"
    assert user.split(":")[0] not in ("root", "0"), f"runs as root: USER {user}"
    assert exec_form(runtime.last("ENTRYPOINT") or "null") == ["securenow"]
    assert exec_form(runtime.last("CMD") or "null") == ["serve"]
    scripts = tomllib.loads((ROOT / "server" / "pyproject.toml").read_text())["project"]["scripts"]
    assert "securenow" in scripts, "ENTRYPOINT securenow is not a console script of securenow-server"
    healthcheck = runtime.last("HEALTHCHECK") or ""
    _, http_port = split_addr(env_vars(runtime)["SECURENOW_HTTP_ADDR"])
    assert "urllib.request" in healthcheck, "HEALTHCHECK must use Python's stdlib (no curl in slim images)"
    assert f"http://127.0.0.1:{http_port}/healthz" in healthcheck
    for var in REQUIRED_SECRETS:
        assert var not in env_vars(runtime), f"{var} baked into the image"


def test_dockerfile_sets_the_migrations_dir_to_the_copied_migrations() -> None:
    runtime = dockerfile_stages()[-1]
    dests = [c.dest for c in copies(runtime) if c.from_stage is None and c.sources == ("migrations",)]
    assert dests, "the runtime stage does not copy migrations/"
    configured = env_vars(runtime).get("SECURENOW_MIGRATIONS_DIR")
    assert configured is not None, "SECURENOW_MIGRATIONS_DIR is not set in the runtime image"
    assert configured.rstrip("/") == dests[0].rstrip("/")
    assert any((ROOT / "migrations").glob("*.sql"))


def test_dockerfile_ships_the_console_where_the_server_looks() -> None:
    if "console_dir" not in Settings.model_fields:
        pytest.skip("this server has no console setting (SECURENOW_CONSOLE_DIR)")
    stages = dockerfile_stages()
    runtime = stages[-1]
    configured = env_vars(runtime).get("SECURENOW_CONSOLE_DIR")
    assert configured, (
        "set SECURENOW_CONSOLE_DIR: the default (a source checkout's clients/web/dist) is not in the image"
    )
    built = [c for c in copies(runtime) if c.from_stage is not None and c.dest.rstrip("/") == configured.rstrip("/")]
    assert built, f"nothing is copied to {configured} in the runtime stage"
    console = next(stage for stage in stages if stage.name == built[0].from_stage)
    assert any("npm run build" in run for run in console.all("RUN")), "the console stage must build the console"


def test_dockerfile_exposes_the_ports_compose_uses(services: dict[str, dict[str, Any]]) -> None:
    runtime = dockerfile_stages()[-1]
    exposed = {int(p.split("/")[0]) for args in runtime.all("EXPOSE") for p in args.split()}
    image_env = env_vars(runtime)
    for key in ("SECURENOW_GRPC_ADDR", "SECURENOW_HTTP_ADDR"):
        host, port = split_addr(image_env[key])
        assert host == "0.0.0.0", f"image {key}={image_env[key]}: listen on all interfaces"
        assert port in exposed, f"image {key}={image_env[key]}, EXPOSE {exposed}"
    for name, replica in server_services(services).items():
        for key in ("SECURENOW_GRPC_ADDR", "SECURENOW_HTTP_ADDR"):
            _, port = split_addr(environment(replica)[key])
            assert port in exposed, f"{name} listens on {port}, the image does not EXPOSE it"


def split_image(image: str) -> tuple[str, str]:
    """(repository, tag or @digest); an empty tag means `latest`."""
    if "@" in image:
        repository, _, digest = image.partition("@")
        return repository, "@" + digest
    if ":" not in image.rsplit("/", 1)[-1]:
        return image, ""
    repository, _, tag = image.rpartition(":")
    return repository, tag


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    """No `latest` and no moving `-latest` tags: a rebuild or a `docker compose pull`
    must not change what runs. What runs (services, the runtime base) names a major.minor
    at least, a build stage a major (its lockfile pins the rest); Envoy an exact release,
    the one deploy/envoy.yaml is written for."""
    stages = dockerfile_stages()
    images = {name: str(s["image"]) for name, s in services.items() if "build" not in s}
    assert {"postgres", "redis", "elasticsearch", "envoy"} <= set(images)
    build_only = {f"Dockerfile stage {stage.name}": stage.image for stage in stages[:-1]}
    images |= build_only | {f"Dockerfile stage {stages[-1].name}": stages[-1].image}
    for where, image in images.items():
        _, tag = split_image(image)
        assert tag, f"{where}: {image} has no tag (latest)"
        if tag.startswith("@sha256:"):
            continue
        assert "latest" not in tag, f"{where}: {image} is a moving tag"
        version = r"v?\d+" if where in build_only else r"v?\d+[.-]\d+"
        assert re.match(version, tag), f"{where}: {image}: pin a version ({version})"
    _, envoy_tag = split_image(images["envoy"])
    assert re.fullmatch(r"v\d+\.\d+\.\d+", envoy_tag), f"envoy: pin an exact release, not {envoy_tag}"


def test_elasticsearch_is_not_older_than_the_python_client(services: dict[str, dict[str, Any]]) -> None:
    """Elastic's clients support servers of the same major and their own minor or newer."""
    _, tag = split_image(str(services["elasticsearch"]["image"]))
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"elasticsearch: pin an exact release, not {tag}"
    server = tuple(int(part) for part in tag.split(".")[:2])
    client = tuple(int(part) for part in pinned("elasticsearch").split(".")[:2])
    assert server[0] == client[0], f"Elasticsearch {tag} and the {pinned('elasticsearch')} client differ in major"
    assert server >= client, f"Elasticsearch {tag} is older than the Python client {pinned('elasticsearch')}"


# === deploy/envoy.yaml ==============================================================


def test_every_routed_cluster_exists(envoy: dict[str, Any]) -> None:
    known = set(clusters(envoy))
    routed = 0
    for listener, route in all_routes(envoy):
        action = route.get("route")
        if action is None:
            assert "direct_response" in route or "redirect" in route, f"{listener}: route without an action"
            continue
        targets = (
            [action["cluster"]] if "cluster" in action else [c["name"] for c in action["weighted_clusters"]["clusters"]]
        )
        for target in targets:
            assert target in known, f"{listener} routes to unknown cluster {target}"
            routed += 1
    assert routed > 0


def test_upstreams_are_the_compose_replicas_on_their_ports(
    envoy: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    replicas = server_services(services)
    for name, cluster in clusters(envoy).items():
        assert cluster["load_assignment"]["cluster_name"] == name
        key = "SECURENOW_GRPC_ADDR" if is_grpc_cluster(cluster) else "SECURENOW_HTTP_ADDR"
        hosts = endpoints(cluster)
        for host, port in hosts:
            assert host in services, f"cluster {name}: {host} is not a compose service"
            assert host in replicas, f"cluster {name}: {host} does not run `securenow serve`"
            _, listening = split_addr(environment(services[host])[key])
            assert port == listening, f"cluster {name}: {host}:{port}, but {host} has {key} port {listening}"
        assert {h for h, _ in hosts} == set(replicas), f"cluster {name} must list every replica"


def test_browser_listener_filters_grpc_web_then_cors_then_router(envoy: dict[str, Any]) -> None:
    filters = [f["name"] for f in hcm(browser_listener(envoy))["http_filters"]]
    wanted = ["envoy.filters.http.grpc_web", "envoy.filters.http.cors", "envoy.filters.http.router"]
    assert [f for f in filters if f in wanted] == wanted, filters
    assert filters[-1] == "envoy.filters.http.router", "the router must be the last HTTP filter"
    for listener in listeners(envoy):
        for f in hcm(listener)["http_filters"]:
            assert "@type" in f.get("typed_config", {}), f"{f['name']} has no typed_config"


def test_browser_cors_policy(envoy: dict[str, Any]) -> None:
    manager = hcm(browser_listener(envoy))
    policies = [
        vhost.get("typed_per_filter_config", {}).get("envoy.filters.http.cors")
        for vhost in manager["route_config"]["virtual_hosts"]
    ]
    assert policies, "the browser listener has no virtual host"
    assert all(policies), "every browser virtual host needs a CORS policy"
    for policy in policies:
        assert policy["@type"] == "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
        assert policy["allow_origin_string_match"], "no allowed origins"
        allow = {h.strip() for h in policy["allow_headers"].split(",")}
        assert {"content-type", "x-grpc-web", "x-user-agent", "authorization", "grpc-timeout"} <= allow
        expose = {h.strip() for h in policy["expose_headers"].split(",")}
        assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= expose


def test_browser_routes(envoy: dict[str, Any]) -> None:
    manager = hcm(browser_listener(envoy))
    grpc = grpc_cluster_name(envoy)
    http = next(name for name in clusters(envoy) if name != grpc)
    for path in [*grpc_method_paths(), "/grpc.health.v1.Health/Check"]:
        assert routed_cluster(manager, path) == grpc, path
    for path in ("/", "/healthz", "/index.html", "/assets/app.js"):
        assert routed_cluster(manager, path) == http, path
    for path in ("/metrics", "/metrics/"):
        route = route_for(manager, path) or {}
        assert route.get("direct_response", {}).get("status") == 404, f"{path} is exposed"


def test_native_grpc_listener(envoy: dict[str, Any]) -> None:
    listener = native_listener(envoy)
    assert listener_port(listener) == 50051
    manager = hcm(listener)
    assert manager.get("codec_type", "AUTO") in ("HTTP2", "AUTO")
    grpc = grpc_cluster_name(envoy)
    for path in grpc_method_paths():
        assert routed_cluster(manager, path) == grpc, path
    for listener in listeners(envoy):
        assert listener["address"]["socket_address"]["address"] == "0.0.0.0"


def test_grpc_cluster_is_http2_with_grpc_health_checks(envoy: dict[str, Any]) -> None:
    cluster = clusters(envoy)[grpc_cluster_name(envoy)]
    options = cluster["typed_extension_protocol_options"][HTTP_PROTOCOL_OPTIONS]
    assert options["@type"] == f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"
    keepalive = options["explicit_http_config"]["http2_protocol_options"].get("connection_keepalive")
    # The server refuses pings more often than every 5 s (runtime.SERVER_OPTIONS).
    assert keepalive, "HTTP/2 keepalive to the replicas finds dead connections"
    assert seconds(keepalive["interval"]) >= 5
    checks = cluster.get("health_checks") or []
    assert any("grpc_health_check" in c for c in checks), "gRPC cluster without grpc.health.v1 checks"


def test_http_cluster_is_http1_with_healthz_checks(envoy: dict[str, Any]) -> None:
    grpc = grpc_cluster_name(envoy)
    for name, cluster in clusters(envoy).items():
        if name == grpc:
            continue
        options = cluster.get("typed_extension_protocol_options", {}).get(HTTP_PROTOCOL_OPTIONS, {})
        assert "http2_protocol_options" not in options.get("explicit_http_config", {}), name
        paths = [c["http_health_check"]["path"] for c in cluster.get("health_checks", []) if "http_health_check" in c]
        assert paths == ["/healthz"], f"cluster {name}: health check paths {paths}"


def test_grpc_routes_never_cut_streams(envoy: dict[str, Any]) -> None:
    grpc = grpc_cluster_name(envoy)
    streaming = {p for p, is_streaming in grpc_method_paths().items() if is_streaming}
    assert streaming >= LONG_LIVED, f"missing streaming methods: {LONG_LIVED - streaming}"
    for listener in listeners(envoy):
        manager = hcm(listener)
        assert seconds(manager.get("request_timeout", "0s")) == 0, "request_timeout would end client streams"
        common = manager.get("common_http_protocol_options", {})
        assert "max_connection_duration" not in common
        for path in streaming:
            route = route_for(manager, path)
            if route is None:
                continue  # not routed on this listener (checked per listener above)
            action = route["route"]
            assert action["cluster"] == grpc
            assert seconds(action.get("timeout", "15s")) == 0, f"{listener['name']} {path}: route timeout"
            assert seconds(action.get("idle_timeout", manager.get("stream_idle_timeout", "300s"))) == 0, path
            limit = action.get("max_stream_duration", {}).get("max_stream_duration")
            if limit is None:
                limit = common.get("max_stream_duration", "0s")
            assert seconds(limit) == 0, f"{listener['name']} {path}: max_stream_duration {limit}"
    cluster_common = clusters(envoy)[grpc]["typed_extension_protocol_options"][HTTP_PROTOCOL_OPTIONS].get(
        "common_http_protocol_options", {}
    )
    assert "max_stream_duration" not in cluster_common
    assert "max_connection_duration" not in cluster_common


def test_envoy_admin_is_loopback_only(envoy: dict[str, Any]) -> None:
    assert envoy["admin"]["address"]["socket_address"]["address"] in ("127.0.0.1", "::1")


def test_envoy_access_logs_carry_the_grpc_status(envoy: dict[str, Any]) -> None:
    """A failed gRPC call is HTTP 200 with a grpc-status: Envoy's default log line would
    show every one as a success. Credentials never go to the log."""
    for listener in listeners(envoy):
        manager = hcm(listener)
        logs = manager.get("access_log") or []
        assert logs, f"{listener['name']}: no access log"
        for log in logs:
            log_format = json.dumps(log.get("typed_config", {}).get("log_format", {})).upper()
            assert "%GRPC_STATUS" in log_format, f"{listener['name']}: the access log lacks %GRPC_STATUS%"
            for secret in ("AUTHORIZATION", "COOKIE", "%REQ(GRPC-", "DOWNSTREAM_PEER_CERT"):
                assert secret not in log_format, f"{listener['name']}: the access log records {secret}"
        # Streams that stay open for days are logged while open too.
        interval = manager.get("access_log_options", {}).get("access_log_flush_interval")
        assert interval, f"{listener['name']}: no access_log_flush_interval"
        assert 0 < seconds(interval) <= 3600, f"{listener['name']}: access_log_flush_interval {interval}"


def test_downstream_http2_has_edge_limits_and_keepalive(envoy: dict[str, Any]) -> None:
    """Envoy's HTTP/2 defaults (2^31 streams, 256 MiB windows) trust the peer; on the
    edge a client gets what it needs. Keepalive pings find CAD systems that vanished."""
    for listener in listeners(envoy):
        options = hcm(listener).get("http2_protocol_options") or {}
        assert 0 < int(options.get("max_concurrent_streams", 2**31 - 1)) <= 1000, listener["name"]
        assert int(options.get("initial_stream_window_size", 256 << 20)) <= 1 << 20, listener["name"]
        assert int(options.get("initial_connection_window_size", 256 << 20)) <= 16 << 20, listener["name"]
        keepalive = options.get("connection_keepalive") or {}
        assert keepalive.get("interval"), f"{listener['name']}: no HTTP/2 keepalive"
        assert keepalive.get("timeout"), f"{listener['name']}: no HTTP/2 keepalive timeout"


# Parses Envoy YAML files strictly into envoy.config.bootstrap.v3.Bootstrap, loading the
# module of every `@type` first so each typed_config is checked against its own message,
# then walks the parsed message (into every typed_config) for fields and enum values
# Envoy marks deprecated: they warn today and go in a later release.
# Prints {file: error or ""} as JSON. Runs in a subprocess with xds-protos on its path.
PARSE_ENVOY = """
import importlib, json, pkgutil, sys
import yaml
from google.protobuf import descriptor_pool, json_format, message_factory
from envoy.config.bootstrap.v3 import bootstrap_pb2

def type_urls(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "@type":
                yield value
            else:
                yield from type_urls(value)
    elif isinstance(node, list):
        for value in node:
            yield from type_urls(value)

def repeated(field):
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == field.LABEL_REPEATED

def deprecated(message, path):
    if message.DESCRIPTOR.full_name == "google.protobuf.Any":
        name = message.type_url.rpartition("/")[2]
        inner = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(name))()
        message.Unpack(inner)
        yield from deprecated(inner, path)
        return
    for field, value in message.ListFields():
        where = f"{path}.{field.name}"
        if field.GetOptions().deprecated:
            yield where
        if field.enum_type is not None:
            for number in value if repeated(field) else [value]:
                enum_value = field.enum_type.values_by_number.get(number)
                if enum_value is not None and enum_value.GetOptions().deprecated:
                    yield f"{where}={enum_value.name}"
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = [(f"{where}[{k}]", v) for k, v in value.items() if hasattr(v, "ListFields")]
        elif repeated(field):
            items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
        else:
            items = [(where, value)]
        for item_path, item in items:
            yield from deprecated(item, item_path)

def parse(path):
    data = yaml.safe_load(open(path))
    for url in sorted(set(type_urls(data))):
        package = url.rpartition("/")[2].rpartition(".")[0]
        try:
            module = importlib.import_module(package)
        except ImportError:
            return f"unknown @type {url}"
        for info in pkgutil.iter_modules(module.__path__):
            if info.name.endswith("_pb2"):
                importlib.import_module(package + "." + info.name)
    try:
        bootstrap = json_format.ParseDict(data, bootstrap_pb2.Bootstrap())
    except json_format.ParseError as exc:
        return str(exc)[:500]
    old = list(deprecated(bootstrap, ""))
    return f"deprecated in Envoy's API: {', '.join(old)}" if old else ""

print(json.dumps({path: parse(path) for path in sys.argv[1:]}))
"""


def pinned(package: str) -> str:
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in requirements/constraints.txt")


def xds_protos() -> Path:
    """xds-protos, installed on first use into a directory of its own (see
    requirements/envoy-schema.txt for why not into the environment itself)."""
    target = Path(sys.prefix) / "xds-protos" / pinned("xds-protos")
    if (target / "envoy").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=target.parent))
    requirements = ROOT / "requirements"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    pip += ["--target", str(staging), "-c", str(requirements / "constraints.txt")]
    installed = subprocess.run(
        [*pip, "-r", str(requirements / "envoy-schema.txt")], capture_output=True, text=True, timeout=300, check=False
    )
    if installed.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise AssertionError(f"could not install xds-protos (PyPI needed once):\n{installed.stderr}")
    try:
        staging.rename(target)
    except OSError:  # another run installed it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return target


def parse_envoy_configs(*paths: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(xds_protos())}
    command = [sys.executable, "-c", PARSE_ENVOY, *map(str, paths)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    parsed: dict[str, str] = json.loads(result.stdout)
    return parsed


def test_envoy_config_parses_strictly_as_an_envoy_bootstrap(tmp_path: Path, envoy: dict[str, Any]) -> None:
    """Every field name, enum and typed_config of deploy/envoy.yaml is Envoy's (a typo
    fails here even where no `envoy` binary is installed), and none is deprecated."""
    broken: dict[str, Callable[[dict[str, Any]], None]] = {
        "field-typo": lambda c: c["static_resources"]["clusters"][0].update(conect_timeout="1s"),
        "typed-config-typo": lambda c: hcm(c["static_resources"]["listeners"][0])["http_filters"][0][
            "typed_config"
        ].update(emit_dynamic_metdata=True),
        "unknown-type": lambda c: c["static_resources"]["clusters"][0]["typed_extension_protocol_options"][
            HTTP_PROTOCOL_OPTIONS
        ].update({"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v9.HttpProtocolOptions"}),
        "bad-enum": lambda c: c["static_resources"]["clusters"][0].update(lb_policy="LEAST_REQUESTS"),
        # Valid, but deprecated since v3.0 (typed_extension_protocol_options replaces it).
        "deprecated-field": lambda c: c["static_resources"]["clusters"][0].update(http2_protocol_options={}),
        # Inside a typed_config: moved to access_log_options.
        "deprecated-in-typed-config": lambda c: hcm(c["static_resources"]["listeners"][0]).update(
            flush_access_log_on_new_request=True
        ),
    }
    files = {}
    for name, mutate in broken.items():
        config = deepcopy(envoy)
        mutate(config)
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(config))
    errors = parse_envoy_configs(ENVOY_FILE, *files.values())
    assert errors[str(ENVOY_FILE)] == "", errors[str(ENVOY_FILE)]
    for name, path in files.items():
        assert errors[str(path)], f"the {name} mutation of envoy.yaml parsed: the check is not strict"
        if name.startswith("deprecated"):
            assert errors[str(path)].startswith("deprecated in Envoy's API"), errors[str(path)]


def test_envoy_validates_the_config() -> None:
    binary = shutil.which("envoy")
    if binary is None:
        pytest.skip("envoy is not on PATH: `envoy --mode validate` not run (the YAML checks above still apply)")
    result = subprocess.run(
        [binary, "--mode", "validate", "-c", str(ENVOY_FILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
