"""Which Redis to talk to, and how: a standalone server, a Sentinel set or a Cluster.

``parse()`` turns ``redbeat_safe_redis_url`` + ``redbeat_safe_redis_options``
into a :class:`Topology` without any I/O (the banner's lazy scheduler builds one
too), refusing bad combinations with ``ImproperlyConfigured``. ``connect()``
builds redis-py's own client for it: ``Redis``, ``Sentinel.master_for`` or
``RedisCluster``.

Defaults are chosen so that a dead or unreachable Redis turns into an error
within seconds (the scheduler then logs one line and retries every
``max_interval``) instead of blocking beat inside redis-py's retry loop.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from ssl import CERT_NONE
from typing import Any, Literal, Union
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit

import redis
from celery.exceptions import ImproperlyConfigured
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

#: A plain logger, without celery's NullHandler: in a process that set up no
#: logging (the CLI, a script using the API) its warnings still reach stderr.
logger = logging.getLogger(__name__)

Client = Union[redis.Redis, RedisCluster]
#: What a store call can raise when Redis is unavailable or moving; RedisCluster
#: raises some errors (no reachable node, slot not covered) outside RedisError.
STORE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)

STANDALONE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("sentinel",)
SCHEMES = STANDALONE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES

#: Seconds. A command that gets no answer fails after socket_timeout; a pooled
#: connection idle for health_check_interval is PINGed before use.
DEFAULTS: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0, "health_check_interval": 15}
#: redis-py 6+ retries 10 times by default (3 for RedisCluster), timeouts included,
#: so one command could block beat for minutes against a hung server. Ours retries
#: a refused or dropped connection twice (riding over a stale pooled socket or a
#: quick restart) and never a timeout: a hung server costs one socket_timeout,
#: then the scheduler logs the outage and retries each max_interval.
DEFAULT_RETRIES = 2


def default_retry(retries: int = DEFAULT_RETRIES) -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=0.1, cap=1.0), retries, supported_errors=(redis.ConnectionError,))

_OURS = {"cluster", "startup_nodes", "sentinels", "service_name", "master_name", "sentinel_kwargs",
         "sentinel_username", "sentinel_password", "ssl"}
_REFUSED = {"connection_pool": "redbeat_safe builds its own pools",
            "decode_responses": "the store reads raw bytes",
            "single_connection_client": "it would serialise beat and its shutdown on one socket",
            "host": "put the host in redbeat_safe_redis_url", "port": "put the port in redbeat_safe_redis_url",
            "unix_socket_path": "use a unix:// URL",
            "read_from_replicas": "a stale definition read from a replica would look corrupt",
            "load_balancing_strategy": "a stale definition read from a replica would look corrupt"}
_SSL_ALIASES = {"keyfile": "ssl_keyfile", "certfile": "ssl_certfile", "ca_certs": "ssl_ca_certs", "cert_reqs": "ssl_cert_reqs"}


def _redis_kwargs() -> set[str]:
    return {p for p in inspect.signature(redis.Redis.__init__).parameters if p != "self"}


@dataclass(frozen=True)
class Topology:
    kind: Literal["standalone", "sentinel", "cluster"]
    url: str = ""  #: standalone only
    nodes: tuple[tuple[str, int], ...] = ()  #: sentinels, or cluster startup nodes
    service_name: str = ""  #: sentinel only
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  #: redis-py keyword arguments, defaults applied
    warnings: tuple[str, ...] = ()  #: TLS that does not verify the server, logged once at the first connection

    def describe(self) -> str:
        """For the banner and logs: where, never a password."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.nodes)
        if self.kind == "sentinel":
            return f"sentinel service {self.service_name!r} via {hosts} (db {self.options.get('db', 0)})"
        if self.kind == "cluster":
            return f"cluster via {hosts}"
        return redact(self.url)


#: Query parameters redis-py passes on as keyword arguments (it takes any name)
#: that hold a secret: password, sentinel_password, ssl_password, a token, ...
_SECRET_PARAM = re.compile(r"pass|secret|token|auth|cred", re.IGNORECASE)
#: kombu-style failover lists: "url;url". A ';' inside a password is not a separator.
_URL_LIST = re.compile(r";(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)")
MASK = "***"


