"""Running it: a port in use is one clear line, logs can be JSON for shippers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from server.logs import JsonFormatter, lan_addresses, port_in_use
from tests.conftest import ROOT, manifest_text


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path):
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--manifest",
                str(path),
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "var"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"port {port}" in lines[0] and "Traceback" not in proc.stderr
    assert not port_in_use("127.0.0.1", port)


def test_json_log_lines_parse():
    import logging

    record = logging.LogRecord(
        "showroom", logging.WARNING, __file__, 1, "printer %s offline", ("counter",), None
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "warning" and entry["msg"] == "printer counter offline"
    assert entry["logger"] == "showroom" and entry["ts"].endswith("Z")
    assert all(not ip.startswith("127.") for ip in lan_addresses())


def test_grafana_dashboard_only_uses_metrics_the_server_exports():
    import re

    from prometheus_client import generate_latest

    from server.metrics import Metrics

    exported = generate_latest(Metrics().registry).decode()
    names = set(re.findall(r"^# TYPE (\S+)", exported, re.M))
    dashboard = json.loads((ROOT / "server/deploy/grafana.json").read_text())
    used = {
        m
        for p in dashboard["panels"]
        for t in p["targets"]
        for m in re.findall(r"showroom_[a-z_]+", t["expr"])
    }
    assert used, "the dashboard has queries"
    base = {re.sub(r"_(bucket|total|count|sum)$", "", m) for m in used}
    assert base <= {re.sub(r"_total$", "", n) for n in names}, base - names


def test_the_image_copies_every_package_folder():
    text = (ROOT / "Dockerfile").read_text()
    for folder in ("server", "media", "checkout", "overlays", "web", "devices"):
        assert f"COPY {folder} {folder}" in text and (ROOT / folder).is_dir()
