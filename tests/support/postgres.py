"""PostgreSQL test infrastructure.

The server is resolved lazily, the first time a test asks for it:

1. ``SQUIDMESH_TEST_DATABASE_URL`` or :data:`DEFAULT_SERVER_URL` is probed with psycopg.
2. If nothing answers there and ``initdb``/``pg_ctl`` can be found (on ``PATH`` or under
   ``/usr/lib/postgresql/*/bin``), a throwaway cluster is started in a temporary directory
   on a free port and stopped/removed at the end of the session.
3. Otherwise the requesting test fails (never skips) with one clear line.

Every test database gets a unique name (``sqm_test_<prefix>_<hex>``) and this module only
ever drops databases whose names it created itself in this process.

URLs handed around are plain libpq URIs (``postgresql://...``); :func:`sqlalchemy_url`
turns one into the ``postgresql+psycopg://...`` form SQLAlchemy wants.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit, urlunsplit

import psycopg
from psycopg import sql

ENV_URL = "SQUIDMESH_TEST_DATABASE_URL"
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
NAME_PREFIX = "sqm_test_"
CONNECT_TIMEOUT = 3

_MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1
_lock = threading.RLock()
# database name -> maintenance (server) URL it was created through.  Only these are dropped.
_created: dict[str, str] = {}
# (server url, template name) -> template database URL
_templates: dict[tuple[str, str], str] = {}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be reached or started."""


# --------------------------------------------------------------------------- URLs


def libpq_url(url: str) -> str:
    """``postgresql+psycopg://`` / ``postgres://`` -> ``postgresql://`` (what psycopg takes)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    if scheme != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {redact(url)}")
    return urlunsplit(parts._replace(scheme=scheme))


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form of a PostgreSQL URL: ``postgresql+psycopg://...``."""
    return urlunsplit(urlsplit(libpq_url(url))._replace(scheme="postgresql+psycopg"))


