"""Beats under a least-privilege Redis ACL, beats over TLS with certificates made here,
and no secret in anything printed (banner, log, `schedules status`, `celery report`)."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from celery import Celery
from celery.exceptions import ImproperlyConfigured
from hypothesis import given
from hypothesis import strategies as st

from conftest import BeatGroup
from dashboard import Served
from harness import HERE, ROOT, RedisServer, free_port, wait_for
from history import assert_exactly_once, check
from redbeat_safe import every, pattern
from redbeat_safe.config import Settings
from redbeat_safe.connection import parse, redact, refusal

#: What a beat needs, documented in docs/redis-topologies.md: its own keys only,
#: the script commands and, because Redis 7 checks scripts against the caller's
#: ACL, every command the Lua scripts run.
BEAT_COMMANDS = (
    "+evalsha +script|load +ping +hmget +del +get +set "
    "+time +hget +hset +hdel +hexists +hsetnx +hincrby +zadd +zrem +zscore +zrange +zrangebyscore +zcount "
    "+zremrangebyrank +zremrangebyscore +sadd +srem +smembers +sismember +lpush +ltrim +pexpire "
    "+xadd +xread +xrevrange"
)
#: An operator (`celery schedules ...`) also reads whole hashes, their names and histories.
OPERATOR_COMMANDS = BEAT_COMMANDS + " +hgetall +hkeys +lrange +zmscore +lindex"

#: A read-only operator: `schedules list/show/status/history/export`, nothing that writes.
READER_COMMANDS = ("+evalsha +script|load +ping +time +hget +zscore +hgetall +hkeys +zrange +zrangebyscore +lrange "
                   "+hmget +zmscore +lindex +hexists")

SCHEDULE = {"e1": {"every": 1}, "p1": {"pattern": "*/1 * * * * *"}}
SCHEDULES = {"e1": every(1), "p1": pattern("*/1 * * * * *", tz="UTC")}


def test_the_documented_acl_is_the_tested_one() -> None:
    doc = (ROOT / "docs" / "redis-topologies.md").read_text()
    block = doc.split("ACL SETUSER beat", 1)[1].split("```", 1)[0]
    assert sorted(block.replace("\\", " ").split()[5:]) == sorted(BEAT_COMMANDS.split())
    assert "same plus `+hgetall +hkeys +lrange +zmscore +lindex`" in doc and OPERATOR_COMMANDS.endswith("+hgetall +hkeys +lrange +zmscore +lindex")


def acl_args(prefix: str) -> list[str]:
    keys = f"~{{{prefix}}}:*"
    return [
        "--user", "beat", "on", ">beat-pass", keys, "resetchannels", "-@all", *BEAT_COMMANDS.split(),
        "--user", "operator", "on", ">op-pass", keys, "resetchannels", "-@all", *OPERATOR_COMMANDS.split(),
        "--user", "reader", "on", ">read-pass", keys, "resetchannels", "-@all", *READER_COMMANDS.split(),
    ]


def test_beats_and_the_cli_run_under_the_documented_least_privilege_acl(beats: BeatGroup, tmp_path: Path) -> None:
    store = RedisServer(tmp_path / "acl", args=acl_args(beats.prefix)).start()
    try:
        url = f"redis://beat:beat-pass@127.0.0.1:{store.port}/0"
        a = beats.start(SCHEDULE, "a", BEAT_REDIS_URL=url, BEAT_LEASE="2")
        b = beats.start(SCHEDULE, "b", BEAT_REDIS_URL=url, BEAT_LEASE="2")
        a.wait_log("registered 2 static entries")
        b.wait_log("registered 2 static entries")
        env = {**os.environ, **beats.env({}), "BEAT_REDIS_URL": f"redis://operator:op-pass@127.0.0.1:{store.port}/0"}
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT)])

        def cli(*args: str) -> str:
            done = subprocess.run([sys.executable, "-m", "celery", "-A", "beatapp", "schedules", *args],
                                  env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            return done.stdout

        cli("add", "api", "--task", "beatapp.record", "--every", "1s")
        time.sleep(3)
        for verb in ("list", "status", "export"):
            cli(verb, "--json") if verb != "export" else cli(verb)
        assert json.loads(cli("history", "e1", "--json"))
        time.sleep(1)
        beats.stop_all()
        denied = store.client().acl_log()
        assert denied == [], denied  # no command was refused to either user
        assert_exactly_once(check(beats.broker.messages(), beats.prefix, SCHEDULES | {"api": every(1)}), min_ticks=3)
        # and the restriction is real: another prefix is out of reach
        client = redis.Redis(port=store.port, username="beat", password="beat-pass")
        try:
            client.hget("{someone-else}:defs", "x")
            raise AssertionError("the beat user could read another app's keys")
        except redis.exceptions.NoPermissionError:
            pass
        finally:
            client.close()
    finally:
        store.stop()


def make_certificates(folder: Path, names: dict[str, str] | None = None) -> None:
    """A CA (ca.crt) and, signed by it, NAME.crt/NAME.key for each NAME: subjectAltName
    (default: server and client, both for IP:127.0.0.1)."""
    def sh(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test-ca")
    for name, san in (names or {"server": "IP:127.0.0.1", "client": "IP:127.0.0.1"}).items():
        cn = san.split(":", 1)[1]
        sh("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        (folder / "san.ext").write_text(f"subjectAltName={san}\n")
        sh("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
           "-out", f"{name}.crt", "-days", "1", "-extfile", "san.ext")


def test_beats_over_tls_with_client_certificates(beats: BeatGroup, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certificates(certs)
    tls_port = free_port()
    store = RedisServer(tmp_path / "tls", args=[
        "--port", "0", "--tls-port", str(tls_port),
        "--tls-cert-file", str(certs / "server.crt"), "--tls-key-file", str(certs / "server.key"),
        "--tls-ca-cert-file", str(certs / "ca.crt"), "--tls-auth-clients", "yes",
    ])
    store.port = tls_port  # only TLS is served; the readiness check below speaks TLS
    store.client = lambda: redis.Redis(  # type: ignore[method-assign]
        host="127.0.0.1", port=tls_port, ssl=True, ssl_ca_certs=str(certs / "ca.crt"),
        ssl_certfile=str(certs / "client.crt"), ssl_keyfile=str(certs / "client.key"), socket_timeout=10,
    )
    store.start()
    try:
        options = json.dumps({"ssl": {"ssl_cert_reqs": "required", "ssl_ca_certs": str(certs / "ca.crt"),
                                      "ssl_certfile": str(certs / "client.crt"), "ssl_keyfile": str(certs / "client.key")}})
        url = f"rediss://127.0.0.1:{tls_port}/0"
        a = beats.start(SCHEDULE, "a", BEAT_REDIS_URL=url, BEAT_REDIS_OPTIONS=options)
        b = beats.start(SCHEDULE, "b", BEAT_REDIS_URL=url, BEAT_REDIS_OPTIONS=options)
        a.wait_log("registered 2 static entries")
        b.wait_log("registered 2 static entries")
        wait_for(lambda: len(beats.broker.messages()) >= 8, 20, what="dispatches over TLS")
        beats.stop_all()
        assert_exactly_once(check(beats.broker.messages(), beats.prefix, SCHEDULES), min_ticks=3)
        # without a client certificate the server refuses the connection
        no_cert = json.dumps({"ssl": {"ssl_cert_reqs": "required", "ssl_ca_certs": str(certs / "ca.crt")}})
        c = beats.start(SCHEDULE, "c", BEAT_REDIS_URL=url, BEAT_REDIS_OPTIONS=no_cert)
        c.wait_log("Redis unavailable", timeout=30)
        c.stop()
    finally:
        store.stop()


# -- secrets in output ------------------------------------------------------

#: A password with characters that need quoting in a URL, and its quoted form.
SECRET = "Zq7/s3cr=t#pw"
QUOTED = quote(SECRET, safe="")


def celery(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`celery -A beatapp ARGS` as a real subprocess with the beats' environment."""
    env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "celery", "-A", "beatapp", *args],
                          env=env, capture_output=True, text=True, timeout=60, cwd=cwd)


