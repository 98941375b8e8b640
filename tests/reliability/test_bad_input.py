"""Settings and inventory fuzzing (hypothesis): bad input is a ConfigError naming file, line and field.

Valid documents are mutated along their schema (master/settings.py, master/inventory.py):
required keys removed, values of the wrong type, unknown keys, values their check rejects,
duplicated MACs/IPs/names/BMC endpoints; and at the text level: weird YAML scalars, deep
nesting, huge strings, binary garbage, truncation. Every invalid document must raise
``ConfigError`` whose every problem carries the file name, a line >= 0 and a reason (and,
for schema mutations, the exact field); any other exception is a crash. Valid variations
must load with the values given.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from master.inventory import Inventory, load_inventory
from master.settings import Settings, load_settings
from master.yamlconf import ConfigError
from tests.support.procs import simple_pool

FUZZ = settings(
    derandomize=True,  # the same cases on every run: CI never flakes on a new random seed
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no 'explain': its tracer is slow
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_MESSAGE = 1200  # a problem is one readable line, however large the input


def base_settings() -> dict:
    return {
        "title": "qacloud fuzz",
        "database": "sqlite:///state.sqlite",
        "www": {"port": 8010, "bind": "127.0.0.1", "url": "http://127.0.0.1:8010/"},
        "workers": {"port": 9989, "bind": "127.0.0.1"},
        "repository": {
            "url": "/srv/cloudstack.git",
            "staging": "staging",
            "master": "master",
            "poll_interval": 60,
            "webhook_secret": "webhook",
        },
        "inventory": "lab.yaml",
        "secrets_dir": "secrets",
        "reporters": {
            "mail": {
                "relayhost": "127.0.0.1",
                "port": 25,
                "to": ["dev@example.org"],
                "password_secret": "smtp",
            },
            "github": {"repository": "apache/cloudstack", "token_secret": "gh"},
        },
        "users": [
            {"name": "admin", "password_secret": "user-admin", "roles": ["admins"]},
            {"name": "alice", "password_secret": "user-alice", "roles": ["developers"], "email": "a@x.org"},
        ],
        "gate": {"target_false_blame": 0.001, "prior_flake_rate": 0.02, "culprit_action": "hold"},
        "pools": {"quarantine_after": 3},
        "provisioning": {"install_timeout": 3600, "ipmi_timeout": 10, "ipmi_retries": 3},
        "bvt": {"mode": "demo", "command": ["sh", "./run-tests.sh"], "timeout": 600},
        "try": {"port": 8031, "bind": "127.0.0.1", "users": ["alice"]},
    }


def base_inventory() -> dict:
    p2 = simple_pool("pool2", 2)
    p2["vcenter"] = {
        "address": "127.0.2.5",
        "datacenter": "dc1",
        "cluster": "c1",
        "username": "administrator",
        "password_secret": "vcenter",
    }
    return {"lab": "fuzz lab", "pools": [simple_pool("pool1", 1), p2]}


# --- the schema, walked alongside a document -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One key present in a document: where it is, its YAML field path, its type and check."""

    keys: tuple  # dict keys / list indices from the document's root
    field: str  # the field path the loader reports (``pools[0].management.bmc.port``)
    tp: Any
    required: bool
    check: Any


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0], True
    return tp, False


def leaves(cls: type, doc: dict, keys: tuple = (), path: str = "") -> list[Leaf]:
    """Every key of ``doc`` (a valid document of schema ``cls``), depth first."""
    hints = typing.get_type_hints(cls)
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls) if f.init}
    out: list[Leaf] = []
    for key, value in doc.items():
        f = fields[key]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        fpath = f"{path}.{key}" if path else key
        tp = hints[f.name]
        out.append(Leaf((*keys, key), fpath, tp, required, f.metadata.get("check")))
        inner, _ = _strip_optional(tp)
        if value is None:
            continue
        if dataclasses.is_dataclass(inner):
            out += leaves(inner, value, (*keys, key), fpath)
        elif typing.get_origin(inner) is list:
            item_tp = typing.get_args(inner)[0]
            for i, item in enumerate(value):
                ipath = f"{fpath}[{i}]"
                if dataclasses.is_dataclass(item_tp):
                    out += leaves(item_tp, item, (*keys, key, i), ipath)
                else:
                    out.append(Leaf((*keys, key, i), ipath, item_tp, True, None))
    return out


