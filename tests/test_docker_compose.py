"""docker-compose.yml and the Dockerfile cannot run here (no Docker engine):
check what can be checked without one — structure, files, ports, URLs,
environment and commands are consistent with the code, deploy/nginx.conf renders
with the environment nginx gets, and the certificate step works."""

import importlib.util
import re
import shlex
import subprocess
import sys
import urllib.parse
from pathlib import Path

import yaml

from cds_service.cli import build_parser
from cds_service.hooks.config import Settings
from cds_service.hooks.store import DatabaseUrl

ROOT = Path(__file__).parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
NGINX = SERVICES["nginx"]
NGINX_ENV = {k: str(v) for k, v in NGINX["environment"].items()}

_spec = importlib.util.spec_from_file_location("nginx_conf", ROOT / "deploy" / "nginx_conf.py")
nginx_conf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nginx_conf)


def _port_flag(command):
    return int(command[command.index("--port") + 1])


def _mounts(service: dict) -> dict[str, str]:
    """container path -> source (a named volume or ./path) of a service's volumes."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def test_services_and_pinned_images():
    assert set(SERVICES) == {"hapi", "loader", "postgres", "redis", "cds-service", "tls-init", "nginx"}
    image = SERVICES["hapi"]["image"]
    assert re.fullmatch(r"hapiproject/hapi:v\d+\.\d+\.\d+(-\d+)?", image), image  # pinned, never latest
    for name in ("postgres", "redis", "nginx"):
        assert re.fullmatch(rf"{name}:\d+\.\d+(\.\d+)?", SERVICES[name]["image"]), SERVICES[name]["image"]  # pinned
    for name in ("loader", "cds-service", "tls-init"):
        assert SERVICES[name]["build"] == "."
    assert (ROOT / "Dockerfile").is_file() and (ROOT / ".dockerignore").is_file()


def test_start_order_and_health():
    def after(name):
        return {k: v["condition"] for k, v in SERVICES[name]["depends_on"].items()}

    assert after("loader") == {"hapi": "service_started"}
    assert after("cds-service") == {"loader": "service_completed_successfully", "postgres": "service_healthy",
                                    "redis": "service_healthy"}
    assert after("nginx") == {"cds-service": "service_healthy", "tls-init": "service_completed_successfully"}
    check = SERVICES["cds-service"]["healthcheck"]["test"]
    assert check[0] == "CMD" and "/readyz" in " ".join(check)
    assert SERVICES["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert SERVICES["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "HEALTHCHECK" in DOCKERFILE and "/healthz" in DOCKERFILE


def test_two_replicas_behind_nginx_and_only_nginx_published():
    assert SERVICES["cds-service"]["deploy"]["replicas"] == 2
    assert "ports" not in SERVICES["cds-service"]  # two replicas cannot share a host port; clients use nginx
    assert "container_name" not in SERVICES["cds-service"]  # would allow one replica only
    published = [p for s in SERVICES.values() for p in s.get("ports", [])]
    assert sorted(published) == sorted(["8081:8080", "8443:443"])  # HAPI for browsing, nginx for clients


def test_commands_parse_with_the_cli_and_ports_match():
    parser = build_parser()
    loader = parser.parse_args(SERVICES["loader"]["command"][1:])
    assert loader.command == "harness" and loader.load_only
    service_cmd = SERVICES["cds-service"]["command"]
    served = parser.parse_args(service_cmd[1:])
    assert served.command == "serve" and served.host == "0.0.0.0" and served.insecure_no_auth
    assert served.workers == 2
    # nginx's upstream is the service's name and port; nginx listens where it is published.
    host, port = NGINX_ENV["CDS_PROXY_UPSTREAM"].split(":")
    assert host == "cds-service" and int(port) == served.port
    host_port, container_port = NGINX["ports"][0].split(":")
    assert container_port == NGINX_ENV["CDS_PROXY_HTTPS_PORT"]
    cmd = re.search(r'^CMD (\[.*\])$', DOCKERFILE, re.M).group(1)
    image_cmd = yaml.safe_load(cmd)
    assert parser.parse_args(image_cmd[1:]).command == "serve"
    assert f"EXPOSE {_port_flag(image_cmd)}" in DOCKERFILE
    assert SERVICES["hapi"]["ports"][0].endswith(":8080")  # HAPI listens on 8080 in its container


def test_public_base_url_is_what_clients_call_through_nginx():
    """The JWT aud check: a token's aud is CDS_PUBLIC_BASE_URL + the path; clients call nginx."""
    public = SERVICES["cds-service"]["environment"]["CDS_PUBLIC_BASE_URL"]
    host_port = NGINX["ports"][0].split(":")[0]
    assert public == f"https://{NGINX_ENV['CDS_PROXY_SERVER_NAME']}:{host_port}"
    header = (ROOT / "docker-compose.yml").read_text().split("services:")[0]
    assert f"curl -sk {public}/cds-services" in header  # the example calls nginx, not a replica


