"""docker-compose.yml, checked with the real Compose v2 binary (no Docker engine needed for `config`), and
the redis service's shell snippets run against stand-ins for the image's programs."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.conftest import ROOT
from tests.deploy.conftest import (
    ALERTMANAGER_CONFIG,
    COMPOSE_FILE,
    COMPOSE_GPU_FILE,
    DASHBOARD,
    DATASOURCES,
    DOCKERFILE,
    ENV_EXAMPLE,
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    load_yaml,
)

SERVICES = {"redis", "trainer", "vigil", "prometheus", "alertmanager", "grafana", "replay"}
PROFILES = {  # services that start only with their profile
    "replay": {"replay"},
    "proxy": {"proxy"},
    "source": {"node-exporter", "source-trainer"},
}
NGINX_CONF = ROOT / "deploy" / "nginx" / "vigil.conf"


def run_compose(
    binary: Path, *args: str, env_file: Path = ENV_EXAMPLE, gpu: bool = False
) -> subprocess.CompletedProcess[str]:
    files = ["-f", str(COMPOSE_FILE)] + (["-f", str(COMPOSE_GPU_FILE)] if gpu else [])
    # A clean environment: variables of the caller's shell would override the env file.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(ROOT / ".venv")}
    return subprocess.run(
        [str(binary), "--project-directory", str(ROOT), *files, "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def rendered(binary: Path, *, gpu: bool = False, profiles: tuple[str, ...] = ("replay",)) -> dict[str, Any]:
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run_compose(binary, *args, "config", "--format", "json", gpu=gpu)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def dockerfile_stages() -> set[str]:
    return set(
        re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(), flags=re.MULTILINE | re.IGNORECASE)
    )


def test_compose_file_validates_with_the_env_example(compose_binary: Path) -> None:
    raw = load_yaml(COMPOSE_FILE)
    assert "version" not in raw, "the Compose specification has no top-level version key"
    config = rendered(compose_binary)
    assert set(config["services"]) == SERVICES
    vigil = config["services"]["vigil"]
    assert vigil["depends_on"]["redis"]["condition"] == "service_healthy"
    assert vigil["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    password = env_example()["REDIS_PASSWORD"]
    url = urlparse(vigil["environment"]["VIGIL_REDIS_URL"])
    assert (url.scheme, url.hostname, url.port, url.password) == ("redis", "redis", 6379, password)
    redis = config["services"]["redis"]
    assert redis["environment"]["REDIS_PASSWORD"] == password
    assert "--appendonly yes --appendfsync everysec" in redis["command"][-1]
    assert "REDIS_PASSWORD" in redis["healthcheck"]["test"][-1]
    assert config["services"]["trainer"]["build"]["target"] == "trainer"
    assert config["services"]["replay"]["depends_on"]["vigil"]["condition"] == "service_healthy"


def test_compose_replay_and_proxy_services_are_behind_their_profiles(compose_binary: Path) -> None:
    assert set(rendered(compose_binary, profiles=())["services"]) == SERVICES - {"replay"}
    for profile, services in PROFILES.items():
        with_profile = set(rendered(compose_binary, profiles=(profile,))["services"])
        assert with_profile == (SERVICES - {"replay"}) | services
    listed = run_compose(compose_binary, "config", "--profiles")
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.split()) == sorted(PROFILES)


def test_compose_proxy_fronts_vigil_with_the_nginx_config(compose_binary: Path) -> None:
    """The proxy starts once vigil is healthy, mounts deploy/nginx/vigil.conf over the image's default site,
    listens where it is published, and sends to vigil's service name and port."""
    services = rendered(compose_binary, profiles=("proxy",))["services"]
    proxy = services["proxy"]
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+-alpine", proxy["image"]), "pin the nginx image"
    assert proxy["depends_on"]["vigil"]["condition"] == "service_healthy"
    (mount,) = proxy["volumes"]
    assert (mount["type"], Path(mount["source"]), mount["target"]) == (
        "bind",
        NGINX_CONF,
        "/etc/nginx/conf.d/default.conf",
    )
    conf = NGINX_CONF.read_text()
    (listen,) = re.findall(r"^\s*listen\s+(\d+);", conf, re.M)
    (port,) = proxy["ports"]
    assert (port["host_ip"], port["target"]) == ("127.0.0.1", int(listen))  # loopback unless told otherwise
    assert proxy["healthcheck"]["test"][-1] == f"http://127.0.0.1:{listen}/healthz"
    (upstream,) = re.findall(r"^\s*server\s+([\w.-]+):(\d+)\b", conf, re.M)
    assert upstream[0] in services and services[upstream[0]]["environment"]["VIGIL_PORT"] == upstream[1]