def mappings(cls: type, doc: dict, keys: tuple = (), path: str = "") -> list[tuple[tuple, str, set]]:
    """Every mapping of ``doc`` that is a schema object: (keys, field path, allowed YAML keys)."""
    fields = {f.metadata.get("key", f.name) for f in dataclasses.fields(cls) if f.init}
    out = [(keys, path, fields)]
    for leaf in leaves(cls, doc, keys, path):
        inner, _ = _strip_optional(leaf.tp)
        value = get(doc, leaf.keys[len(keys) :])
        if dataclasses.is_dataclass(inner) and isinstance(value, dict):
            out.append(
                (
                    leaf.keys,
                    leaf.field,
                    {f.metadata.get("key", f.name) for f in dataclasses.fields(inner) if f.init},
                )
            )
    return out


def get(doc: Any, keys: tuple) -> Any:
    for k in keys:
        doc = doc[k]
    return doc


def put(doc: Any, keys: tuple, value: Any) -> None:
    get(doc, keys[:-1])[keys[-1]] = value


def wrong_values(tp: Any) -> list[Any]:
    """Values that are not of type ``tp`` for the loader (numbers are accepted as text)."""
    inner, optional = _strip_optional(tp)
    none = [] if optional else [None]
    if inner is str:
        return [["a", "list"], {"a": "mapping"}, *none]
    if inner is bool:
        return ["maybe", 3, 1.5, ["x"], {"k": 1}, *none]
    if inner is int:
        return ["eight", 1.5, True, [1], {"k": 1}, *none]
    if inner is float:
        return ["half", True, [0.5], {"k": 1}, *none]
    if typing.get_origin(inner) is list:
        return ["a scalar", 7, {"k": "v"}, *none]
    if dataclasses.is_dataclass(inner):
        return ["a scalar", 42, ["a", "list"], *none]
    raise AssertionError(f"no wrong values for {tp}")


BAD_STRINGS = [
    "",
    " ",
    "52:54:00:zz:00:01",
    "52:54:00:00:01",
    "52-54-00-00-00-01",
    "999.1.1.1",
    "10.0.0",
    "10.0.0.1/24",
    "10.0.0.0/33",
    "::g",
    "Bad_Name",
    "-leading-dash",
    "x" * 70,
    "5000",
    "10-5",
    "0",
    "ftp://proxy:21",
    "http://",
    "nfs:/export",
    "mysql://db",
    "a secret with spaces",
    "secret/../../etc/shadow",
    "bogus-choice",
    "\u202e\u0000nul",
    "é" * 3000,
    "x" * 200_000,
]
BAD_NUMBERS = [-1, 0, 65536, 70000, 10**30, -(10**30), 2.5, 0.0, 1.0, -0.5, float("nan"), float("inf")]


def malformed_value(leaf: Leaf, pick: int) -> Any:
    """A value of the right type that the field's check rejects (or skip this leaf)."""
    inner, _ = _strip_optional(leaf.tp)
    if typing.get_origin(inner) is list:
        candidates = [[], [BAD_STRINGS[pick % len(BAD_STRINGS)]], ["52:54:00:00:00:01", "not-a-mac"]]
    elif inner is str:
        candidates = BAD_STRINGS
    elif inner is int:
        candidates = [n for n in BAD_NUMBERS if isinstance(n, int)]
    elif inner is float:
        candidates = [float(n) for n in BAD_NUMBERS]
    else:
        candidates = []
    candidates = [c for c in candidates if leaf.check(c)]
    assume(candidates)
    return candidates[pick % len(candidates)]


# --- loading and judging --------------------------------------------------------------------

KINDS = {
    "settings": (Settings, base_settings, load_settings),
    "inventory": (Inventory, base_inventory, load_inventory),
}


@pytest.fixture(scope="module")
def fuzzdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def write(directory: Path, kind: str, doc: Any) -> Path:
    path = directory / f"{kind}.yaml"
    if isinstance(doc, bytes):
        path.write_bytes(doc)
    else:
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False, width=10**9))
    return path


def attempt(directory: Path, kind: str, doc: Any) -> tuple[Any, ConfigError | None]:
    """Load; return (object, None) or (None, ConfigError). Any other exception escapes: a crash."""
    path = write(directory, kind, doc)
    try:
        return KINDS[kind][2](path), None
    except ConfigError as e:
        assert_clean(e, str(path))
        return None, e


