"""Connection settings: every topology parsed without I/O, bad combinations refused
clearly, and TLS, ACL users and unix sockets used for real against redis-server."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from harness import RedisServer, free_port
from redbeat_safe import Scheduler, Schedules, every
from redbeat_safe.config import Settings
from redbeat_safe.connection import parse


def settings(**conf: Any) -> Settings:
    app = Celery("c", set_as_current=False)
    app.conf.update(broker_url="amqp://guest@localhost//")
    app.conf.update(conf)
    return Settings.from_app(app)


def test_standalone_gets_bounded_timeouts_and_a_retry_that_skips_timeouts() -> None:
    t = parse("redis://127.0.0.1:6390/3", {})
    assert t.kind == "standalone" and t.options["socket_timeout"] == 5.0 and t.options["health_check_interval"] == 15
    retry = t.options["retry"]
    assert retry._retries == 2 and redis.TimeoutError not in retry._supported_errors  # get_retries() is redis-py 6+
    t = parse("redis://h/0", {"socket_timeout": 1, "health_check_interval": 2, "username": "u", "password": "p"})
    assert (t.options["socket_timeout"], t.options["health_check_interval"], t.options["username"]) == (1, 2, "u")
    assert parse("unix:///run/redis.sock?db=2", {}).kind == "standalone"


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("redis://h/0", {"decode_responses": True}, "raw bytes"),
        ("redis+cluster://h:7000", {"read_from_replicas": True}, "stale definition"),
        ("redis://h/0", {"socket_timout": 1}, "unknown option 'socket_timout'"),
        ("redis://h/0", {"ssl": {"ssl_ca_certs": "ca.pem"}}, "use rediss://"),
        ("rediss://h/0", {"ssl": {"verify": True}}, "unknown ssl option"),
        ("amqp://h//", {}, "must be one of"),
        ("redis://h1/0;redis://h2/0", {}, "names one server"),
        ("sentinel://h:26379", {}, "service_name"),
        ("redis://h/0", {"service_name": "m"}, "need sentinels"),
        ("redis://h/0", {"sentinels": ["h:26379"], "service_name": "m"}, "use a sentinel://host:port;"),
        ("redis+cluster://h:7000/2", {}, "only database 0"),
        ("unix:///tmp/r.sock", {"cluster": True}, r"use a redis\+cluster://"),
        ("sentinel://h:26379", {"service_name": "m", "cluster": True}, "choose Sentinel or Cluster"),
        ("", {"cluster": True}, "startup nodes"),
        ("", {"sentinels": ["h"], "service_name": "m"}, "'host:port'"),
    ],
)
def test_bad_combinations_are_refused_with_a_clear_error(url: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        parse(url, options)


def test_sentinel_from_urls_and_options() -> None:
    t = parse("sentinel://:s3cret@h1:26379/2;sentinel://h2:26380", {"master_name": "mymaster", "sentinel_password": "sp", "sentinels": [("h3", 26381)]})
    assert t.kind == "sentinel" and t.service_name == "mymaster"
    assert t.nodes == (("h1", 26379), ("h2", 26380), ("h3", 26381))
    assert t.options["db"] == 2 and t.options["password"] == "s3cret"  # the data nodes' password, as in Celery
    assert t.sentinel_kwargs["password"] == "sp" and t.sentinel_kwargs["socket_timeout"] == 5.0
    assert "s3cret" not in t.describe() and "mymaster" in t.describe()
    s = settings(redbeat_safe_redis_options={"sentinels": ["10.0.0.1:26379", "10.0.0.2:26379"], "service_name": "m"})
    assert s.topology.kind == "sentinel" and len(s.topology.nodes) == 2


def test_cluster_from_a_url_or_options() -> None:
    t = parse("redis+cluster://u:p@h1:7000,h2:7001", {"socket_timeout": 2})
    assert t.kind == "cluster" and t.nodes == (("h1", 7000), ("h2", 7001)) and t.options["password"] == "p"
    assert parse("redis://h1:7000/0", {"cluster": True}).kind == "cluster"
    t = parse("", {"startup_nodes": ["h1:7000", ["h2", 7001]]})
    assert t.kind == "cluster" and t.nodes == (("h1", 7000), ("h2", 7001))
    assert parse("rediss+cluster://h1:7000", {}).options["ssl"] is True


def test_the_store_follows_a_sentinel_or_tls_broker_with_its_settings() -> None:
    s = settings(broker_url="sentinel://h1:26379;sentinel://h2:26379",
                 broker_transport_options={"master_name": "mq", "sentinel_kwargs": {"password": "sp"}})
    assert s.topology.kind == "sentinel" and s.topology.service_name == "mq" and s.topology.sentinel_kwargs["password"] == "sp"
    s = settings(broker_url="rediss://h:6380/0", broker_use_ssl={"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"})
    assert s.topology.options["ssl_ca_certs"] == "/ca.pem"
    s = settings(broker_url="redis://h1/0;redis://h2/0")  # kombu's failover list: the first
    assert s.topology.url == "redis://h1/0"


def test_wait_settings_are_checked() -> None:
    assert settings(redbeat_safe_redis_url="redis://h/0", redbeat_safe_wait_replicas=1).wait_timeout_ms == 1000
    with pytest.raises(ImproperlyConfigured, match="half of redbeat_safe_lease"):
        settings(redbeat_safe_redis_url="redis://h/0", redbeat_safe_wait_replicas=1, redbeat_safe_wait_timeout=6)
    with pytest.raises(ImproperlyConfigured, match="whole number"):
        settings(redbeat_safe_redis_url="redis://h/0", redbeat_safe_wait_replicas=-1)


@pytest.mark.parametrize("url", ["redis+cluster://127.0.0.1:{p},127.0.0.1:{q}", "sentinel://127.0.0.1:{p};sentinel://127.0.0.1:{q}"])
def test_the_banner_instance_does_no_io_on_any_topology(url: str) -> None:
    app = Celery("lazy", set_as_current=False)
    app.conf.update(redbeat_safe_redis_url=url.format(p=free_port(), q=free_port()), redbeat_safe_redis_options={"service_name": "m"}
                    if url.startswith("sentinel") else {})
    s = Scheduler(app=app, lazy=True)
    assert ("sentinel service 'm'" if url.startswith("sentinel") else "cluster via") in s.info
    assert s.tick() == 1.0
    s.close()
    assert s._client is None


def test_an_unreachable_cluster_is_a_redis_error_the_scheduler_survives() -> None:
    app = Celery("gone", set_as_current=False)
    app.conf.update(broker_url=f"redis://127.0.0.1:{free_port()}/0", redbeat_safe_redis_url=f"redis+cluster://127.0.0.1:{free_port()}",
                    redbeat_safe_redis_options={"socket_connect_timeout": 0.5})
    s = Scheduler(app=app)  # registration fails: logged, not raised
    assert s.tick() > 0 and s._outage_since is not None
    s.close()


def test_an_acl_user_and_a_unix_socket(tmp_path: Path, prefix: str) -> None:
    sock = tmp_path / "r.sock"
    server = RedisServer(tmp_path / "acl", args=["--unixsocket", str(sock), "--user", "beat", "on", ">s3cret", "~*", "+@all"]).start()
    try:
        for url in (f"redis://beat:s3cret@127.0.0.1:{server.port}/0", f"unix://beat:s3cret@{sock}?db=0"):
            app = Celery("acl", set_as_current=False)
            app.conf.update(redbeat_safe_redis_url=url, redbeat_safe_key_prefix=prefix)
            api = Schedules(app)
            api.upsert("e", "t", every(5))
            assert [e.name for e in api.list()] == ["e"]
            api.close()
        app.conf.update(redbeat_safe_redis_url=f"redis://beat:wrong@127.0.0.1:{server.port}/0")
        with pytest.raises(redis.AuthenticationError):
            Schedules(app).list()
    finally:
        server.stop()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[RedisServer, int, Path]]:
    def sh(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test-ca")
    sh("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    sh("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt",
       "-days", "1", "-extfile", "san.ext")
    port = free_port()
    server = RedisServer(tmp_path / "tls", args=[
        "--tls-port", str(port), "--tls-cert-file", str(tmp_path / "server.crt"), "--tls-key-file", str(tmp_path / "server.key"),
        "--tls-ca-cert-file", str(tmp_path / "ca.crt"), "--tls-auth-clients", "no",
    ]).start()
    yield server, port, tmp_path / "ca.crt"
    server.stop()


def test_rediss_with_celery_style_ssl_options(tls_server: tuple[RedisServer, int, Path], prefix: str) -> None:
    _, port, ca = tls_server
    app = Celery("tls", set_as_current=False)
    # the store defaults to a rediss:// broker and takes broker_use_ssl along
    app.conf.update(broker_url=f"rediss://127.0.0.1:{port}/0", redbeat_safe_key_prefix=prefix,
                    broker_use_ssl={"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca)})
    api = Schedules(app)
    api.upsert("e", "t", every(5))
    assert [e.name for e in api.list()] == ["e"]
    api.close()
    app.conf.update(redbeat_safe_redis_url=f"rediss://127.0.0.1:{port}/0", redbeat_safe_redis_options={"ssl": {"cert_reqs": "required"}})
    with pytest.raises(redis.ConnectionError, match="(?i)certificate"):  # no CA given: the server's cert is refused
        Schedules(app).list()