def with_database(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` instead (scheme and query kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def database_name(url: str) -> str:
    path = urlsplit(url).path.lstrip("/")
    if not path:
        raise ValueError(f"URL names no database: {redact(url)}")
    return path


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages)."""
    parts: SplitResult = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def configured_server_url() -> str:
    return os.environ.get(ENV_URL) or DEFAULT_SERVER_URL


# --------------------------------------------------------------------------- probing


def probe(url: str, timeout: int = CONNECT_TIMEOUT) -> str | None:
    """``None`` if a connection to ``url`` works, else the error text."""
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except (psycopg.Error, OSError, ValueError) as exc:
        return str(exc).strip() or type(exc).__name__
    return None


def find_pg_binaries() -> tuple[str, str] | None:
    """Paths of ``initdb`` and ``pg_ctl``: PATH first, then /usr/lib/postgresql/*/bin."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl

    def version_key(path: str) -> tuple[int, str]:
        version = path.split(os.sep)[-2]
        return (int(version) if version.isdigit() else -1, version)

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True):
        initdb, pg_ctl = os.path.join(bindir, "initdb"), os.path.join(bindir, "pg_ctl")
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return initdb, pg_ctl
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- throwaway cluster


@dataclass
class ThrowawayCluster:
    """A PostgreSQL cluster in a temporary directory, trust auth, superuser ``postgres``."""

    initdb: str
    pg_ctl: str
    root: str = ""
    port: int = 0
    _run_as: str | None = None
    _started: bool = field(default=False, repr=False)

    @property
    def datadir(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _cmd(self, argv: list[str]) -> list[str]:
        if self._run_as is None:
            return argv
        if shutil.which("runuser"):
            return ["runuser", "-u", self._run_as, "--", *argv]
        return ["su", self._run_as, "-s", "/bin/sh", "-c", shlex.join(argv)]

    def _run(self, argv: list[str], what: str) -> None:
        log = os.path.join(self.root, f"{what}.out")
        with open(log, "wb") as out:
            proc = subprocess.run(
                self._cmd(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                timeout=120,
                check=False,
            )
        if proc.returncode != 0:
            raise PostgresUnavailable(
                f"{what} of a throwaway PostgreSQL cluster failed "
                f"(exit {proc.returncode}): {self._tail(log)}"
            )

    def _tail(self, path: str, lines: int = 5) -> str:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return " | ".join(line.strip() for line in fh.readlines()[-lines:])
        except OSError:
            return "(no output)"

    def start(self) -> str:
        self.root = tempfile.mkdtemp(prefix="squidmesh-pg-")
        try:
            if os.geteuid() == 0:
                # initdb refuses to run as root: run the cluster as the `postgres` user.
                try:
                    user = pwd.getpwnam("postgres")
                except KeyError:
                    raise PostgresUnavailable(
                        "running as root and there is no 'postgres' user to run initdb as"
                    ) from None
                os.chown(self.root, user.pw_uid, user.pw_gid)
                self._run_as = "postgres"
            self._run(
                [
                    self.initdb,
                    "-D",
                    self.datadir,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                "initdb",
            )
            self.port = _free_port()
            options = f"-F -c fsync=off -c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
            self._run(
                [
                    self.pg_ctl,
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    self.datadir,
                    "-l",
                    os.path.join(self.root, "postgres.log"),
                    "-o",
                    options,
                ],
                "start",
            )
            self._started = True
            error = probe(self.url)
            if error is not None:
                raise PostgresUnavailable(f"throwaway cluster started but unreachable: {error}")
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        if self._started:
            self._started = False
            with contextlib.suppress(Exception):
                subprocess.run(
                    self._cmd([self.pg_ctl, "stop", "-D", self.datadir, "-m", "immediate", "-w"]),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=self.root,
                    timeout=60,
                    check=False,
                )
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = ""


def start_server(url: str | None = None) -> tuple[str, ThrowawayCluster | None]:
    """Resolve a reachable server: ``(url, None)`` or ``(throwaway url, cluster)``.

    The caller owns the returned cluster and must call ``cluster.stop()`` (an ``atexit``
    hook stops it too, as a safety net).  Raises :class:`PostgresUnavailable` with a
    one-line message when nothing can be reached or started.
    """
    url = url or configured_server_url()
    if probe(url) is None:
        return url, None
    binaries = find_pg_binaries()
    if binaries is None:
        raise PostgresUnavailable(
            f"PostgreSQL is not reachable at {redact(url)} and initdb/pg_ctl are not "
            f"installed: start a server or set {ENV_URL}"
        )
    cluster = ThrowawayCluster(*binaries)
    atexit.register(cluster.stop)
    try:
        cluster_url = cluster.start()
    except PostgresUnavailable as exc:
        raise PostgresUnavailable(
            f"PostgreSQL is not reachable at {redact(url)} and starting a throwaway "
            f"cluster failed: {exc}"
        ) from None
    return cluster_url, cluster


# --------------------------------------------------------------------------- databases


def _unique_name(prefix: str) -> str:
    clean = re.sub(r"[^a-z0-9_]+", "_", prefix.lower()).strip("_") or "db"
    suffix = secrets.token_hex(6)
    room = _MAX_IDENTIFIER - len(NAME_PREFIX) - len(suffix) - 1
    return f"{NAME_PREFIX}{clean[:room]}_{suffix}"


def _admin(server_url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(libpq_url(server_url), connect_timeout=CONNECT_TIMEOUT, autocommit=True)


def _create(server_url: str, prefix: str, template: str | None = None) -> str:
    name = _unique_name(prefix)
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    with _admin(server_url) as conn:
        if template is not None:
            # CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template.
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (template,),
            )
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        conn.execute(statement)
    with _lock:
        _created[name] = server_url
    return with_database(libpq_url(server_url), name)


def create_database(server_url: str, name_prefix: str) -> str:
    """Create an empty, uniquely named database; return its (libpq) URL."""
    return _create(server_url, name_prefix)


def drop_database(url: str) -> None:
    """Drop a database made by this module (``WITH (FORCE)``).  Anything else: ValueError."""
    name = database_name(url)
    with _lock:
        server_url = _created.get(name)
    if server_url is None:
        raise ValueError(f"refusing to drop database {name!r}: it was not created by the tests")
    with _admin(server_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
    with _lock:
        _created.pop(name, None)
        for key, tmpl_url in list(_templates.items()):
            if database_name(tmpl_url) == name:
                del _templates[key]


def template_database(server_url: str, name: str, setup: Callable[[str], None]) -> str:
    """The URL of a template database, created once per session and per ``name``.

    ``setup(url)`` is applied to it once (e.g. run migrations); it must close every
    connection it opens (dispose SQLAlchemy engines).  Clone it with :func:`clone_database`.
    """
    key = (server_url, name)
    with _lock:
        existing = _templates.get(key)
        if existing is not None:
            return existing
        url = _create(server_url, f"tmpl_{name}")
        try:
            setup(url)
        except BaseException:
            drop_database(url)
            raise
        _templates[key] = url
        return url


def clone_database(template_url: str, name_prefix: str = "clone") -> str:
    """A new database copied from a template made by :func:`template_database`."""
    template = database_name(template_url)
    with _lock:
        server_url = _created.get(template)
    if server_url is None:
        raise ValueError(f"{template!r} is not a template created by the tests")
    return _create(server_url, name_prefix, template=template)


def created_databases() -> set[str]:
    """Names of the databases this process created and has not dropped yet."""
    with _lock:
        return set(_created)


def drop_all_created(server_url: str | None = None) -> None:
    """Drop every database still tracked (optionally only those on ``server_url``)."""
    with _lock:
        names = [n for n, s in _created.items() if server_url is None or s == server_url]
    # Clones before templates: a template cannot be dropped while being copied.
    names.sort(key=lambda n: n.startswith(NAME_PREFIX + "tmpl_"))
    for name in names:
        with _lock:
            owner = _created.get(name)
        if owner is not None:
            with contextlib.suppress(psycopg.Error):
                drop_database(with_database(libpq_url(owner), name))
