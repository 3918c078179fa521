"""docker-compose.yml and the Dockerfile cannot run here (no Docker engine):
check what can be checked without one — structure, files, ports, URLs,
environment and commands are consistent with the code."""

import re
import shlex
from pathlib import Path

import yaml

from cds_service.cli import build_parser
from cds_service.hooks.config import Settings

ROOT = Path(__file__).parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _port_flag(command):
    return int(command[command.index("--port") + 1])


def test_services_and_pinned_images():
    assert set(SERVICES) == {"hapi", "loader", "cds-service"}
    image = SERVICES["hapi"]["image"]
    assert re.fullmatch(r"hapiproject/hapi:v\d+\.\d+\.\d+(-\d+)?", image), image  # pinned, never latest
    for name in ("loader", "cds-service"):
        assert SERVICES[name]["build"] == "."
    assert (ROOT / "Dockerfile").is_file() and (ROOT / ".dockerignore").is_file()


def test_start_order_and_health():
    assert SERVICES["loader"]["depends_on"]["hapi"]["condition"] == "service_started"
    assert SERVICES["cds-service"]["depends_on"]["loader"]["condition"] == "service_completed_successfully"
    check = SERVICES["cds-service"]["healthcheck"]["test"]
    assert check[0] == "CMD" and "/readyz" in " ".join(check)
    assert "HEALTHCHECK" in DOCKERFILE and "/healthz" in DOCKERFILE


def test_commands_parse_with_the_cli_and_ports_match():
    parser = build_parser()
    loader = parser.parse_args(SERVICES["loader"]["command"][1:])
    assert loader.command == "harness" and loader.load_only
    service_cmd = SERVICES["cds-service"]["command"]
    served = parser.parse_args(service_cmd[1:])
    assert served.command == "serve" and served.host == "0.0.0.0" and served.insecure_no_auth
    published = SERVICES["cds-service"]["ports"][0].split(":")
    assert int(published[-1]) == served.port
    cmd = re.search(r'^CMD (\[.*\])$', DOCKERFILE, re.M).group(1)
    image_cmd = yaml.safe_load(cmd)
    assert parser.parse_args(image_cmd[1:]).command == "serve"
    assert f"EXPOSE {_port_flag(image_cmd)}" in DOCKERFILE
    assert SERVICES["hapi"]["ports"][0].endswith(":8080")  # HAPI listens on 8080 in its container


def test_fhir_url_is_the_same_everywhere():
    loader = SERVICES["loader"]["command"]
    url = loader[loader.index("--fhir-server") + 1]
    assert url == "http://hapi:8080/fhir"
    environment = SERVICES["cds-service"]["environment"]
    assert environment["CDS_ALLOWED_FHIR_SERVERS"] == url
    assert url in (ROOT / "docker-compose.yml").read_text().split("fhirServer")[1][:40]  # the curl example


def test_environment_is_what_the_service_reads(tmp_path):
    environment = {k: str(v) for k, v in SERVICES["cds-service"]["environment"].items()}
    config_source = (ROOT / "cds_service" / "hooks" / "config.py").read_text()
    for name in environment:
        assert f'"{name}"' in config_source, f"{name} is not a setting"
    settings = Settings.from_env(environment)  # and the values are valid
    assert settings.allowed_fhir_servers == ("http://hapi:8080/fhir",)
    assert settings.evaluation_date.isoformat() == "2026-06-15"
    volume = SERVICES["cds-service"]["volumes"][0].split(":")
    assert volume[0] in COMPOSE["volumes"] and volume[1] == environment["CDS_DATA_DIR"]


def test_dockerfile_copies_what_exists():
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY "):
            sources = shlex.split(line)[1:-1]
            for source in sources:
                assert (ROOT / source).exists(), source
    assert "/app/tests/gold" in " ".join(SERVICES["loader"]["command"])
    assert "COPY tests/gold ./tests/gold" in DOCKERFILE and "WORKDIR /app" in DOCKERFILE
