"""`qacloud checkconfig` (Buildbot's checkconfig) on the shipped demo and example settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from lab.secrets import write_secrets
from master.config import build_config
from master.inventory import load_inventory
from master.settings import DEMO_SETTINGS, load_settings
from tests.support.procs import REPO

QACLOUD = str(Path(sys.executable).with_name("qacloud"))


def _secrets_for(settings_file: Path) -> None:
    s = load_settings(settings_file)
    inv = load_inventory(s.inventory_path)
    names = inv.secret_names() | {u.password_secret for u in s.users}
    if s.reporters.mail and s.reporters.mail.password_secret:
        names.add(s.reporters.mail.password_secret)
    write_secrets(s.secrets_path, names)


def _demo_settings(tmp_path: Path) -> Path:
    """The demo settings with their secrets in a temp dir (a fresh clone has none yet)."""
    settings = tmp_path / "demo.yaml"
    data = yaml.safe_load(DEMO_SETTINGS.read_text())
    data.update(
        inventory=str(REPO / "lab/demo/inventory.yaml"),
        secrets_dir=str(tmp_path / "secrets"),
        repository={**data["repository"], "url": str(tmp_path / "demo-project.git")},
    )
    settings.write_text(yaml.safe_dump(data))
    _secrets_for(settings)
    return settings


def test_checkconfig_demo_settings(tmp_path):
    settings = _demo_settings(tmp_path)
    p = subprocess.run([QACLOUD, "checkconfig", "--settings", str(settings)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Config file is good!" in p.stdout


def test_checkconfig_example_lab_with_three_hypervisor_types(tmp_path):
    for f in ("settings.yaml", "lab.yaml"):
        shutil.copy(REPO / "examples" / f, tmp_path / f)
    s = tmp_path / "settings.yaml"
    s.write_text(s.read_text().replace("/etc/qacloud/secrets", str(tmp_path / "secrets")))
    _secrets_for(s)
    p = subprocess.run([QACLOUD, "checkconfig", "--settings", str(s)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Config file is good!" in p.stdout


def test_checkconfig_reports_bad_settings_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("repository: {url: /r}\ninventory: nope.yaml\nsecrets_dir: s\nwww: {port: -1}\n")
    p = subprocess.run([QACLOUD, "checkconfig", "--settings", str(bad)], capture_output=True, text=True)
    assert p.returncode == 1
    assert f"{bad}:4: www.port: port must be 1-65535" in p.stderr
    assert "Traceback" not in p.stderr


def test_wiring_one_worker_per_pool_and_no_collapsing(tmp_path):
    s = load_settings(_demo_settings(tmp_path))
    c = build_config(s)
    names = [w.name for w in c["workers"]]
    assert {"pool1-qavm", "pool2-qavm"} <= set(names)
    assert c["collapseRequests"] is False
    builders = {b.name: b for b in c["builders"]}
    assert {"gate-bvt", "try-bvt", "pool-service"} <= set(builders)
    assert all(b.collapseRequests is False for b in builders.values())
    assert c["www"]["port"].endswith("interface=127.0.0.1")
    assert c["protocols"]["pb"]["port"].endswith("interface=127.0.0.1")
    assert {"waterfall_view", "console_view", "grid_view"} <= set(c["www"]["plugins"])