def assert_clean(e: ConfigError, file: str) -> None:
    """Every problem names the file, a line >= 0 and a reason, in one bounded line."""
    assert e.problems, "ConfigError without problems"
    for p in e.problems:
        assert p.file == file, p
        assert isinstance(p.line, int) and p.line >= 0, p
        assert isinstance(p.message, str) and p.message.strip(), p
        assert isinstance(p.field, str), p
        assert len(str(p)) <= MAX_MESSAGE, f"problem message of {len(str(p))} chars: {str(p)[:200]}..."
    assert str(e).startswith(file)


# --- strategies ------------------------------------------------------------------------------

OPS = ("delete", "wrong_type", "extra_key", "malformed")


@st.composite
def schema_mutation(draw, kind: str) -> tuple[dict, str, str, str]:
    """(document, op, field path the error must name, expected message fragment)."""
    cls, base, _ = KINDS[kind]
    doc = base()
    op = draw(st.sampled_from(OPS))
    if op == "extra_key":
        keys, path, allowed = draw(st.sampled_from(mappings(cls, doc)))
        key = draw(st.from_regex(r"[a-z][a-z_]{0,15}", fullmatch=True).filter(lambda k: k not in allowed))
        get(doc, keys)[key] = draw(st.sampled_from(["x", 1, None, [1], {"a": 1}]))
        field = f"{path}.{key}" if path else key
        return doc, op, field, "inline" if key in ("password", "token", "secret", "pass") else "unknown key"
    candidates = leaves(cls, doc)
    if op == "delete":
        candidates = [leaf for leaf in candidates if leaf.required and isinstance(leaf.keys[-1], str)]
    if op == "malformed":
        candidates = [leaf for leaf in candidates if leaf.check is not None]
    leaf = draw(st.sampled_from(candidates))
    if op == "delete":
        del get(doc, leaf.keys[:-1])[leaf.keys[-1]]
        return doc, op, leaf.field, "required key is missing"
    if op == "wrong_type":
        put(doc, leaf.keys, draw(st.sampled_from(wrong_values(leaf.tp))))
        return doc, op, leaf.field, "expected"
    put(doc, leaf.keys, malformed_value(leaf, draw(st.integers(0, 1000))))
    return doc, op, leaf.field, ""


WEIRD_SCALARS = [
    "~",
    "null",
    "yes",
    "No",
    "on",
    ".nan",
    "-.inf",
    "0x1F",
    "0o17",
    "1_000",
    "1e400",
    "2001-12-14t21:59:43.10-05:00",
    "2001-13-45",
    "2024-02-30",
    "!!binary aGVsbG8=",
    "!!python/object:os.system x",
    "!!timestamp nope",
    "!!int abc",
    "!!float x",
    "!!set {a, b}",
    "!!omap [a: 1]",
    "!foo bar",
    "=",
    "<<: *nope",
    "*undefined",
    "&a [*a]",
    "{? [a]: b}",
    '"\\x00\\uffff"',
    "'unterminated",
    "[unbalanced",
    "|\n  block\n  text",
    "- a\n- b",
    "\t",
    "@reserved",
    "`backtick",
    "%TAG",
]


@st.composite
def text_mutation(draw, kind: str) -> str | bytes:
    cls, base, _ = KINDS[kind]
    doc = base()
    how = draw(
        st.sampled_from(["scalar", "nesting", "huge", "garbage", "truncate", "flip", "toplevel", "alias"])
    )
    if how == "scalar":
        leaf = draw(st.sampled_from(leaves(cls, doc)))
        marker = "__WEIRD__"
        put(doc, leaf.keys, marker)
        text = yaml.safe_dump(doc, sort_keys=False, width=10**9)
        return text.replace(marker, draw(st.sampled_from(WEIRD_SCALARS)), 1)
    if how == "nesting":
        depth = draw(st.sampled_from([50, 300, 2000]))  # 2000: past Python's recursion limit
        leaf = draw(st.sampled_from(leaves(cls, doc)))
        marker = "__DEEP__"
        put(doc, leaf.keys, marker)
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}")]))
        return yaml.safe_dump(doc, sort_keys=False).replace(marker, opener * depth + "1" + closer * depth, 1)
    if how == "huge":
        leaf = draw(st.sampled_from(leaves(cls, doc)))
        put(
            doc,
            leaf.keys,
            draw(st.sampled_from(["x", "é", "\u202e", "a b "])) * draw(st.sampled_from([10_000, 60_000])),
        )
        return yaml.safe_dump(doc, sort_keys=False, width=10**9)
    if how == "garbage":
        return draw(st.binary(min_size=0, max_size=2000))
    if how == "toplevel":
        return draw(
            st.sampled_from(
                ["[1, 2]", "42", "just text", "---\n...\n", "- pools: []", "{}", "\ufeff", "a: b: c"]
            )
        )
    if how == "alias":
        return "base: &b {x: 1}\n" + yaml.safe_dump(doc, sort_keys=False) + "extra: *b\n"
    text = yaml.safe_dump(doc, sort_keys=False).encode()
    if how == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    pos = draw(st.integers(0, len(text) - 1))
    return text[:pos] + bytes([draw(st.integers(0, 255))]) + text[pos + 1 :]