def test_compose_gpu_override_reserves_a_gpu_for_vigil_only(compose_binary: Path) -> None:
    def reservations(config: dict[str, Any]) -> dict[str, Any]:
        return {
            name: service["deploy"]["resources"]["reservations"]["devices"]
            for name, service in config["services"].items()
            if "deploy" in service
        }

    assert reservations(rendered(compose_binary)) == {}, "the base file must start on hosts without a GPU"
    (device,) = reservations(rendered(compose_binary, gpu=True))["vigil"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert int(device["count"]) == 1


def test_compose_references_resolve_to_existing_paths_volumes_and_stages(compose_binary: Path) -> None:
    for gpu in (False, True):
        config = rendered(compose_binary, gpu=gpu, profiles=tuple(PROFILES))
        declared_volumes = set(config.get("volumes", {}))
        stages = dockerfile_stages()
        for name, service in config["services"].items():
            for mount in service.get("volumes", []):
                if mount["type"] == "bind":
                    assert Path(mount["source"]).exists(), f"{name}: bind source {mount['source']} is missing"
                    assert mount.get("read_only"), f"{name}: config bind mounts are read-only"
                else:
                    assert mount["source"] in declared_volumes, (
                        f"{name}: volume {mount['source']} is not declared"
                    )
            for env_file in service.get("env_file", []):
                assert Path(env_file["path"]).is_file(), f"{name}: env_file {env_file['path']} is missing"
            if "build" in service:
                context = Path(service["build"]["context"])
                assert (context / service["build"]["dockerfile"]).is_file()
                assert service["build"]["target"] in stages, f"{name}: no stage {service['build']['target']}"
            for dependency in service.get("depends_on", {}):
                assert dependency in config["services"], f"{name} depends on unknown {dependency}"


def test_compose_refuses_to_render_without_a_redis_password(compose_binary: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("VIGIL_API_KEYS=[]\nREPLAY_API_KEY=k\n")  # everything but the password
    result = run_compose(compose_binary, "config", "--quiet", env_file=empty)
    assert result.returncode != 0
    assert "REDIS_PASSWORD is not set" in result.stderr


def test_compose_refuses_to_render_without_api_keys(compose_binary: Path, tmp_path: Path) -> None:
    env = tmp_path / "keyless.env"
    env.write_text("REDIS_PASSWORD=abcdef0123456789\nREPLAY_API_KEY=k\n")
    result = run_compose(compose_binary, "config", "--quiet", env_file=env)
    assert result.returncode != 0
    assert "VIGIL_API_KEYS is not set" in result.stderr


def test_compose_wiring_matches_the_prometheus_and_grafana_configs(compose_binary: Path) -> None:
    config = rendered(compose_binary)
    services = config["services"]
    (scrape,) = [
        job
        for job in load_yaml(PROMETHEUS_DIR / "prometheus.yml")["scrape_configs"]
        if job["job_name"] == "vigil"
    ]
    (discovery,) = scrape["dns_sd_configs"]
    (host,) = discovery["names"]
    assert host in services and services[host]["environment"]["VIGIL_PORT"] == str(discovery["port"])

    prometheus_mounts = {m["target"]: Path(m["source"]) for m in services["prometheus"]["volumes"]}
    assert prometheus_mounts["/etc/prometheus"] == PROMETHEUS_DIR
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]

    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    assert urlparse(datasource["url"]).hostname == "prometheus"
    assert urlparse(datasource["url"]).port == 9090
    grafana = services["grafana"]
    grafana_mounts = {m["target"]: Path(m["source"]) for m in grafana["volumes"]}
    assert grafana_mounts["/etc/grafana/provisioning"] == GRAFANA_DIR / "provisioning"
    (provider,) = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "vigil.yml")["providers"]
    dashboards_path = provider["options"]["path"]
    assert grafana_mounts[dashboards_path] == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(dashboards_path) and (DASHBOARD.parent / Path(home).name).is_file()
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_env_example_secrets_are_placeholders_the_stack_refuses() -> None:
    """Copying .env.example without editing it must not start a stack with known secrets."""
    from pydantic import ValidationError

    from service.settings import APIKey

    values = env_example()
    assert values["REDIS_PASSWORD"].upper().startswith("CHANGE-ME")  # the redis entrypoint refuses it
    for key in json.loads(values["VIGIL_API_KEYS"]):
        with pytest.raises(ValidationError, match="placeholder"):
            APIKey(**key)
    assert "REPLACE" in values["REPLAY_API_KEY"]


