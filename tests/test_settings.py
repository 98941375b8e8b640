"""Settings validation: defaults, the demo file, and file:line errors."""

from __future__ import annotations

import pytest
import yaml

from master.settings import DEMO_SETTINGS, Gate, load_settings
from master.yamlconf import ConfigError


def write(tmp_path, data) -> str:
    p = tmp_path / "settings.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(p)


MINIMAL = {"repository": {"url": "/srv/repo.git"}, "inventory": "lab.yaml", "secrets_dir": "secrets"}


def test_demo_settings_load_and_default_everything_to_loopback():
    s = load_settings(DEMO_SETTINGS)
    assert s.database.startswith("sqlite:///")
    assert s.www.strport == "tcp:8010:interface=127.0.0.1"
    assert s.workers.bind == "127.0.0.1" and s.try_.bind == "127.0.0.1"
    assert s.inventory_path.name == "inventory.yaml" and s.inventory_path.is_absolute()
    assert s.bvt.mode == "demo"


def test_env_var_selects_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("QACLOUD_SETTINGS", write(tmp_path, MINIMAL))
    s = load_settings()
    assert s.repository.staging == "staging" and s.repository.master == "master"
    assert str(s.secrets_path) == str(tmp_path / "secrets")


def test_postgresql_url_accepted(tmp_path):
    s = load_settings(write(tmp_path, {**MINIMAL, "database": "postgresql+psycopg2://u@127.0.0.1:5/q"}))
    assert s.database.startswith("postgresql")


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        ({"colour": "red"}, "colour", "unknown key"),
        ({"www": {"port": "eighty"}}, "www.port", "expected an integer"),
        ({"www": {"port": 0}}, "www.port", "port must be"),
        ({"database": "mysql://x"}, "database", "sqlite:// or postgresql://"),
        ({"gate": {"culprit_action": "shout"}}, "gate.culprit_action", "must be one of"),
        ({"gate": {"target_false_blame": 2}}, "gate.target_false_blame", "between 0 and 1"),
        ({"gate": {"learn_flake_rates": "often"}}, "gate.learn_flake_rates", "true/false"),
        ({"try": {"preempt": "sometimes"}}, "try.preempt", "true/false"),
        ({"reporters": {"mail": {"password": "x"}}}, "reporters.mail.password", "must not be written inline"),
        ({"try": {"users": ["mallory"]}}, "try.users", "unknown user"),
        ({"bvt": {"mode": "demo"}}, "bvt.command", "test command"),
        (
            {"repository": {"url": "/r", "staging": "main", "master": "main"}},
            "repository.staging",
            "different",
        ),
        ({"provisioning": {"keep_hosts_on_failure": "yes please"}}, "keep_hosts_on_failure", "true/false"),
    ],
)
def test_bad_settings_name_file_line_and_field(tmp_path, extra, field, reason):
    path = write(tmp_path, {**MINIMAL, **extra})
    with pytest.raises(ConfigError) as ei:
        load_settings(path)
    msgs = [str(p) for p in ei.value.problems]
    assert any(field in m and reason in m and m.startswith(f"{path}:") for m in msgs), msgs


def test_missing_required_keys_all_reported(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_settings(write(tmp_path, {"title": "x"}))
    text = str(ei.value)
    for key in ("repository", "inventory", "secrets_dir"):
        assert f"{key}: required key is missing" in text


def test_confirmations_follow_the_flake_aware_formula():
    """An innocent suspect is blamed only if its failing bisection run and x confirmations all
    flaked: the smallest x >= 1 with f^(1+x) <= eps."""
    gate = Gate()  # defaults: target false-blame rate 0.001, prior flake rate 0.02
    assert gate.confirmations() == 1  # 0.02^2 = 4e-4 <= 1e-3 < 0.02^1
    assert gate.confirmations(observed_flake_rate=0.05) == 2  # 0.05^2 = 2.5e-3 > 1e-3 >= 0.05^3
    assert gate.confirmations(observed_flake_rate=0.2) == 4  # 0.2^5 = 3.2e-4; 0.2^4 = 1.6e-3
    assert Gate(target_false_blame=0.01).confirmations(observed_flake_rate=0.1) == 1  # 0.1^2 exactly
    assert Gate(target_false_blame=0.5).confirmations(observed_flake_rate=0.01) == 1  # at least one
    assert Gate(confirm_runs=1).confirmations(observed_flake_rate=0.2) == 1
    assert Gate(confirm_runs=2).confirmations() == 2
    for f in (0.005, 0.02, 0.05, 0.1, 0.3):
        for eps in (1e-2, 1e-3, 1e-4):
            x = Gate(target_false_blame=eps).confirmations(observed_flake_rate=f)
            assert f ** (1 + x) <= eps * (1 + 1e-9) and (x == 1 or f**x > eps)