def redact(url: str) -> str:
    """The URL without its credentials, for the banner, logs and ``status``.

    Masks the userinfo password and every query parameter redis-py would take
    as a secret (``?password=``, ``?sentinel_password=``, ``?ssl_password=``,
    percent-encoded names too: redis-py decodes them). A password with
    unquoted ``/``, ``#``, ``@`` or ``=`` is still masked whole: the userinfo
    is everything up to the last ``@`` before the query.
    """
    return ";".join(_redact_one(part) for part in _URL_LIST.split(url))


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    head, q, query = rest.partition("?")
    if "@" not in head and "@" in query and "=" not in rest.split("@", 1)[0]:
        # a '?' inside the password: the userinfo runs to the first '@'
        userinfo, _, after = rest.partition("@")
        head, q, query = after.partition("?")
        head = f"{userinfo}@{head}"
    if "@" in head:
        userinfo, _, host = head.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        head = f"{user}:{MASK}@{host}" if colon else f"{userinfo}@{host}"
    if q:
        items = []
        for item in query.split("&"):
            name, eq, _value = item.partition("=")
            items.append(f"{name}={MASK}" if eq and _SECRET_PARAM.search(unquote_plus(name)) else item)
        query = "&".join(items)
    return f"{scheme}{sep}{head}{q}{query}"


#: How Redis words a refusal for lack of permission: the NOPERM reply of a command
#: (NoPermissionError), and the plain error a script gets when a command it runs
#: is outside the caller's ACL (Redis 7 checks scripts against it too).
_NO_PERMISSION = ("The user executing the script can't", "no permissions to", "NOPERM")


def refusal(exc: BaseException) -> str | None:
    """The message for an error that is Redis refusing this user, not Redis being
    unavailable: a command or key outside the ACL, or bad credentials. Retrying
    will not fix these, so the CLI and the beat report them as what they are
    (``None``: some other error)."""
    if isinstance(exc, redis.AuthenticationError):
        return f"Redis refused: authentication failed ({exc}); check the user name and password"
    if isinstance(exc, redis.exceptions.NoPermissionError) or (
        isinstance(exc, redis.ResponseError) and any(text in str(exc) for text in _NO_PERMISSION)
    ):
        return f"Redis refused: no permission ({exc}); check the ACL of the Redis user (docs/redis-topologies.md)"
    return None


def _fail(message: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"redbeat_safe: {message}")


def _node(value: Any, what: str) -> tuple[str, int]:
    """("host", port), ["host", port] or "host:port"."""
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if sep and host and port.isdigit():
            return host.strip("[]"), int(port)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], str):
        try:
            return value[0], int(value[1])
        except (TypeError, ValueError):
            pass
    raise _fail(f"{what} must be 'host:port' or (host, port), not {value!r}")


def _split_urls(url: str) -> list[Any]:
    """``a;b`` lists (as kombu writes failover URLs) and ``h1:1,h2:2`` host lists."""
    out = []
    for part in filter(None, (p.strip() for p in url.split(";"))):
        scheme, _, rest = part.partition("://")
        netloc, slash, path = rest.partition("/")
        creds, at, hosts = netloc.rpartition("@")
        for host in hosts.split(","):
            out.append(urlsplit(f"{scheme}://{creds}{at}{host}{slash}{path}"))
    return out


def _host_port(part: Any, host: str, port: int) -> tuple[str, int]:
    """(host, port) of a split URL; a bad port is refused without echoing it (it is
    often a password with an unquoted '/', '#' or '?', which ends the host part)."""
    try:
        return part.hostname or host, part.port or port
    except ValueError:
        raise _fail("the port in redbeat_safe_redis_url is not a number; percent-encode '/', '#', '?' and '@' "
                    "in a password (urllib.parse.quote(password, safe=''))") from None


def _url_auth(parts: list[Any]) -> dict[str, Any]:
    """username, password and db from the first URL that names them."""
    found: dict[str, Any] = {}
    for p in parts:
        if p.username and "username" not in found:
            found["username"] = unquote(p.username)
        if p.password and "password" not in found:
            found["password"] = unquote(p.password)
        db = p.path.strip("/")
        if db and "db" not in found:
            if not db.isdigit():
                # not echoed: an unquoted '/' in a password puts the rest of it here
                raise _fail("the database in the URL must be a number; percent-encode '/', '#', '?' and '@' in a password")
            found["db"] = int(db)
    return found


def _ssl(value: Any) -> dict[str, Any]:
    """``ssl``: True, or a dict in the form of Celery's ``broker_use_ssl``."""
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(f"the ssl option must be True or a dict like Celery's broker_use_ssl, not {value!r}")
    out = {}
    for key, v in value.items():
        name = _SSL_ALIASES.get(str(key), str(key))
        if not name.startswith("ssl_"):
            raise _fail(f"unknown ssl option {key!r} (use redis-py's ssl_* names, e.g. ssl_ca_certs)")
        out[name] = v
    return out