def test_nginx_gets_the_template_and_every_placeholder():
    mounts = _mounts(NGINX)
    assert mounts["/etc/nginx/templates/nginx.conf.template"] == "./deploy/nginx.conf"
    assert (ROOT / "deploy" / "nginx.conf").is_file()
    # The image's envsubst writes templates/X.template to $NGINX_ENVSUBST_OUTPUT_DIR/X, and
    # replaces only variables matching the filter (nginx's $host, $remote_addr... stay).
    assert NGINX_ENV["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert NGINX_ENV["NGINX_ENVSUBST_FILTER"] == "CDS_PROXY_"
    given = {k for k in NGINX_ENV if k.startswith("CDS_PROXY_")}
    assert given == nginx_conf.placeholders() == set(nginx_conf.PLACEHOLDERS)
    rendered = nginx_conf.render(NGINX_ENV)
    assert "server cds-service:8080;" in rendered and "listen 443 ssl;" in rendered


def test_the_certificate_is_made_where_nginx_reads_it(tmp_path):
    tls_init = SERVICES["tls-init"]
    init_mounts, nginx_mounts = _mounts(tls_init), _mounts(NGINX)
    assert init_mounts["/deploy"] == "./deploy" and init_mounts["/tls"] == "tls" and nginx_mounts["/tls"] == "tls"
    assert "tls" in COMPOSE["volumes"]
    assert NGINX["volumes"][[v.split(":")[1] for v in NGINX["volumes"]].index("/tls")].endswith(":ro")
    command = tls_init["command"]
    assert command[:2] == ["python", "/deploy/nginx_conf.py"]
    out_dir = command[command.index("--self-signed") + 1]
    assert NGINX_ENV["CDS_PROXY_TLS_CERT"] == f"{out_dir}/cert.pem"
    assert NGINX_ENV["CDS_PROXY_TLS_KEY"] == f"{out_dir}/key.pem"
    # The same command, here: makes the pair once and keeps it on the next start.
    local = [sys.executable, str(ROOT / "deploy" / "nginx_conf.py")] + [
        str(tmp_path) if arg == out_dir else arg for arg in command[2:]]
    assert subprocess.run(local, capture_output=True).returncode == 0
    cert = (tmp_path / "cert.pem").read_bytes()
    assert cert.startswith(b"-----BEGIN CERTIFICATE-----")
    assert (tmp_path / "key.pem").stat().st_mode & 0o077 == 0  # the key is private
    assert subprocess.run(local, capture_output=True).returncode == 0
    assert (tmp_path / "cert.pem").read_bytes() == cert


def test_fhir_url_is_the_same_everywhere():
    loader = SERVICES["loader"]["command"]
    url = loader[loader.index("--fhir-server") + 1]
    assert url == "http://hapi:8080/fhir"
    environment = SERVICES["cds-service"]["environment"]
    assert environment["CDS_ALLOWED_FHIR_SERVERS"] == url
    assert url in (ROOT / "docker-compose.yml").read_text().split("fhirServer")[1][:40]  # the curl example


def test_environment_is_what_the_service_reads():
    environment = {k: str(v) for k, v in SERVICES["cds-service"]["environment"].items()}
    variables = {field.validation_alias for field in Settings.model_fields.values()}
    for name in environment:
        if name == "PGPASSWORD":  # libpq's, read by psycopg: the password stays out of the URL
            continue
        assert name in variables, f"{name} is not a setting"
    settings = Settings.from_env(environment)  # and the values are valid
    assert settings.allowed_fhir_servers == ("http://hapi:8080/fhir",)
    assert settings.evaluation_date.isoformat() == "2026-06-15"
    # Records in the postgres service's database, as its own variables create it.
    postgres = SERVICES["postgres"]["environment"]
    assert isinstance(settings.database, DatabaseUrl)
    url = urllib.parse.urlsplit(settings.database)
    assert (url.hostname, url.port or 5432, url.path.lstrip("/"), url.username) == (
        "postgres", 5432, postgres["POSTGRES_DB"], postgres["POSTGRES_USER"])
    assert url.password is None and environment["PGPASSWORD"] == postgres["POSTGRES_PASSWORD"]
    # Seen JWT ids in the redis service, shared by both replicas (never a per-replica SQLite file).
    jti = urllib.parse.urlsplit(settings.jti_store)
    assert (jti.scheme, jti.hostname, jti.port) == ("redis", "redis", 6379)
    assert SERVICES["redis"]["command"][0] == "redis-server" and "--port" not in SERVICES["redis"]["command"]
    assert "volumes" not in SERVICES["cds-service"]  # nothing shared between replicas but the two servers


def test_named_volumes_are_declared():
    used = {source for service in SERVICES.values() for source in _mounts(service).values()
            if not source.startswith(("./", "/"))}
    assert used == set(COMPOSE["volumes"]) == {"pg-data", "redis-data", "tls"}
    assert _mounts(SERVICES["postgres"])["/var/lib/postgresql/data"] == "pg-data"
    for service in SERVICES.values():
        for source in _mounts(service).values():
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_dockerfile_copies_what_exists():
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY "):
            sources = shlex.split(line)[1:-1]
            for source in sources:
                assert (ROOT / source).exists(), source
    assert "/app/tests/gold" in " ".join(SERVICES["loader"]["command"])
    assert "COPY tests/gold ./tests/gold" in DOCKERFILE and "WORKDIR /app" in DOCKERFILE
