"""A throw-away PostgreSQL server on this machine, for trying (and testing) ``apm sweep`` the way
workers on many machines share a study: over TCP, with a password.

    from apm_lightning.runners.local_postgres import LocalPostgres
    with LocalPostgres("/tmp/pg") as pg:
        print(pg.url)   # postgresql+psycopg2://apm:<password>@127.0.0.1:<port>/optuna

The server binaries come from the ``pgserver`` package (``pip install -e .[dev]``), the driver
from ``psycopg2-binary`` (``pip install apm-lightning[postgres]``). A real cluster runs its own
server; ``apm sweep --storage URL`` is all the workers need to know.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

from apm_lightning.core.errors import APMError
from apm_lightning.core.library_compat import pg_ctl as find_pg_ctl


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """Starts PostgreSQL in ``folder`` listening on 127.0.0.1, with a role ``user`` whose
    password must be given over TCP (scram), owning database ``database``; ``stop()`` ends it."""

    def __init__(self, folder: str | Path, user: str = "apm", database: str = "optuna") -> None:
        self.folder = Path(folder).resolve()
        self.user, self.database = user, database
        self.password = secrets.token_hex(8)
        self.port = 0
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> LocalPostgres:
        try:
            with warnings.catch_warnings():  # platformdirs: no $XDG_RUNTIME_DIR in containers, /tmp is fine
                warnings.simplefilter("ignore")
                import pgserver

                pg_ctl = find_pg_ctl()
        except ImportError:
            raise APMError("a local PostgreSQL needs the pgserver package: pip install pgserver") from None
        pgdata = self.folder / "pgdata"
        pgdata.mkdir(parents=True, exist_ok=True)
        # pgserver makes the data folder (and, as root, a system user to own it) and starts the
        # server on a Unix socket only; the role and database are made there.
        server = pgserver.get_server(pgdata, cleanup_mode=None)
        server.psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}';")
        server.psql(f"CREATE DATABASE {self.database} OWNER {self.user};")
        socket_dir = server.get_postmaster_info().socket_dir
        # TCP connections must give the password (a worker on another machine would).
        hba = pgdata / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n", encoding="utf-8")
        user = server.system_user
        pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=user)
        self.port = _free_port()
        options = f"-h 127.0.0.1 -p {self.port} -k {socket_dir} -c max_connections=200"
        pg_ctl(["-w", "-o", options, "-l", str(pgdata / "log"), "start"], pgdata=pgdata, user=user)
        self._server = (pgdata, user)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        pg_ctl = find_pg_ctl()
        pgdata, user = self._server
        self._server = None
        if user is not None:  # as root: the server's user must reach the folder (pytest's are 0700)
            from pgserver.utils import ensure_prefix_permissions

            ensure_prefix_permissions(pgdata)
        try:
            pg_ctl(["-w", "stop", "-m", "immediate"], pgdata=pgdata, user=user)
        finally:
            shutil.rmtree(pgdata, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