def _false(value: Any) -> bool:
    """redis-py's reading of a flag (its URL parser's ``to_bool``): "0", "no", "false" are False."""
    if isinstance(value, str):
        return value.strip().upper() in ("0", "F", "FALSE", "N", "NO")
    return value is not None and not value


def _verified(opts: dict[str, Any], url: str, what: str) -> tuple[str, ...]:
    """Make a TLS connection check the server's host name, and say when it is not verified.

    redis-py before 6.0 did not check host names unless asked, so with a
    trusted CA a certificate issued to any other host would be accepted: we set
    ``ssl_check_hostname=True`` unless the user set it (in the options or the
    URL, which wins in redis-py's ``from_url``). ``ssl_cert_reqs`` none/None
    turns verification off altogether (host names cannot be checked then);
    "optional" is verified like "required" on the client side, so it is not
    warned about.
    """
    given = {**opts, **{k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}}
    reqs = given.get("ssl_cert_reqs", "required")
    if reqs is None or (isinstance(reqs, str) and reqs.strip().lower() == "none") or (isinstance(reqs, int) and reqs == CERT_NONE):
        # a host name cannot be checked without the certificate; redis-py 6.0 would
        # refuse to connect ("Cannot set verify_mode to CERT_NONE when check_hostname is enabled")
        if "ssl_check_hostname" not in given:
            opts["ssl_check_hostname"] = False
        return (f"redbeat_safe: TLS to {what} does not verify the server's certificate (ssl_cert_reqs={reqs!r}): anyone on "
                "the network path can pose as Redis and read the schedule and the password; set ssl_cert_reqs='required' "
                "and ssl_ca_certs",)
    if "ssl_check_hostname" not in given:
        opts["ssl_check_hostname"] = True
    elif _false(given["ssl_check_hostname"]):
        return (f"redbeat_safe: TLS to {what} does not check the server's host name (ssl_check_hostname={given['ssl_check_hostname']!r}): "
                "a certificate the CA issued to any other host is accepted; remove ssl_check_hostname",)
    return ()


def warn_once(message: str) -> None:
    """Log a configuration warning once per process: a beat connects more than once."""
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


_warned: set[str] = set()


#: Options whose wrong type redis-py would only report at the first command, with a
#: traceback: seconds (None: no timeout), and the ones that take a whole number.
_SECONDS_OPTIONS = ("socket_timeout", "socket_connect_timeout")
_COUNT_OPTIONS = ("health_check_interval", "max_connections", "db")


def _check_option_values(opts: Mapping[str, Any]) -> None:
    for key in _SECONDS_OPTIONS:
        value = opts.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                                  or value <= 0):
            raise _fail(f"redbeat_safe_redis_options: {key} must be a positive number of seconds (or None), not {value!r}")
    for key in _COUNT_OPTIONS:
        value = opts.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "max_connections" else 0)):
            raise _fail(f"redbeat_safe_redis_options: {key} must be a whole number >= {1 if key == 'max_connections' else 0}, "
                        f"not {value!r}")


