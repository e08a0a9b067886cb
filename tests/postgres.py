"""A private PostgreSQL server for the tests: its own cluster in a temporary folder, on a free port.

The binaries come from Debian's postgresql package (`make setup` installs it): on PATH, or in
/usr/lib/postgresql/<version>/bin where Debian keeps them. PostgreSQL refuses to run as root, so under
root the cluster belongs to the package's `postgres` user and its commands run through runuser.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from tests.servers import free_port


def bin_dir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]))
    return versions[-1].parent if versions else None


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path
    port: int
    # Who runs the server: None for this process's user, else a user name for runuser (under root).
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql://tritonllm@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{command[0]} failed: {result.stderr[-2000:]}\n{tail}")

    def start(self) -> None:
        # -F: no fsync (a throwaway cluster); the socket beside the data, not in /var/run/postgresql.
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root} -F"
        self.run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        self.run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def new_database(self, name: str) -> str:
        """Create an empty database; its URL."""
        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return f"postgresql://tritonllm@127.0.0.1:{self.port}/{name}"

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Create and start a cluster; the caller removes it. RuntimeError where PostgreSQL is not installed."""
    binaries = bin_dir()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed: run `make setup` (Debian's postgresql package)")
    # Not under pytest's tmp_path: its folders are private to root, and under root the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="tritonllm-postgres-"))
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        account = pwd.getpwnam(user)
        os.chown(root, account.pw_uid, account.pw_gid)
    server = PostgresServer(binaries, root, free_port(), user)
    try:
        server.run(str(binaries / "initdb"), "-D", str(server.data), "-U", "tritonllm", "--auth=trust",
                    "-E", "UTF8", "--no-sync")  # fmt: skip
        server.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server
