"""The catalog in the config file: its shape, its one-line errors, applying it."""

from __future__ import annotations

from pathlib import Path

import pytest

from allocation_ledger.adapters.config.apply import apply_catalog
from allocation_ledger.adapters.config.catalog import (
    CONFIG_ACTOR,
    Catalog,
    CatalogError,
)
from allocation_ledger.adapters.config.entries import McpServerEntry, PoolEntry
from allocation_ledger.adapters.config.file import load_catalog
from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.ports import MAX_OTHER_POOLS
from allocation_ledger.domain.values import AllocationRequest, Resources
from tests.ledger_support import last_position, stored_events

EXAMPLE = """\
provisioner = "process"     # optional: "process" or "endpoints"; default below

[mcp_servers.time]
command = ["python", "-m", "mcp_server_time"]  # argv, never through a shell
transport = "stdio"
path = "/mcp"
env = { TZ = "UTC" }
cpu = 0.25
memory = 128
start_timeout_seconds = 30
idle_timeout_seconds = 300

[pools.default]
cpu = 16
memory = 32768
workers = 10
worker_cpu = 1
worker_memory = 2048
worker_command = ["my-agent-runner", "--port", "{port}"]   # optional
advertise_host = "localhost"

[pools.big-box]
cpu = 64
memory = 262144
workers = 32
"""