def parse(url: str, options: Mapping[str, Any]) -> Topology:
    """The topology the settings describe; no I/O."""
    opts = dict(options)
    known = _redis_kwargs() | _OURS | {"retry"}
    for key in opts:
        if key in _REFUSED:
            raise _fail(f"redbeat_safe_redis_options: {key!r} cannot be set ({_REFUSED[key]})")
        if key not in known:
            raise _fail(f"redbeat_safe_redis_options: unknown option {key!r} (not a redis-py connection argument)")
    _check_option_values(opts)
    scheme = urlsplit(url.split(";")[0]).scheme if url else ""
    if url and scheme not in SCHEMES:
        raise _fail(f"redbeat_safe_redis_url must be one of {', '.join(s + '://' for s in SCHEMES)}, not {url.split('://')[0]}://...")
    sentinels = [_node(n, "a sentinel") for n in opts.pop("sentinels", None) or []]
    startup = [_node(n, "a cluster startup node") for n in opts.pop("startup_nodes", None) or []]
    cluster = bool(opts.pop("cluster", False)) or bool(startup) or scheme in CLUSTER_SCHEMES
    service = opts.pop("service_name", None) or opts.pop("master_name", None)
    opts.pop("master_name", None)
    sentinel_kwargs = dict(opts.pop("sentinel_kwargs", None) or {})
    for key in ("username", "password"):
        value = opts.pop(f"sentinel_{key}", None)
        if value is not None:
            sentinel_kwargs[key] = value
    ssl = _ssl(opts.pop("ssl")) if opts.get("ssl") else None
    opts.pop("ssl", None)
    is_sentinel = bool(sentinels) or scheme in SENTINEL_SCHEMES
    if cluster and is_sentinel:
        raise _fail("choose Sentinel or Cluster: the options name both (Redis Cluster has no Sentinel)")
    if not cluster and not is_sentinel and (service or sentinel_kwargs):
        raise _fail("service_name and sentinel_* options need sentinels (a sentinel:// URL or the sentinels option)")
    if url and (is_sentinel and scheme not in SENTINEL_SCHEMES or cluster and scheme == "unix"):
        wanted = "sentinel://host:port;sentinel://..." if is_sentinel else "redis+cluster://host:port,..."
        raise _fail(f"redbeat_safe_redis_url is a {scheme}:// URL but the options describe a {'Sentinel set' if is_sentinel else 'Cluster'}; "
                    f"use a {wanted} URL, or leave the URL unset")
    base = dict(DEFAULTS)
    base["retry"] = default_retry()
    parts = _split_urls(url) if url else []

    if is_sentinel:
        if not service:
            raise _fail("Sentinel needs the monitored master's name: set service_name (or master_name) in redbeat_safe_redis_options")
        nodes = [_host_port(p, "localhost", 26379) for p in parts] + sentinels
        base.update(_url_auth(parts))
        base.update(opts)
        warnings: tuple[str, ...] = ()
        if ssl is not None:
            base.update(ssl, ssl=True)
            warnings += _verified(base, "", "the Redis primary")
        if sentinel_kwargs.get("ssl"):
            warnings += _verified(sentinel_kwargs, "", "the sentinels")
        for key in ("socket_timeout", "socket_connect_timeout"):
            sentinel_kwargs.setdefault(key, base[key])
        # an unreachable sentinel is skipped for the next one: retrying it only adds delay
        sentinel_kwargs.setdefault("retry", default_retry(0))
        return Topology("sentinel", nodes=tuple(nodes), service_name=str(service), sentinel_kwargs=sentinel_kwargs, options=base,
                        warnings=warnings)

    if cluster:
        nodes = [_host_port(p, "localhost", 6379) for p in parts] + startup
        if not nodes:
            raise _fail("Cluster needs startup nodes: a redis+cluster://host:port URL or the startup_nodes option")
        auth = _url_auth(parts)
        if auth.pop("db", 0) or opts.get("db"):
            raise _fail("Redis Cluster has only database 0; drop the database number from the URL or options")
        opts.pop("db", None)
        base.update(auth)
        base.update(opts)
        warnings = ()
        if scheme == "rediss+cluster" or ssl is not None:
            base.update(ssl or {}, ssl=True)
            warnings = _verified(base, "", "the cluster nodes")
        return Topology("cluster", nodes=tuple(nodes), options=base, warnings=warnings)

    if not url:
        raise _fail("set redbeat_safe_redis_url (e.g. 'redis://localhost:6379/0'), or sentinels or startup_nodes in redbeat_safe_redis_options")
    if len(parts) != 1:
        raise _fail("a redis:// URL names one server; for several use sentinel:// or redis+cluster://")
    if ssl is not None:
        if scheme != "rediss":
            raise _fail(f"ssl options were given for a {scheme}:// URL; use rediss://")
        base.update(ssl)
    base.update(opts)
    warnings = _verified(base, url, "Redis") if scheme == "rediss" else ()
    return Topology("standalone", url=url, nodes=(_host_port(parts[0], "", 6379),), options=base, warnings=warnings)


class _SentinelRedis(redis.Redis):
    """A master client that also closes its connections to the sentinels."""

    manager: Sentinel | None = None

    def close(self) -> None:
        super().close()
        if self.manager is not None:
            for s in self.manager.sentinels:
                s.close()


def connect(topology: Topology) -> Client:
    """redis-py's own client for the topology (RedisCluster connects right away)."""
    for message in topology.warnings:
        warn_once(message)
    opts = dict(topology.options)
    if topology.kind == "standalone":
        return redis.Redis.from_url(topology.url, **opts)
    if topology.kind == "sentinel":
        manager = Sentinel(list(topology.nodes), sentinel_kwargs=dict(topology.sentinel_kwargs), **opts)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8
        client: _SentinelRedis = manager.master_for(topology.service_name, redis_class=_SentinelRedis)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8
        client.manager = manager
        return client
    retry = opts.pop("retry")
    try:
        nodes = [ClusterNode(h, p) for h, p in topology.nodes]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, retry=retry, **opts)
    except RedisClusterException as exc:  # "cannot connect to any node": an outage like any other
        raise redis.ConnectionError(f"Redis Cluster unreachable: {exc}") from exc