@st.composite
def duplicate_mutation(draw) -> tuple[dict, str]:
    """An inventory where two hosts/pools share something that must be unique."""
    doc = base_inventory()
    hosts = [(pi, "management") for pi in range(2)] + [
        (pi, "hypervisors", i) for pi in range(2) for i in range(2)
    ]
    a, b = draw(st.lists(st.sampled_from(hosts), min_size=2, max_size=2, unique=True))
    ha, hb = get(doc["pools"], a), get(doc["pools"], b)
    what = draw(st.sampled_from(["mac", "ip", "name", "bmc", "pool", "worker"]))
    if what == "mac":
        hb["macs"] = [*hb["macs"], ha["macs"][0].upper()]  # case does not make a MAC different
        return doc, "duplicate MAC address"
    if what == "ip":
        hb["ip"] = ha["ip"]
        return doc, "duplicate IP address"
    if what == "name":
        hb["name"] = ha["name"]
        return doc, "duplicate host name"
    if what == "bmc":
        hb["bmc"]["port"] = ha["bmc"]["port"]
        return doc, "duplicate BMC endpoint"
    if what == "pool":
        doc["pools"][1]["name"] = doc["pools"][0]["name"]
        return doc, "duplicate pool name"
    doc["pools"][1]["worker"] = doc["pools"][0]["worker"]
    return doc, "duplicate worker"


@st.composite
def valid_variation(draw, kind: str) -> tuple[dict, dict]:
    """A valid document with random valid values; returns it and {field path: expected value}."""
    doc = (base_settings if kind == "settings" else base_inventory)()
    expect: dict[str, Any] = {}
    name = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
    if kind == "settings":
        ports = draw(st.lists(st.integers(1, 65535), min_size=3, max_size=3))
        doc["www"]["port"], doc["workers"]["port"], doc["try"]["port"] = ports
        doc["title"] = draw(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=80))
        doc["gate"]["target_false_blame"] = draw(st.floats(1e-9, 0.5))
        doc["provisioning"]["ipmi_retries"] = draw(st.integers(0, 50))
        doc["database"] = draw(st.sampled_from(["sqlite:///x.sqlite", "postgresql://u@127.0.0.1/q"]))
        doc["repository"]["poll_interval"] = draw(st.integers(1, 10**6))
        doc["bvt"]["tags"] = draw(st.lists(st.from_regex(r"[a-z=_]{1,20}", fullmatch=True), max_size=4))
        expect = {
            "www.port": ports[0],
            "workers.port": ports[1],
            "try_.port": ports[2],
            "title": doc["title"],
        }
        return doc, expect
    bmc_ports = draw(st.lists(st.integers(1, 65535), min_size=6, max_size=6, unique=True))
    names = draw(st.lists(name, min_size=6, max_size=6, unique=True))
    i = 0
    for pool in doc["pools"]:
        for h in [pool["management"], *pool["hypervisors"]]:
            h["bmc"]["port"] = bmc_ports[i]
            h["name"] = names[i]
            if draw(st.booleans()):
                h["macs"] = [m.upper() for m in h["macs"]]
            i += 1
    vl = draw(st.integers(1, 4094))
    doc["pools"][0]["network"]["vlans"] = f"{vl}-{draw(st.integers(vl, 4094))}"
    expect = {"hosts": names, "bmc_ports": bmc_ports}
    return doc, expect


