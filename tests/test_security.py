"""Beats under a least-privilege Redis ACL, and beats over TLS with certificates made here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from conftest import BeatGroup
from harness import HERE, ROOT, RedisServer, free_port, wait_for
from history import assert_exactly_once, check
from redbeat_safe import every, pattern

#: What a beat needs, documented in docs/redis-topologies.md: its own keys only,
#: the script commands and, because Redis 7 checks scripts against the caller's
#: ACL, every command the Lua scripts run.
BEAT_COMMANDS = (
    "+evalsha +script|load +ping +hmget +del +get +set "
    "+time +hget +hset +hdel +hexists +hsetnx +hincrby +zadd +zrem +zscore +zrange +zrangebyscore +zcount "
    "+sadd +srem +smembers +sismember +lpush +ltrim"
)
#: An operator (`celery schedules ...`) also reads whole hashes, their names and histories.
OPERATOR_COMMANDS = BEAT_COMMANDS + " +hgetall +hkeys +lrange"

SCHEDULE = {"e1": {"every": 1}, "p1": {"pattern": "*/1 * * * * *"}}
SCHEDULES = {"e1": every(1), "p1": pattern("*/1 * * * * *", tz="UTC")}


def test_the_documented_acl_is_the_tested_one() -> None:
    doc = (ROOT / "docs" / "redis-topologies.md").read_text()
    block = doc.split("ACL SETUSER beat", 1)[1].split("```", 1)[0]
    assert sorted(block.replace("\\", " ").split()[5:]) == sorted(BEAT_COMMANDS.split())
    assert "same plus `+hgetall +hkeys +lrange`" in doc and OPERATOR_COMMANDS.endswith("+hgetall +hkeys +lrange")


def acl_args(prefix: str) -> list[str]:
    keys = f"~{{{prefix}}}:*"
    return [
        "--user", "beat", "on", ">beat-pass", keys, "resetchannels", "-@all", *BEAT_COMMANDS.split(),
        "--user", "operator", "on", ">op-pass", keys, "resetchannels", "-@all", *OPERATOR_COMMANDS.split(),
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


def make_certificates(folder: Path) -> None:
    def sh(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test-ca")
    for name in ("server", "client"):
        sh("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=127.0.0.1")
        (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
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