def _stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture
def redis_shell(compose_binary: Path, tmp_path: Path) -> dict[str, Any]:
    """The redis service's command and healthcheck scripts, runnable here: ``docker-entrypoint.sh`` and
    ``redis-cli`` are replaced by stand-ins that record their arguments or check the password."""
    redis = rendered(compose_binary, profiles=())["services"]["redis"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "docker-entrypoint.sh", f'printf "%s\\n" "$@" > {tmp_path}/entrypoint-args\n')
    _stub(
        bin_dir,
        "redis-cli",
        '[ "$REDISCLI_AUTH" = "s3cret" ] && [ "$1" = ping ] && echo PONG || echo NOAUTH\n',
    )
    return {
        # Compose prints runtime `$` as `$$`; the container's shell sees single ones.
        "command": redis["command"][-1].replace("$$", "$"),
        "healthcheck": redis["healthcheck"]["test"][-1].replace("$$", "$"),
        "path": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "args_file": tmp_path / "entrypoint-args",
    }


def test_redis_command_refuses_the_placeholder_password_and_passes_a_real_one(
    redis_shell: dict[str, Any],
) -> None:
    def start(password: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": redis_shell["path"], "REDIS_PASSWORD": password}
        return subprocess.run(
            ["sh", "-c", redis_shell["command"]], capture_output=True, text=True, env=env, timeout=10
        )

    refused = start(env_example()["REDIS_PASSWORD"])
    assert refused.returncode == 64 and "set REDIS_PASSWORD" in refused.stderr
    assert not redis_shell["args_file"].exists()
    started = start("s3cret")
    assert started.returncode == 0, started.stderr
    assert redis_shell["args_file"].read_text().split("\n")[:-1] == [
        "redis-server",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--requirepass",
        "s3cret",
    ]


def test_redis_healthcheck_authenticates_with_the_password(redis_shell: dict[str, Any]) -> None:
    def check(password: str) -> int:
        env = {"PATH": redis_shell["path"], "REDIS_PASSWORD": password}
        return subprocess.run(["sh", "-c", redis_shell["healthcheck"]], env=env, timeout=10).returncode

    assert check("s3cret") == 0
    assert check("wrong") != 0


def test_compose_alertmanager_receives_vigil_and_prometheus_alerts(compose_binary: Path) -> None:
    """Vigil posts its alerts to the alertmanager service, Prometheus sends its rule alerts there, and the
    service runs the repository's config from its mount."""
    from service.settings import AlertmanagerSettings

    services = rendered(compose_binary)["services"]
    alertmanager = services["alertmanager"]
    assert re.fullmatch(r"prom/alertmanager:v\d+\.\d+\.\d+", alertmanager["image"]), "pin the image"
    mounts = {m["target"]: Path(m["source"]) for m in alertmanager["volumes"] if m["type"] == "bind"}
    config_flag = next(a for a in alertmanager["command"] if a.startswith("--config.file="))
    config_path = Path(config_flag.split("=", 1)[1])
    assert mounts[str(config_path.parent)] / config_path.name == ALERTMANAGER_CONFIG
    assert any(m["type"] == "volume" and m["target"] == "/alertmanager" for m in alertmanager["volumes"])
    assert "--storage.path=/alertmanager" in alertmanager["command"]
    (port,) = alertmanager["ports"]
    assert (port["host_ip"], port["target"]) == ("127.0.0.1", 9093)

    vigil = services["vigil"]["environment"]
    (url,) = AlertmanagerSettings(urls=json.loads(vigil["VIGIL_ALERTMANAGER__URLS"])).urls
    assert (urlparse(url).hostname, urlparse(url).port) == ("alertmanager", port["target"])
    assert urlparse(vigil["VIGIL_PUBLIC_URL"]).scheme in ("http", "https")

    (alerting,) = load_yaml(PROMETHEUS_DIR / "prometheus.yml")["alerting"]["alertmanagers"]
    (static,) = alerting["static_configs"]
    assert static["targets"] == [f"alertmanager:{port['target']}"]