# --- the tests -------------------------------------------------------------------------------


def _run(reliability, fault: str, test: str, n: int, body) -> None:
    """Run a hypothesis-driven ``body`` and record how many cases it saw."""
    seen = {"cases": 0, "rejected": 0}
    start = time.monotonic()
    body(seen)
    reliability.record(
        fault,
        area="bad input",
        injected=seen["cases"],
        survived=seen["cases"],
        detail=f"{seen['rejected']} rejected with a file:line: field: reason ConfigError, "
        f"{seen['cases'] - seen['rejected']} loaded; 0 other exceptions",
        test=test,
        seconds=time.monotonic() - start,
    )
    assert seen["cases"] >= n, seen


@pytest.mark.parametrize("kind", ["settings", "inventory"])
def test_schema_mutations_are_rejected_naming_the_field(kind, fuzzdir, reliability):
    n = 250

    def body(seen):
        @settings(FUZZ, max_examples=n)
        @given(schema_mutation(kind))
        def check(mutation):
            doc, op, field, fragment = mutation
            seen["cases"] += 1
            _, err = attempt(fuzzdir, kind, doc)
            assert err is not None, f"{op} at {field} was accepted"
            seen["rejected"] += 1
            named = [p for p in err.problems if p.field == field]
            assert named, f"{op} at {field}: no problem names the field: {err}"
            assert any(fragment in p.message for p in named), f"{op} at {field}: {err}"
            assert all(p.line >= 1 for p in named), err

        check()

    _run(reliability, f"{kind}: schema mutations (missing/wrong-type/unknown/malformed)", kind, n, body)


@pytest.mark.parametrize("kind", ["settings", "inventory"])
def test_text_level_garbage_never_crashes(kind, fuzzdir, reliability):
    n = 200

    def body(seen):
        @settings(FUZZ, max_examples=n)
        @given(text_mutation(kind))
        def check(text):
            seen["cases"] += 1
            obj, err = attempt(fuzzdir, kind, text)
            if err is not None:
                seen["rejected"] += 1
            else:
                assert isinstance(obj, KINDS[kind][0])

        check()

    _run(reliability, f"{kind}: weird YAML, deep nesting, huge strings, binary garbage", kind, n, body)


def test_duplicates_in_the_inventory_are_rejected(fuzzdir, reliability):
    n = 100

    def body(seen):
        @settings(FUZZ, max_examples=n)
        @given(duplicate_mutation())
        def check(mutation):
            doc, fragment = mutation
            seen["cases"] += 1
            _, err = attempt(fuzzdir, "inventory", doc)
            assert err is not None and any(fragment in p.message for p in err.problems), (fragment, err)
            assert all(p.line >= 1 for p in err.problems if fragment in p.message)
            seen["rejected"] += 1

        check()

    _run(reliability, "inventory: duplicate MAC/IP/host/BMC/pool/worker", "inventory", n, body)


@pytest.mark.parametrize("kind", ["settings", "inventory"])
def test_valid_variations_load_with_their_values(kind, fuzzdir, reliability):
    n = 100

    def body(seen):
        @settings(FUZZ, max_examples=n)
        @given(valid_variation(kind))
        def check(variation):
            doc, expect = variation
            seen["cases"] += 1
            obj, err = attempt(fuzzdir, kind, doc)
            assert err is None, f"a valid {kind} document was rejected: {err}"
            if kind == "settings":
                for path, value in expect.items():
                    assert get_attr(obj, path) == value, path
            else:
                hosts = [h for p in obj.pools for h in p.hosts]
                assert [h.name for h in hosts] == expect["hosts"]
                assert [h.bmc.port for h in hosts] == expect["bmc_ports"]
                assert all(h.mac == h.mac.lower() for h in hosts)

        check()

    _run(reliability, f"{kind}: valid variations load", kind, n, body)


def get_attr(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def test_base_documents_are_valid(fuzzdir):
    """The fuzzers' starting points load (otherwise every 'rejected' above proves nothing)."""
    s, err = attempt(fuzzdir, "settings", base_settings())
    assert err is None and s.try_.users == ["alice"], err
    inv, err = attempt(fuzzdir, "inventory", base_inventory())
    assert err is None and inv.pool_names == ["pool1", "pool2"], err
    assert copy.deepcopy(base_settings()) == base_settings()
