"""Inventory validation: a good file loads; every bad case names file, line and field."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from master.inventory import load_inventory
from master.yamlconf import ConfigError
from tests.support.procs import REPO, simple_pool

EXAMPLE = REPO / "examples" / "lab.yaml"


def write(tmp_path: Path, data) -> Path:
    p = tmp_path / "inv.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def problems(tmp_path: Path, data) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_inventory(write(tmp_path, data))
    return [str(p) for p in ei.value.problems]


def base() -> dict:
    return {"pools": [simple_pool("pool1", 1), simple_pool("pool2", 2)]}


def test_example_lab_loads_with_all_three_hypervisors():
    inv = load_inventory(EXAMPLE)
    assert inv.pool_names == ["pool-a", "pool-b"]
    assert {t for p in inv.pools for t in p.hypervisor_types} == {"kvm", "xenserver", "vmware"}
    b = inv.pool("pool-b")
    assert b.vcenter.cluster == "qa-cluster"
    assert b.management.bmc.port == 623  # default
    assert inv.pool("pool-a").hypervisors[0].macs == ["0c:c4:7a:10:01:11", "0c:c4:7a:10:01:21"]
    assert "bmc-pool-a" in inv.secret_names() and "worker-qavm-b" in inv.secret_names()


def test_good_generated_inventory(tmp_path):
    inv = load_inventory(write(tmp_path, base()))
    assert [h.name for h in inv.pool("pool2").hosts] == ["pool2-mgmt", "pool2-kvm1", "pool2-kvm2"]
    assert inv.pool("pool1").network.vlan_range == (100, 199)


def test_duplicate_mac_names_file_line_and_both_hosts(tmp_path):
    data = base()
    data["pools"][1]["hypervisors"][1]["macs"] = list(data["pools"][0]["management"]["macs"])
    (msg,) = problems(tmp_path, data)
    assert str(tmp_path / "inv.yaml") in msg
    assert "duplicate MAC address 52:54:00:01:00:0a" in msg
    assert "pool2-kvm2" in msg and "pool1-mgmt" in msg
    line = int(msg.split(":")[1])
    text = (tmp_path / "inv.yaml").read_text().splitlines()
    assert "macs" in text[line - 1]


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda d: d["pools"][0]["management"].update(macs=["52:54:00:zz:00:01"]), "macs", "malformed MAC"),
        (lambda d: d["pools"][0]["management"].update(ip="127.0.1.300"), "ip", "not an IP address"),
        (lambda d: d["pools"][0]["management"]["bmc"].update(port=70000), "bmc.port", "port must be 1-65535"),
        (lambda d: d["pools"][0]["management"].update(ip="127.0.9.10"), "ip", "outside the pool's subnet"),
        (lambda d: d["pools"][0]["hypervisors"][0].update(ip="127.0.1.10"), "ip", "duplicate IP address"),
        (lambda d: d["pools"][1]["hypervisors"][0].update(name="pool1-kvm1"), "name", "duplicate host name"),
        (
            lambda d: d["pools"][1]["hypervisors"][0]["bmc"].update(port=16011),
            "address",
            "duplicate BMC endpoint 127.0.0.1:16011",
        ),
        (lambda d: d["pools"][0].pop("management"), "management", "required key is missing"),
        (lambda d: d["pools"][0].update(hypervisors=[]), "hypervisors", "at least one hypervisor"),
        (
            lambda d: d["pools"][0]["hypervisors"][0].update(hypervisor="hyperv"),
            "hypervisor",
            "must be one of",
        ),
        (lambda d: d["pools"][0]["management"].update(colour="blue"), "colour", "unknown key"),
        (
            lambda d: d["pools"][0]["management"]["bmc"].update(password="hunter2"),
            "bmc.password",
            "must not be written inline",
        ),
        (lambda d: d["pools"][0]["network"].update(vlans="5000-6000"), "vlans", "VLAN IDs must be"),
        (lambda d: d["pools"][0]["network"].update(subnet="10.0.0.1/24"), "subnet", "CIDR"),
        (lambda d: d["pools"][0]["storage"].update(primary="/export/primary"), "primary", "nfs URL"),
        (lambda d: d["pools"][0]["management"].update(macs="52:54:00:01:00:0a"), "macs", "expected a list"),
        (lambda d: d["pools"][0]["hypervisors"][0].update(hypervisor="vmware"), "vcenter", "no 'vcenter'"),
        (lambda d: d["pools"][1].update(worker="pool1-qavm"), "worker", "duplicate worker"),
    ],
)
def test_each_bad_case_is_reported_with_line_and_field(tmp_path, mutate, field, reason):
    data = copy.deepcopy(base())
    mutate(data)
    found = problems(tmp_path, data)
    assert any(field in m and reason in m for m in found), found
    for m in found:
        assert m.startswith(f"{tmp_path / 'inv.yaml'}:"), m
        assert int(m.split(":")[1]) > 0, m  # a real line number


def test_all_problems_reported_at_once(tmp_path):
    data = base()
    data["pools"][0]["management"]["macs"] = ["nope"]
    data["pools"][1]["management"]["ip"] = "1.2.3.4"
    data["pools"][1]["hypervisors"][0]["bmc"]["password"] = "x"
    found = problems(tmp_path, data)
    assert len(found) >= 3, found


def test_syntax_error_and_missing_file_are_clean_errors(tmp_path):
    (msg,) = problems(tmp_path, "pools: [\n  - name: a\n  bad")
    assert "invalid YAML" in msg and ":" in msg
    with pytest.raises(ConfigError, match="file not found"):
        load_inventory(tmp_path / "nope.yaml")


def test_cli_check_inventory(tmp_path):
    qacloud = Path(sys.executable).with_name("qacloud")
    ok = subprocess.run([qacloud, "check-inventory", str(EXAMPLE)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("\n") == 1 and "valid; 2 pool(s), 6 host(s)" in ok.stdout
    bad = tmp_path / "lab.yaml"
    shutil.copy(EXAMPLE, bad)
    bad.write_text(bad.read_text().replace("0c:c4:7a:10:02:12", "0c:c4:7a:10:01:11"))
    p = subprocess.run([qacloud, "check-inventory", str(bad)], capture_output=True, text=True)
    assert p.returncode == 1
    assert f"{bad}:" in p.stderr and "b-esxi1" in p.stderr and "a-kvm1" in p.stderr