def leaks(text: str) -> list[str]:
    """The forms of SECRET that appear in text."""
    return [form for form in (SECRET, QUOTED, "s3cr") if form in text]


def assert_no_secret(text: str, where: str) -> None:
    assert not leaks(text), f"the password appears in {where}:\n{text}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://beat:{QUOTED}@h:6379/0", "redis://beat:***@h:6379/0"),
        (f"redis://:{QUOTED}@h/0", "redis://:***@h/0"),
        (f"redis://:{SECRET}@h/0", "redis://:***@h/0"),  # unquoted '/', '=' and '#': still all of it
        ("redis://:Zq7?s3cr@h/0", "redis://:***@h/0"),
        (f"redis://beat@h/0?password={QUOTED}", "redis://beat@h/0?password=***"),
        (f"redis://h/0?db=1&password={SECRET}&socket_timeout=3", "redis://h/0?db=1&password=***&socket_timeout=3"),
        (f"redis://h/0?pass%77ord={QUOTED}", "redis://h/0?pass%77ord=***"),  # redis-py decodes the name
        (f"redis://h/0?PASSWORD={QUOTED}&password={QUOTED}", "redis://h/0?PASSWORD=***&password=***"),
        (f"rediss://h/0?ssl_password={QUOTED}&ssl_cert_reqs=required", "rediss://h/0?ssl_password=***&ssl_cert_reqs=required"),
        (f"sentinel://:{QUOTED}@h1:26379/0;sentinel://h2:26379?sentinel_password={QUOTED}",
         "sentinel://:***@h1:26379/0;sentinel://h2:26379?sentinel_password=***"),
        (f"redis+cluster://beat:{QUOTED}@h1:7000,h2:7001", "redis+cluster://beat:***@h1:7000,h2:7001"),
        (f"unix://beat:{QUOTED}@/run/redis.sock?db=0", "unix://beat:***@/run/redis.sock?db=0"),
        (f"unix:///run/redis.sock?db=0&password={QUOTED}", "unix:///run/redis.sock?db=0&password=***"),
        ("redis://beat@h:6379/2?client_name=a", "redis://beat@h:6379/2?client_name=a"),  # nothing secret: unchanged
    ],
)
def test_redact_masks_every_credential_redis_py_accepts(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert_no_secret(redact(url), "redact()")


@pytest.mark.parametrize("url", ["redis://:Zq7/s3cr@h/0", "redis://:Zq7#s3cr@h/0", "sentinel://:Zq7/s3cr@h:26379/0",
                                 "redis+cluster://:Zq7/s3cr@h:7000", "sentinel://:pw@h:26379/Zq7s3cr"])
def test_a_url_with_an_unquoted_password_is_refused_without_echoing_it(url: str) -> None:
    """urlsplit cuts such a URL inside the password; its port or db is then a piece of it."""
    with pytest.raises(ImproperlyConfigured, match="percent-encode") as refused:
        parse(url, {"service_name": "m"} if url.startswith("sentinel") else {})
    assert "Zq7" not in str(refused.value) and "s3cr" not in str(refused.value)


@given(st.text(min_size=1).map(lambda t: "Zq" + t), st.text(st.characters(blacklist_characters="?"), min_size=1))
def test_redact_masks_any_password_quoted_or_not(password: str, raw: str) -> None:
    """Quoted in the userinfo or the query, or unquoted in the userinfo (no '?'): all of it goes."""
    quoted = quote(password, safe="")
    for url in (f"redis://u:{quoted}@h:1/0?db=2", f"redis://u@h:1/0?db=2&password={quoted}"):
        assert quoted not in redact(url) and redact(url).startswith("redis://u") and "h:1/0" in redact(url)
    assert redact(f"redis://u:{raw}@h:1/0") == "redis://u:***@h:1/0"


def test_an_app_that_imports_redbeat_safe_masks_the_url_in_its_own_reports() -> None:
    """A worker loads the app module (which imports redbeat_safe for its schedules)
    and answers `celery inspect conf` from ``app.conf.table(censored=True)``: masked
    there too, without the CLI or the scheduler loaded."""
    code = ("import celery\nfrom redbeat_safe import every\n"
            "app = celery.Celery('w', set_as_current=False)\n"
            f"app.conf.update(redbeat_safe_redis_url='redis://beat:{QUOTED}@h/0?password={QUOTED}')\n"
            "print(app.bugreport())\nprint(app.conf.table(censored=True))\n"
            "import sys\nprint('config loaded' if 'redbeat_safe.config' in sys.modules else 'config not loaded')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "config not loaded" in done.stdout and "redbeat_safe_redis_url" in done.stdout
    assert_no_secret(done.stdout, "the app's own report")


def test_no_password_in_the_banner_log_status_or_celery_report(beats: BeatGroup, tmp_path: Path) -> None:
    """The password in the URL's query (which redis-py honours) and in the options
    never shows: not in the beat's banner and log, `schedules status` (text and
    JSON), nor Celery's own `celery report`."""
    store = RedisServer(tmp_path / "pw", args=["--user", "beat", "on", f">{SECRET}", "~*", "&*", "+@all"]).start()
    try:
        url = f"redis://beat@127.0.0.1:{store.port}/0?password={QUOTED}"
        a = beats.start(SCHEDULE, "a", BEAT_REDIS_URL=url)
        a.wait_log("registered 2 static entries")
        env = beats.env({}, BEAT_REDIS_URL=url)
        outputs = {}
        for args in (("schedules", "status"), ("schedules", "status", "--json"), ("report",)):
            done = celery(env, tmp_path, *args)
            assert done.returncode == 0, done.stderr
            assert "127.0.0.1" in done.stdout or "redbeat_safe_redis_url" in done.stdout, done.stdout
            outputs[" ".join(args)] = done.stdout + done.stderr
        # the password in the options instead (as Celery's own settings would have it)
        options = json.dumps({"username": "beat", "password": SECRET, "sentinel_kwargs": {"password": SECRET}})
        done = celery(beats.env({}, BEAT_REDIS_URL=f"redis://127.0.0.1:{store.port}/0", BEAT_REDIS_OPTIONS=options),
                      tmp_path, "report")
        assert done.returncode == 0, done.stderr
        outputs["report (options)"] = done.stdout + done.stderr
        beats.stop_all()
        outputs["beat banner and log"] = a.output()
        assert "redbeat_safe_redis_url" in outputs["report"] and "redbeat_safe_redis_options" in outputs["report (options)"]
        found = {where: next(line for line in text.splitlines() if leaks(line)) for where, text in outputs.items() if leaks(text)}
        assert found == {}, "the password appears in: " + "; ".join(f"{w}: {line.strip()}" for w, line in found.items())
    finally:
        store.stop()


# -- the key prefix is a plain name -------------------------------------------

def prefixed_settings(prefix: object) -> Settings:
    app = Celery("prefix", set_as_current=False)
    app.conf.update(redbeat_safe_redis_url="redis://127.0.0.1:6390/0", redbeat_safe_key_prefix=prefix)
    return Settings.from_app(app)


@pytest.mark.parametrize("prefix", ["team*", "te?m", "team[AB]", "te\\am", "a\nb", "a\x00b", "a b", "a:b", "{x}", "x}",
                                    "caf\u00e9", "x" * 101, 5, b"bytes"])
def test_a_prefix_that_is_not_a_plain_name_is_refused(prefix: object) -> None:
    """The documented ACL is `~{<prefix>}:*`, a glob: `team*` there opens `{teamB}:*` too."""
    with pytest.raises(ImproperlyConfigured, match="redbeat_safe_key_prefix"):
        prefixed_settings(prefix)


@pytest.mark.parametrize("prefix", ["redbeat_safe", "team-B.prod_1", "x" * 100, "0"])
def test_plain_prefixes_are_accepted(prefix: str) -> None:
    assert prefixed_settings(prefix).key_prefix == prefix


# -- a read-only operator, and NOPERM reported as such ----------------------------

def test_permission_refusals_are_told_apart_from_outages(tmp_path: Path) -> None:
    """Real errors from a real server: NOPERM from a command, from a pipeline and from
    inside a script (a plain ERR there), bad credentials; an outage or a damaged key is not one."""
    store = RedisServer(tmp_path / "acl", args=["--user", "r", "on", ">p", "~{x}:*", "-@all", "+evalsha", "+eval", "+hget"]).start()
    client = redis.Redis(port=store.port, username="r", password="p")
    errors: dict[str, Exception] = {}
    for what, call in {
        "command": lambda: client.hset("{x}:h", "a", "b"),
        "key": lambda: client.hget("{other}:h", "a"),
        "script": lambda: client.eval("return redis.call('HSET', KEYS[1], 'a', 'b')", 1, "{x}:h"),
        "pipeline": lambda: client.pipeline(transaction=False).hset("{x}:h", "a", "b").execute(),
        "password": lambda: redis.Redis(port=store.port, username="r", password="wrong", retry=None).ping(),
        "damaged": lambda: store.client().hget(store.client().set("str", "v") and "str", "a"),
    }.items():
        try:
            call()
            raise AssertionError(f"{what}: not refused")
        except redis.RedisError as exc:
            errors[what] = exc
    store.stop()
    client.close()
    try:
        redis.Redis(port=store.port, retry=None).ping()  # no retries: the refused connection at once
    except redis.ConnectionError as exc:
        errors["outage"] = exc
    said = {what: refusal(exc) for what, exc in errors.items()}
    for what in ("command", "key", "script", "pipeline"):
        assert (said[what] or "").startswith("Redis refused: no permission") and "check the ACL" in (said[what] or ""), (what, errors[what])
    assert (said["password"] or "").startswith("Redis refused: authentication failed")
    assert said["outage"] is None and said["damaged"] is None, said


def test_a_read_only_operator_reads_everything_and_writes_nothing(beats: BeatGroup, tmp_path: Path) -> None:
    """The documented reader ACL is enough for list/show/status/history/export
    (ACL LOG stays empty) and refuses add/remove/pause/trigger, which the CLI
    reports as a permission problem (exit 4), not as Redis being unavailable."""
    store = RedisServer(tmp_path / "acl", args=acl_args(beats.prefix)).start()
    try:
        a = beats.start(SCHEDULE, "a", BEAT_REDIS_URL=f"redis://beat:beat-pass@127.0.0.1:{store.port}/0")
        a.wait_log("registered 2 static entries")
        wait_for(lambda: len(beats.broker.messages()) >= 4, 20, what="dispatches")
        env = beats.env({}, BEAT_REDIS_URL=f"redis://reader:read-pass@127.0.0.1:{store.port}/0")
        store.client().execute_command("SCRIPT", "FLUSH")  # the reader loads the scripts itself

        def read(*args: str) -> str:
            done = celery(env, tmp_path, "schedules", *args)
            assert done.returncode == 0, f"{args}: {done.stderr}"
            return done.stdout

        assert {e["name"] for e in json.loads(read("list", "--json"))} == {"e1", "p1"}
        assert json.loads(read("show", "e1", "--json"))["name"] == "e1"
        assert json.loads(read("status", "--json"))["instances"]
        assert json.loads(read("history", "e1", "--json"))
        assert {e["name"] for e in json.loads(read("export"))["entries"]} == {"e1", "p1"}
        served = Served(beats, "--entry-series", "all", env={"BEAT_REDIS_URL": f"redis://reader:read-pass@127.0.0.1:{store.port}/0"})
        try:  # the dashboard and the metrics need nothing more
            for path in ("/", "/entry/e1", "/beats", "/metrics", "/healthz"):
                assert served.get(path).status == 200, path
            assert "redbeat_safe_entry_next_tick_timestamp_seconds" in served.get("/metrics").text
        finally:
            served.stop()
        assert store.client().acl_log() == [], store.client().acl_log()  # nothing the reader needed was refused
        for args in (("remove", "e1", "--force"), ("add", "x", "--task", "beatapp.record", "--every", "1s"), ("pause", "e1"), ("trigger", "e1")):
            done = celery(env, tmp_path, "schedules", *args)
            assert done.returncode == 4, (args, done.returncode, done.stderr)
            assert "Redis refused: no permission" in done.stderr and "check the ACL" in done.stderr, done.stderr
            assert "unavailable" not in done.stderr
        assert {e["name"] for e in json.loads(read("list", "--json"))} == {"e1", "p1"}  # nothing was written
    finally:
        store.stop()


def test_a_beat_without_write_permission_says_so_not_that_redis_is_down(beats: BeatGroup, tmp_path: Path) -> None:
    """A beat given the read-only user: its registration script is refused inside
    Redis; another a wrong password. Before, the first logged "Redis refused a command
    (ResponseError: The user executing the script can't run this command ...); not an
    outage: a damaged key, a missing ACL permission or a bug" and the second "Redis
    unavailable", as for a dead server."""
    store = RedisServer(tmp_path / "acl", args=acl_args(beats.prefix)).start()
    try:
        a = beats.start(SCHEDULE, "a", BEAT_REDIS_URL=f"redis://reader:read-pass@127.0.0.1:{store.port}/0")
        a.wait_log("Redis refused: no permission", timeout=30)
        b = beats.start(SCHEDULE, "b", BEAT_REDIS_URL=f"redis://reader:wrong@127.0.0.1:{store.port}/0")
        b.wait_log("Redis refused: authentication failed", timeout=30)
        beats.stop_all()
        for beat in (a, b):
            assert "Redis unavailable" not in beat.output() and "registered" not in beat.output(), beat.output()
        assert "check the ACL" in a.output()
    finally:
        store.stop()


# -- the store sharing the broker's database --------------------------------------

SHARED = "same Redis database as the Celery broker"


def store_settings(**conf: object) -> Settings:
    app = Celery("shared", set_as_current=False)
    app.conf.update(conf)
    return Settings.from_app(app)


@pytest.mark.parametrize(
    ("conf", "shared"),
    [
        ({"broker_url": "redis://h:6379/1"}, True),  # the store defaults to the broker
        ({"broker_url": "redis://h:6379/1", "redbeat_safe_redis_url": "redis://h:6379/1"}, True),
        ({"broker_url": "redis://h/1", "redbeat_safe_redis_url": "redis://beat:pw@H:6379/1?socket_timeout=3"}, True),
        ({"broker_url": "redis://localhost:6379", "redbeat_safe_redis_url": "redis://127.0.0.1:6379/0"}, True),
        ({"broker_url": "redis://h:6379/0", "redbeat_safe_redis_url": "rediss://h:6379/?db=0"}, True),
        ({"broker_url": "redis://other:6379/0;redis://h:6379/2", "redbeat_safe_redis_url": "redis://h:6379/2"}, True),
        ({"broker_url": ["redis://other/0", "redis://h:6379/2"], "redbeat_safe_redis_url": "redis://h:6379/2"}, True),
        ({"broker_url": "redis://h:6379/1", "redbeat_safe_redis_url": "redis://h:6379", "redbeat_safe_redis_options": {"db": 1}}, True),
        ({"broker_url": "unix:///run/r.sock?virtual_host=0", "redbeat_safe_redis_url": "unix:///run/r.sock?db=0"}, True),
        ({"broker_url": "sentinel://s1:26379/0;sentinel://s2:26379/0", "broker_transport_options": {"master_name": "m"}}, True),
        ({"broker_url": "redis://h:6379/1", "redbeat_safe_redis_url": "redis://h:6379/0"}, False),
        ({"broker_url": "redis://h:6379/0", "redbeat_safe_redis_url": "redis://h:6380/0"}, False),
        ({"broker_url": "redis://h:6379/0", "redbeat_safe_redis_url": "redis://other:6379/0"}, False),
        ({"broker_url": "redis://h:6379/0", "redbeat_safe_redis_url": "redis://h:6379/0?db=2"}, False),
        ({"broker_url": "redis://h:6379/0", "redbeat_safe_redis_url": "redis://h:6379", "redbeat_safe_redis_options": {"db": 3}}, False),
        ({"broker_url": "amqp://h//", "redbeat_safe_redis_url": "redis://h:6379/0"}, False),
        ({"broker_url": "redis://h:7000/0", "redbeat_safe_redis_url": "redis+cluster://h:7000"}, False),  # no Cluster broker
        ({"broker_url": "sentinel://s1:26379/0", "broker_transport_options": {"master_name": "m"},
          "redbeat_safe_redis_url": "sentinel://s1:26379/1", "redbeat_safe_redis_options": {"service_name": "m"}}, False),
    ],
)
def test_a_store_sharing_the_brokers_database_is_noticed(conf: dict[str, object], shared: bool) -> None:
    warnings = store_settings(**conf).warnings
    assert any(SHARED in w for w in warnings) == shared, warnings


def test_a_beat_warns_once_when_the_store_shares_the_brokers_database(beats: BeatGroup) -> None:
    """Sharing: the store defaulting to the broker, or the broker's URL written again
    (as localhost): one WARNING line at start. A database of its own: none."""
    broker = beats.broker.url  # db 1 of the test server; the store's default URL is db 0
    shared_default = beats.start(SCHEDULE, "default", BEAT_REDIS_URL="")
    shared_same = beats.start(SCHEDULE, "same", BEAT_REDIS_URL=broker.replace("127.0.0.1", "localhost"))
    separate = beats.start(SCHEDULE, "separate")
    for beat in (shared_default, shared_same, separate):
        beat.wait_log("registered 2 static entries")
    beats.stop_all()
    for beat in (shared_default, shared_same):
        lines = [line for line in beat.output().splitlines() if SHARED in line]
        assert len(lines) == 1 and "WARNING" in lines[0] and "/1" in lines[0], beat.output()
    assert SHARED not in separate.output()


# -- TLS: host names checked, verification off said out loud ------------------------

def tls_store(tmp_path: Path, certs: Path, cert: str) -> RedisServer:
    """A redis-server serving TLS only, with certs/CERT.crt, clients unauthenticated."""
    port = free_port()
    store = RedisServer(tmp_path / "tls", port=port, args=[
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs / f"{cert}.crt"),
        "--tls-key-file", str(certs / f"{cert}.key"), "--tls-ca-cert-file", str(certs / "ca.crt"), "--tls-auth-clients", "no",
    ])
    # the readiness check trusts the CA but, unlike a beat, not the names (one certificate is the wrong host's)
    store.client = lambda: redis.Redis(  # type: ignore[method-assign]
        host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(certs / "ca.crt"), ssl_check_hostname=False, socket_timeout=10)
    return store.start()


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    folder.mkdir()
    make_certificates(folder, {"right": "IP:127.0.0.1", "wrong": "DNS:other.example"})
    return folder


def test_a_beat_refuses_a_certificate_issued_to_another_host(beats: BeatGroup, tmp_path: Path, certs: Path) -> None:
    """The CA is trusted, but the certificate names other.example, not 127.0.0.1: the
    beat logs a certificate error and never registers (redis-py before 6.0 accepted it
    without ssl_check_hostname). Once the server has the right certificate, it does."""
    store = tls_store(tmp_path, certs, "wrong")
    try:
        url = f"rediss://127.0.0.1:{store.port}/0"
        options = json.dumps({"ssl": {"ssl_cert_reqs": "required", "ssl_ca_certs": str(certs / "ca.crt")}})
        a = beats.start(SCHEDULE, "a", BEAT_REDIS_URL=url, BEAT_REDIS_OPTIONS=options)
        a.wait_log("Redis unavailable", timeout=30)
        time.sleep(3)  # several retries, every one refused
        out = a.output()
        assert "registered" not in out, out
        assert "certificate verify failed" in out and ("mismatch" in out or "match" in out), out
        assert store.client().keys(f"{{{beats.prefix}}}:*") == []  # nothing was written through the impostor
        store.stop()
        store.args[store.args.index("--tls-cert-file") + 1] = str(certs / "right.crt")
        store.args[store.args.index("--tls-key-file") + 1] = str(certs / "right.key")
        store.start()
        a.wait_log("registered 2 static entries", timeout=30)
        wait_for(lambda: len(beats.broker.messages()) >= 2, 20, what="dispatches over verified TLS")
        assert "does not verify" not in a.output() and "host name" not in a.output()
    finally:
        store.stop()


@pytest.mark.parametrize(
    ("url", "options", "said"),
    [
        ("rediss://h/0", {"ssl": {"ssl_cert_reqs": "none"}}, "does not verify the server's certificate"),
        ("rediss://h/0", {"ssl": {"cert_reqs": None}}, "does not verify the server's certificate"),
        ("rediss://h/0", {"ssl_cert_reqs": ssl.CERT_NONE}, "does not verify the server's certificate"),
        ("rediss://h/0?ssl_cert_reqs=none", {}, "does not verify the server's certificate"),
        ("rediss://h/0", {"ssl_check_hostname": False}, "does not check the server's host name"),
        ("rediss://h/0?ssl_check_hostname=false", {}, "does not check the server's host name"),
        ("sentinel://s:26379", {"service_name": "m", "ssl": {"ssl_cert_reqs": "none"}}, "TLS to the Redis primary"),
        ("sentinel://s:26379", {"service_name": "m", "sentinel_kwargs": {"ssl": True, "ssl_check_hostname": False}}, "TLS to the sentinels"),
        ("rediss+cluster://h:7000", {"ssl": {"ssl_cert_reqs": "none"}}, "TLS to the cluster nodes"),
    ],
)
def test_tls_without_verification_is_warned_about(url: str, options: dict[str, object], said: str) -> None:
    topology = parse(url, options)
    assert len(topology.warnings) == 1 and said in topology.warnings[0], topology.warnings


def test_verification_off_does_not_ask_for_a_host_name_check() -> None:
    """redis-py 6.0 refuses CERT_NONE with check_hostname on ("Cannot set verify_mode to
    CERT_NONE when check_hostname is enabled"): found by scripts/lowest-versions."""
    assert parse("rediss://h/0", {"ssl": {"ssl_cert_reqs": "none"}}).options["ssl_check_hostname"] is False
    assert parse("rediss://h/0?ssl_cert_reqs=none", {}).options["ssl_check_hostname"] is False


@pytest.mark.parametrize(
    ("url", "options", "where"),
    [
        ("rediss://h/0", {}, "options"),
        ("rediss://h/0", {"ssl": {"ssl_cert_reqs": "optional", "ssl_ca_certs": "/ca.pem"}}, "options"),  # verified on a client
        ("rediss://h/0", {"ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED}}, "options"),
        ("sentinel://s:26379", {"service_name": "m", "ssl": True, "sentinel_kwargs": {"ssl": True}}, "both"),
        ("rediss+cluster://h:7000", {}, "options"),
    ],
)
def test_tls_checks_host_names_unless_told_not_to(url: str, options: dict[str, object], where: str) -> None:
    """Explicit, so that no library default (redis-py before 6.0: off) turns the check off."""
    topology = parse(url, options)
    assert topology.options["ssl_check_hostname"] is True and topology.warnings == ()
    if where == "both":
        assert topology.sentinel_kwargs["ssl_check_hostname"] is True
    assert "ssl_check_hostname" not in parse("redis://h/0", {}).options  # no TLS, nothing to check
    assert "ssl_check_hostname" not in parse("rediss://h/0?ssl_check_hostname=yes", {}).options  # the URL's own wins


def test_verification_off_is_logged_once_by_a_beat_and_by_the_cli(beats: BeatGroup, tmp_path: Path, certs: Path) -> None:
    store = tls_store(tmp_path, certs, "right")
    try:
        url = f"rediss://127.0.0.1:{store.port}/0"
        off = json.dumps({"ssl": {"ssl_cert_reqs": "none"}})
        a = beats.start(SCHEDULE, "a", BEAT_REDIS_URL=url, BEAT_REDIS_OPTIONS=off)
        a.wait_log("registered 2 static entries")
        done = celery(beats.env({}, BEAT_REDIS_URL=url, BEAT_REDIS_OPTIONS=off), tmp_path, "schedules", "list", "--json")
        assert done.returncode == 0, done.stderr
        assert {e["name"] for e in json.loads(done.stdout)} == {"e1", "p1"}  # stdout stays JSON
        assert done.stderr.count("does not verify the server's certificate") == 1, done.stderr
        beats.stop_all()
        lines = [line for line in a.output().splitlines() if "does not verify the server's certificate" in line]
        assert len(lines) == 1 and "WARNING" in lines[0], a.output()
    finally:
        store.stop()


def test_every_command_a_script_runs_is_in_the_documented_beat_acl() -> None:
    """Redis 7 checks what a script calls against the caller's ACL: a command a
    script gains (a new overlap path, a ledger trim) and the docs do not grant
    would fail only for users who follow the docs, on that path only."""
    granted = {c.lstrip("+").lower() for c in BEAT_COMMANDS.split()}
    # ZMSCORE: only snapshot.lua's 'summary' branch (list, metrics), which a beat never runs
    operator_only = {"zmscore"}
    assert operator_only <= {c.lstrip("+").lower() for c in OPERATOR_COMMANDS.split()}
    granted |= operator_only
    called: dict[str, set[str]] = {}
    for script in sorted((ROOT / "redbeat_safe" / "lua").glob("*.lua")):
        for command in re.findall(r"redis\.p?call\(\s*'([A-Za-z]+)'", script.read_text()):
            called.setdefault(command.lower(), set()).add(script.name)
    assert len(called) > 10, called  # the pattern still finds the calls
    missing = {c: sorted(where) for c, where in called.items() if c not in granted}
    assert missing == {}, missing
