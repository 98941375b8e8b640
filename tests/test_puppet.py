"""Every Puppet role manifest: `puppet parser validate`, then compiled and dry-run with
`puppet apply --noop` against a stand-in fact set (puppet/facts/standin.yaml); and the step's
parser of failed resources on real puppet output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from steps.puppet import PUPPET_DIR, failed_resources

MANIFESTS = sorted(PUPPET_DIR.glob("*.pp"))


def puppet(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    dirs = [f"--{d}dir={tmp_path / d}" for d in ("conf", "var", "code")]
    return subprocess.run(["puppet", *args, *dirs], capture_output=True, text=True, timeout=120)


def test_the_three_roles_exist():
    assert [m.name for m in MANIFESTS] == ["kvm.pp", "management.pp", "qavm.pp"]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_and_compiles(tmp_path, manifest):
    p = puppet(tmp_path, "parser", "validate", str(manifest))
    assert p.returncode == 0, p.stderr
    facts = yaml.safe_load((PUPPET_DIR / "facts" / "standin.yaml").read_text())
    facts.update(
        {
            "os": {"family": "RedHat", "name": "CentOS", "release": {"major": "7", "full": "7.9"}},
            "osfamily": "RedHat",
            "kernel": "Linux",
        }
    )
    fdir = tmp_path / "var" / "yaml" / "facts"
    fdir.mkdir(parents=True)
    (fdir / "standin.yaml").write_text(
        "--- !ruby/object:Puppet::Node::Facts\n" + yaml.safe_dump({"name": "standin", "values": facts})
    )
    p = puppet(
        tmp_path,
        "apply",
        "--noop",
        "--certname",
        "standin",
        "--facts_terminus",
        "yaml",
        "--color=false",
        str(manifest),
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "Compiled catalog for standin" in out
    assert "Error:" not in out, out
    role = manifest.stem.capitalize()
    assert f"/Stage[main]/Qacloud::{role}/" in out  # the role's resources were evaluated (noop)


def test_failed_resources_from_a_real_failing_run(tmp_path):
    m = tmp_path / "broken.pp"
    m.write_text(
        "exec { 'boom': command => '/bin/false' }\n"
        "file { '/nonexistent-dir-qacloud/x': ensure => file, content => 'x' }\n"
        "exec { 'after': command => '/bin/true', require => Exec['boom'] }\n"
    )
    p = puppet(tmp_path, "apply", "--detailed-exitcodes", "--color=false", str(m))
    assert p.returncode in (4, 6), p.stdout + p.stderr
    assert failed_resources(p.stdout + p.stderr) == ["Exec[boom]", "File[/nonexistent-dir-qacloud/x]"]


def test_failed_resources_ignores_noise():
    assert failed_resources("Notice: Applied catalog in 1.0 seconds\n") == []