EXPECTED = Catalog(
    provisioner="process",
    mcp_servers={
        "time": McpServerEntry(
            command=["python", "-m", "mcp_server_time"],
            transport="stdio",
            path="/mcp",
            env={"TZ": "UTC"},
            cpu=0.25,
            memory=128,
            start_timeout_seconds=30,
            idle_timeout_seconds=300,
        )
    },
    pools={
        "default": PoolEntry(
            cpu=16,
            memory=32768,
            workers=10,
            worker_cpu=1,
            worker_memory=2048,
            worker_command=["my-agent-runner", "--port", "{port}"],
            advertise_host="localhost",
        ),
        "big-box": PoolEntry(cpu=64, memory=262144, workers=32),
    },
)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where a test writes its config file; the working directory is its folder,
    so errors name it as `config.toml`."""
    monkeypatch.chdir(tmp_path)
    for name in ("CONFIG", "STORE", "HTTP_PORT", "CATALOG"):
        monkeypatch.delenv(f"ALLOCATION_LEDGER_{name}", raising=False)
    return Path("config.toml")


def load(config: Path, text: str) -> Catalog:
    config.write_text(text)
    return load_catalog(config)


# -- the shape -------------------------------------------------------------------


def test_the_documented_example_reads_as_written(config: Path) -> None:
    catalog = load(config, EXAMPLE)
    assert catalog == EXPECTED
    assert list(catalog.pools) == ["default", "big-box"]
    big = catalog.pools["big-box"]
    assert (big.worker_cpu, big.worker_memory, big.worker_command) == (None, None, None)
    assert big.advertise_host == "localhost"
    assert catalog.effective_provisioner == "process"
    time = catalog.mcp_servers["time"]
    assert time.cost == Resources(250, 128, 0)
    assert catalog.server_costs() == {"time": Resources(250, 128, 0)}
    assert time.argv(port=9000, host="127.0.0.1") == time.command
    worker = catalog.pools["default"].worker_argv(
        port=8001, worker_id="w-1", allocation_id="alloc-000000000001"
    )
    assert worker == ["my-agent-runner", "--port", "8001"]


def test_a_server_needs_only_its_command(config: Path) -> None:
    catalog = load(config, '[mcp_servers.files]\ncommand = ["mcp-files"]\n')
    entry = catalog.mcp_servers["files"]
    assert entry == McpServerEntry(
        command=["mcp-files"],
        transport="stdio",
        path="/mcp",
        env={},
        cpu=0,
        memory=0,
        start_timeout_seconds=30,
        idle_timeout_seconds=300,
    )
    assert catalog.provisioner is None
    assert catalog.server_costs() == {}


def test_placeholders_fill_in_and_double_braces_stay_braces(config: Path) -> None:
    catalog = load(
        config,
        '[mcp_servers.web]\ntransport = "http"\n'
        'command = ["web", "--listen={host}:{port}", "--json={{}}"]\n'
        '[pools.gpu]\nworker_command = ["run", "{worker_id}", "{allocation_id}"]\n',
    )
    web = catalog.mcp_servers["web"]
    assert web.argv(port=9003, host="0.0.0.0") == [
        "web",
        "--listen=0.0.0.0:9003",
        "--json={}",
    ]
    gpu = catalog.pools["gpu"].worker_argv(port=1, worker_id="w", allocation_id="a")
    assert gpu == ["run", "w", "a"]


@pytest.mark.parametrize(
    ("text", "readiness"),
    [
        ('worker_command = ["run", "--port", "{port}"]\n', "port"),
        ('worker_command = ["run", "--listen=:{port}"]\n', "port"),
        ('worker_command = ["run", "{worker_id}"]\n', "running"),
        ('worker_command = ["run", "{{port}}"]\n', "running"),
        ('worker_command = ["run"]\nworker_ready = "port"\n', "port"),
        ('worker_command = ["run", "{port}"]\nworker_ready = "running"\n', "running"),
    ],
)
def test_a_workers_readiness_is_its_port_when_its_command_uses_one(
    config: Path, text: str, readiness: str
) -> None:
    pool = load(config, "[pools.gpu]\n" + text).pools["gpu"]
    assert pool.worker_readiness == readiness


def test_worker_readiness_keys_default_and_read_as_written(config: Path) -> None:
    default = load(config, "[pools.gpu]\n").pools["gpu"]
    assert default.worker_ready == "auto"
    assert default.worker_start_timeout_seconds == 30
    assert default.worker_settle_seconds == 1
    text = (
        '[pools.gpu]\nworker_ready = "running"\n'
        "worker_start_timeout_seconds = 120\nworker_settle_seconds = 2.5\n"
    )
    given = load(config, text).pools["gpu"]
    assert (
        given.worker_ready,
        given.worker_start_timeout_seconds,
        given.worker_settle_seconds,
    ) == ("running", 120, 2.5)


@pytest.mark.parametrize(
    ("text", "provisioner"),
    [
        ("", "endpoints"),
        ("[pools.gpu]\nworkers = 4\n", "endpoints"),
        ('[pools.gpu]\nworker_command = ["run"]\n', "process"),
        ('[mcp_servers.time]\ncommand = ["t"]\n', "process"),
        (
            'provisioner = "endpoints"\n[mcp_servers.time]\ncommand = ["t"]\n',
            "endpoints",
        ),
        ('provisioner = "process"\n', "process"),
    ],
)
def test_the_provisioner_is_process_when_the_catalog_runs_something(
    config: Path, text: str, provisioner: str
) -> None:
    assert load(config, text).effective_provisioner == provisioner


# -- one line per mistake ----------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        (
            'transport = "stdio"',
            'transport = "tcp"',
            'config.toml: [mcp_servers.time] transport: must be "stdio" or "http", '
            'got "tcp"',
        ),
        (
            "cpu = 64",
            "cpus = 64",
            'config.toml: [pools.big-box] unknown key "cpus" (known: cpu, memory, '
            "workers, worker_cpu, worker_memory, worker_command, worker_ready, "
            "worker_start_timeout_seconds, worker_settle_seconds, advertise_host, "
            "mcp_ports, worker_ports)",
        ),
        (
            'command = ["python", "-m", "mcp_server_time"]',
            "",
            "config.toml: [mcp_servers.time] command: missing (required)",
        ),
        (
            "cpu = 0.25",
            "cpu = -0.25",
            "config.toml: [mcp_servers.time] cpu: must not be negative, got -0.25",
        ),
        (
            "memory = 128",
            "memory = -1",
            "config.toml: [mcp_servers.time] memory: must not be negative, got -1",
        ),
        (
            "worker_memory = 2048",
            "worker_memory = -2048",
            "config.toml: [pools.default] worker_memory: must not be negative, "
            "got -2048",
        ),
        (
            '"--port", "{port}"',
            '"--port", "{prot}"',
            "config.toml: [pools.default] worker_command[2]: unknown placeholder "
            '"{prot}" (known: {port}, {worker_id}, {allocation_id})',
        ),
        (
            '"-m", "mcp_server_time"',
            '"-m", "mcp_server_time", "--job={allocation_id}"',
            "config.toml: [mcp_servers.time] command[3]: unknown placeholder "
            '"{allocation_id}" (known: {port}, {host})',
        ),
        (
            'provisioner = "process"',
            'provisioner = "docker"',
            'config.toml: provisioner: must be "process" or "endpoints", got "docker"',
        ),
        (
            "memory = 128\n",
            "memory = \n",
            "config.toml: invalid TOML at line 9, column 10: invalid value",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_file_entry_and_field(
    config: Path, old: str, new: str, line: str
) -> None:
    assert old in EXAMPLE
    with pytest.raises(CatalogError) as raised:
        load(config, EXAMPLE.replace(old, new, 1))
    assert str(raised.value) == line


SERVER = '[mcp_servers.t]\ncommand = ["t"]\n'
T = "mcp_servers.t"
GPU = "pools.gpu"


@pytest.mark.parametrize(
    ("text", "entry", "field", "words"),
    [
        ('[mcp_servers.t]\ncommand = "t --x"\n', T, "command", "list"),
        ("[mcp_servers.t]\ncommand = []\n", T, "command", "non-empty"),
        ('[mcp_servers.t]\ncommand = ["t", ""]\n', T, "command[1]", "empty"),
        ('[mcp_servers.t]\ncommand = ["{port"]\n', T, "command[0]", "brace"),
        (SERVER + "transport = 1\n", T, "transport", '"http", got 1'),
        (SERVER + 'path = "mcp"\n', T, "path", 'start with "/"'),
        (SERVER + "env = { PORT = 1 }\n", T, "env.PORT", "string, got 1"),
        (SERVER + "cpu = 0.0001\n", T, "cpu", "3 decimal places"),
        (SERVER + "cpu = nan\n", T, "cpu", "finite"),
        (SERVER + "start_timeout_seconds = 0\n", T, "start_timeout_seconds", "0"),
        (SERVER + "idle_timeout_seconds = 0\n", T, "idle_timeout_seconds", "0"),
        (SERVER + "idle_timeout_seconds = 2.5\n", T, "idle_timeout_seconds", "whole"),
        ('[mcp_servers.T]\ncommand = ["t"]\n', "mcp_servers.T", None, "name 'T'"),
        ("[pools.gpu]\nworkers = 100000\n", GPU, "workers", "at most 1000"),
        ("[pools.gpu]\nworkers = true\n", GPU, "workers", "whole number, got true"),
        ("[pools.gpu]\nmemory = 1.5\n", GPU, "memory", "whole number"),
        ('[pools.gpu]\nadvertise_host = "a/b"\n', GPU, "advertise_host", "host"),
        ("[pools.gpu]\nworker_command = []\n", GPU, "worker_command", "non-empty"),
        ('[pools.gpu]\nworker_ready = "tcp"\n', GPU, "worker_ready", '"running"'),
        (
            "[pools.gpu]\nworker_start_timeout_seconds = 0\n",
            GPU,
            "worker_start_timeout_seconds",
            "more than 0",
        ),
        (
            "[pools.gpu]\nworker_settle_seconds = -1\n",
            GPU,
            "worker_settle_seconds",
            "negative",
        ),
        (
            "[pools.gpu]\nworker_settle_seconds = 30\n",
            GPU,
            None,
            "worker_settle_seconds: 30 must be less than "
            "worker_start_timeout_seconds (30)",
        ),
        ('[pools."Big Box"]\n', 'pools."Big Box"', None, "name 'Big Box'"),
        ("[pools.gpu.a100]\n", GPU, "a100", '[pools."gpu.a100"]'),
        ("[pools]\ngpu = 3\n", GPU, None, "must be a table"),
        ("pools = 3\n", None, "pools", "[pools.NAME]"),
        ("mcp_servers = []\n", None, "mcp_servers", "[mcp_servers.NAME]"),
    ],
)
def test_every_kind_of_mistake_names_where_it_is(
    config: Path, text: str, entry: str | None, field: str | None, words: str
) -> None:
    with pytest.raises(CatalogError) as raised:
        load(config, text)
    error = raised.value
    assert (error.path, error.entry, error.field) == ("config.toml", entry, field)
    assert words in error.problem
    line = str(error)
    assert "\n" not in line
    assert line.startswith("config.toml: ")
    if entry is not None:
        assert f"[{entry}] " in line


def test_too_many_pools_is_one_line(config: Path) -> None:
    text = "".join(f"[pools.p{i}]\n" for i in range(MAX_OTHER_POOLS + 1))
    with pytest.raises(CatalogError) as raised:
        load(config, text)
    assert str(raised.value) == (
        f"config.toml: pools: names {MAX_OTHER_POOLS + 1} pools besides default; "
        f"at most {MAX_OTHER_POOLS} are allowed"
    )


def test_an_unreadable_file_is_one_line(config: Path) -> None:
    with pytest.raises(CatalogError) as raised:
        load_catalog(config)
    assert str(raised.value) == (
        "config.toml: cannot read the file: No such file or directory"
    )
    config.write_bytes(b'store = "\xff"\n')
    with pytest.raises(CatalogError) as raised:
        load_catalog(config)
    assert str(raised.value) == "config.toml: is not UTF-8 text"


def test_catalog_built_in_code_checks_names_too() -> None:
    with pytest.raises(ValueError, match="pool name 'Big' is invalid"):
        Catalog(pools={"Big": PoolEntry()})
    with pytest.raises(ValueError, match="unknown placeholder"):
        McpServerEntry(command=["t", "{job}"])


# -- the settings file holds both ------------------------------------------------


def test_settings_read_their_keys_and_the_catalog_from_one_file(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config.write_text('store = "memory"\nHTTP_PORT = 9999\n' + EXAMPLE)
    monkeypatch.setenv("ALLOCATION_LEDGER_CONFIG", str(config))
    settings = Settings()
    assert (settings.store, settings.http_port) == ("memory", 9999)
    assert settings.catalog == EXPECTED
    monkeypatch.setenv("ALLOCATION_LEDGER_HTTP_PORT", "7777")
    assert Settings().http_port == 7777  # the environment still wins


def test_without_a_file_the_settings_are_as_before_and_the_catalog_empty(
    config: Path,
) -> None:
    settings = Settings()
    assert settings.catalog == Catalog()
    assert settings.catalog.effective_provisioner == "endpoints"
    assert (settings.store, settings.http_port) == ("sqlite", 8765)


def test_a_file_of_settings_only_has_an_empty_catalog(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config.write_text('store = "memory"\n')
    monkeypatch.setenv("ALLOCATION_LEDGER_CONFIG", str(config))
    assert Settings().catalog == Catalog()


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            "[mcp_server.time]\n",
            'config.toml: unknown key "mcp_server" (known: store, database, ',
        ),
        ("catalog = {}\n", 'config.toml: unknown key "catalog" (known: '),
        (
            EXAMPLE.replace('transport = "stdio"', 'transport = "tcp"'),
            'config.toml: [mcp_servers.time] transport: must be "stdio" or "http", '
            'got "tcp"',
        ),
        ("store = \n", "config.toml: invalid TOML at line 1, column 9: invalid value"),
    ],
)
def test_settings_stop_at_the_first_mistake_with_its_line(
    config: Path, monkeypatch: pytest.MonkeyPatch, text: str, line: str
) -> None:
    config.write_text(text)
    monkeypatch.setenv("ALLOCATION_LEDGER_CONFIG", str(config))
    with pytest.raises(CatalogError) as raised:
        Settings()
    assert str(raised.value).startswith(line)
    assert "\n" not in str(raised.value)


def test_a_named_file_that_is_missing_stops_the_settings(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLOCATION_LEDGER_CONFIG", "missing.toml")
    with pytest.raises(CatalogError, match=r"^missing\.toml: cannot read the file"):
        Settings()


# -- applying it to the ledger -----------------------------------------------------


def test_applying_creates_pools_with_their_totals_and_server_costs(
    config: Path, ledger_service: AllocationService
) -> None:
    ledger = ledger_service.ledger
    changes = apply_catalog(ledger, load(config, EXAMPLE))
    assert [line.split(":")[0] for line in changes] == ["pool default", "pool big-box"]
    assert changes[1] == (
        "pool big-box: created with cpu 64, memory 262144 MB, workers 32; each "
        "worker cpu 1, memory 2048 MB; idle MCP servers stop after 300 s; "
        "time costs cpu 0.25, memory 128 MB; ports workers 10000-10999, "
        "MCP servers 11000-11099"
    )
    big = ledger.pool("big-box").settings
    assert big.capacity == Resources(64_000, 262_144, 32)
    assert big.worker_size == Resources(1_000, 2_048, 1)
    assert big.server_costs == {"time": Resources(250, 128, 0)}
    assert big.idle_timeout_seconds == 300
    assert ledger.pool(DEFAULT_POOL).settings.server_costs == big.server_costs
    events = stored_events(ledger)
    assert events
    assert {e.event.actor for e in events} == {CONFIG_ACTOR}
    created = [e.event for e in events if e.topic == "allocation-ledger:pool:created"]
    assert sorted(e.name for e in created) == ["big-box", "default"]

    granted = ledger.request(
        AllocationRequest("job", ("time",), workers=2), pool="big-box"
    )
    assert granted.allocation.resources == Resources(2_000, 4_096, 2)  # workers
    # time's instance holds its cost in the pool, once
    assert ledger.pool("big-box").reserved == Resources(2_250, 4_224, 2)


def test_applying_the_same_catalog_again_writes_nothing(
    config: Path, ledger_service: AllocationService
) -> None:
    ledger = ledger_service.ledger
    catalog = load(config, EXAMPLE)
    apply_catalog(ledger, catalog)
    position = last_position(ledger)
    assert apply_catalog(ledger, catalog) == []
    assert apply_catalog(ledger, load(config, EXAMPLE)) == []
    assert last_position(ledger) == position


def test_applying_a_changed_file_records_only_the_change(
    config: Path, ledger_service: AllocationService
) -> None:
    ledger = ledger_service.ledger
    apply_catalog(ledger, load(config, EXAMPLE))
    position = last_position(ledger)
    changed = EXAMPLE.replace("workers = 32", "workers = 40").replace(
        "cpu = 0.25", "cpu = 0.5"
    )
    changes = apply_catalog(ledger, load(config, changed))
    assert changes == [
        "pool default: time costs cpu 0.25, memory 128 MB -> cpu 0.5, memory 128 MB",
        "pool big-box: totals cpu 64, memory 262144 MB, workers 32 -> cpu 64, "
        "memory 262144 MB, workers 40; time costs cpu 0.25, memory 128 MB -> "
        "cpu 0.5, memory 128 MB",
    ]
    written = stored_events(ledger, after=position)
    assert {e.event.actor for e in written} == {CONFIG_ACTOR}
    assert ledger.pool("big-box").settings.capacity.workers == 40


def test_keys_left_out_keep_what_the_pool_has(
    config: Path, ledger_service: AllocationService
) -> None:
    ledger = ledger_service.ledger
    ledger.create_pool("gpu")
    ledger.set_capacity(Resources(8_000, 4_096, 2), pool="gpu")
    changes = apply_catalog(
        ledger, load(config, "[pools.gpu]\nworkers = 3\nworker_memory = 1024\n")
    )
    assert len(changes) == 1
    settings = ledger.pool("gpu").settings
    assert settings.capacity == Resources(8_000, 4_096, 3)
    assert settings.worker_size == Resources(1_000, 1_024, 1)
    assert settings.server_costs in (None, {})


def test_pools_without_servers_leave_costs_and_the_default_pool_alone(
    config: Path, ledger_service: AllocationService
) -> None:
    ledger = ledger_service.ledger
    ledger.configure_pool(
        DEFAULT_POOL, server_costs={"browser": Resources(500, 1_024, 0)}
    )
    position = last_position(ledger)
    apply_catalog(ledger, load(config, "[pools.gpu]\ncpu = 4\n"))
    assert ledger.pool_names() == [DEFAULT_POOL, "gpu"]
    assert ledger.pool(DEFAULT_POOL).settings.server_costs == {
        "browser": Resources(500, 1_024, 0)
    }
    assert all(e.event.actor == CONFIG_ACTOR for e in stored_events(ledger, position))


def test_each_server_keeps_its_own_idle_timeout(
    config: Path, ledger_service: AllocationService
) -> None:
    """`a` stays 600 s once idle, `b` 120 s; a name the catalog does not
    list gets the shortest. Applying the file again writes nothing."""
    ledger = ledger_service.ledger
    text = (
        '[mcp_servers.a]\ncommand = ["a"]\nidle_timeout_seconds = 600\n'
        '[mcp_servers.b]\ncommand = ["b"]\nidle_timeout_seconds = 120\n'
    )
    lines = apply_catalog(ledger, load(config, text))
    settings = ledger.pool(DEFAULT_POOL).settings
    assert (settings.idle_timeout_of("a"), settings.idle_timeout_of("b")) == (600, 120)
    assert settings.idle_timeout_of("unlisted") == settings.idle_timeout_seconds == 120
    assert settings.server_costs in (None, {})
    assert lines
    position = last_position(ledger)
    assert apply_catalog(ledger, load(config, text)) == []
    assert last_position(ledger) == position
    changed = text.replace("= 600", "= 900")
    [line] = apply_catalog(ledger, load(config, changed))
    assert "idle timeouts a 600 s, b 120 s -> a 900 s, b 120 s" in line


def test_an_empty_catalog_changes_nothing(ledger_service: AllocationService) -> None:
    ledger = ledger_service.ledger
    assert apply_catalog(ledger, Catalog()) == []
    assert last_position(ledger) == 0
