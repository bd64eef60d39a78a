"""`flywheel stack up|down|status`: the production services on one machine.

What the MLflow and Prefect docs recommend for production, started from the `stack` section of
flywheel.yaml (ports, credentials, data dirs):

1. PostgreSQL (a data dir under the stack dir; run as `stack.postgres_os_user` when we are root,
   since PostgreSQL refuses root), with one database for MLflow and one for Prefect; or none
   started when `stack.database_url` names a managed server
2. an MLflow tracking server on it, proxying artifacts to a folder under the stack dir
3. a Prefect server on it, then `flywheel deploy` (work pool, locks, every deployment)
4. a process worker on the `flywheel-process` pool
5. the webhook receiver, registered with MLflow (a `champion` alias set anywhere starts sync-serving)
6. the base model, materialized once into `<home>/models`; then one serving replica per loopback URL in `serving.replicas`, each with its own capture writer
   (remote URLs, e.g. a vLLM fleet, are only health-checked: their operators run them)

Every process gets `FLYWHEEL_STACK_DIR` in its environment; `down` stops the services by their pid
files, then any process still carrying that mark (flow runs the worker started), then PostgreSQL.
Nothing binds beyond `stack.host` (loopback by default).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from slm_flywheel.config import Settings

BIN = Path(sys.executable).parent
MARK = "FLYWHEEL_STACK_DIR"
POOL = "flywheel-process"
DATABASES = ("mlflow", "prefect")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class StackError(RuntimeError):
    """The stack cannot start or stop as configured; the message says what to do."""


@dataclass(frozen=True)
class Service:
    """One long-running process of the stack."""

    name: str
    command: list[str]
    env: dict[str, str]
    health: str  # answers 200 when the service is up


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None  # None: not started by this stack (remote) or not running
    healthy: bool
    url: str


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As the servers do: a port left in TIME_WAIT by a service just stopped is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def _find_postgres_bin(configured: Path | None) -> Path:
    candidates = [configured] if configured else []
    if not configured:
        found = shutil.which("pg_ctl")
        candidates += [Path(found).parent] if found else []
        candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in candidates:
        if (folder / "pg_ctl").exists() and (folder / "initdb").exists():
            return folder
    raise StackError("PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL, set stack.postgres_bin, or point stack.database_url at a managed server")


class Postgres:
    """A PostgreSQL cluster in `data_dir`, listening on `host:port` and a socket folder beside it."""

    def __init__(self, root: Path, host: str, port: int, user: str, password: str, bin_dir: Path | None = None, os_user: str = "postgres"):
        self.root, self.host, self.port, self.user, self.password = root, host, port, user, password
        self.data, self.sockets, self.log = root / "data", root / "run", root / "postgres.log"
        self.bin = _find_postgres_bin(bin_dir)
        self.os_user = os_user if os.geteuid() == 0 else None  # as root, run it as this user

    def _run(self, *command: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.os_user, "--"] if self.os_user else []
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}  # no stack mark: `down` stops it with pg_ctl
        return subprocess.run([*prefix, str(self.bin / command[0]), *command[1:]], env=env, capture_output=True, text=True, cwd="/")

    def _own(self, path: Path) -> None:
        if self.os_user:
            shutil.chown(path, self.os_user, self.os_user)

    def init(self) -> None:
        """Create the cluster (once): password authentication on TCP and on the socket."""
        if (self.data / "PG_VERSION").exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in (self.data, self.sockets):
            folder.mkdir(mode=0o700, exist_ok=True)
            self._own(folder)
        self.log.touch()
        self._own(self.log)
        if self.os_user and self._run("initdb", "--version").returncode != 0:
            raise StackError(f"user {self.os_user!r} cannot run {self.bin / 'initdb'}")
        if self.os_user and subprocess.run(["runuser", "-u", self.os_user, "--", "test", "-w", str(self.data)]).returncode != 0:
            raise StackError(f"user {self.os_user!r} cannot reach {self.data}: every folder above it must be searchable by that user (chmod o+x), or set stack.dir elsewhere")
        password_file = self.root / "pwfile"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        self._own(password_file)
        try:
            done = self._run("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={password_file}", "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions")
        finally:
            password_file.unlink()
        if done.returncode != 0:
            raise StackError(f"initdb failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def running(self) -> bool:
        return (self.data / "PG_VERSION").exists() and self._run("pg_ctl", "-D", str(self.data), "status").returncode == 0

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self, timeout_s: float = 60) -> None:
        if self.running():
            return
        if not _port_free(self.host, self.port):
            raise StackError(f"port {self.host}:{self.port} is taken: set stack.postgres_port")
        options = f"-h {self.host} -p {self.port} -k {self.sockets} -c max_connections=200"
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", str(int(timeout_s)), "start")
        if done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise StackError(f"PostgreSQL did not start:\n{done.stdout[-1000:]}{done.stderr[-1000:]}\n{tail}")

    def stop(self) -> None:
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def server_url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}"


# Named: SQLAlchemy 2.1 would pick psycopg (3) for a bare `postgresql://`.
SQLALCHEMY_DRIVER = "postgresql+psycopg2"


def database_url(server_url: str, database: str, driver: str = SQLALCHEMY_DRIVER) -> str:
    """`postgresql://user:pw@host:port` + a database name, with `driver` as the scheme."""
    return f"{driver}{server_url[server_url.index('://'):].rstrip('/')}/{database}"


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    """Create database `name` unless it exists (a copy of `template` if given); returns its
    SQLAlchemy URL."""
    import psycopg2
    from psycopg2 import sql

    connection = psycopg2.connect(database_url(server_url, "postgres", "postgresql"))
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is None:
                statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                if template:
                    statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
                cursor.execute(statement)
    finally:
        connection.close()
    return database_url(server_url, name)


class Stack:
    """The services of one configuration (`settings.stack`), their pids and logs under `dir`."""

    def __init__(self, settings: Settings, config_path: Path):
        self.settings, self.config_path = settings, config_path.resolve()
        self.project_dir = Path.cwd()  # where the services and the flows run, as for `flywheel deploy`
        self.config = settings.stack
        self.dir = (self.config.dir or settings.home / "stack").resolve()
        self.logs, self.pids = self.dir / "logs", self.dir / "pids"
        host = self.config.host
        self.mlflow_url = f"http://{host}:{self.config.mlflow_port}"
        self.prefect_url = f"http://{host}:{self.config.prefect_port}"
        self.webhook_url = f"http://{settings.webhook.host}:{settings.webhook.port}/mlflow/webhook"
        self.postgres = None if self.config.database_url else Postgres(
            self.dir / "postgres", host, self.config.postgres_port, self.config.postgres_user,
            self.config.postgres_password, self.config.postgres_bin, self.config.postgres_os_user,
        )

    @property
    def prefect_api(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def database_server(self) -> str:
        return self.config.database_url or self.postgres.server_url

    def _secret(self) -> str:
        """The webhook secret: configured, or generated once and kept (0600) in the stack dir."""
        if self.settings.webhook.secret:
            return self.settings.webhook.secret
        path = self.dir / "webhook-secret"
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def env(self) -> dict[str, str]:
        """What every service and flow run sees: this config, pointed at the stack's servers.
        PREFECT_*/MLFLOW_* already in the environment win over the stack's defaults."""
        env = {**os.environ}
        defaults = {
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # MLflow refuses webhooks to private addresses unless told; ours is on loopback.
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            # MLflow's job runner serves its GenAI features (online trace scoring), which the flywheel
            # does not use: 8 more processes, 2 GB and 16 CPU-seconds at every start, measured.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        for key, value in defaults.items():
            env.setdefault(key, value)
        env.update({
            MARK: str(self.dir),
            "FLYWHEEL_CONFIG": str(self.config_path),
            "FLYWHEEL_TRACKING_URI": self.mlflow_url,
            "FLYWHEEL_WEBHOOK__SECRET": self._secret(),
            "FLYWHEEL_PROJECT_DIR": str(self.project_dir),
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_HOME": str(self.dir / "prefect"),
        })
        return env

    def _replicas(self) -> list[tuple[str, str, int]]:
        """(name, host, port) of each loopback replica in serving.replicas: the ones we run."""
        local = []
        for index, url in enumerate(self.settings.serving.replicas):
            parts = urlsplit(url)
            if parts.hostname in LOOPBACK and parts.port:
                local.append((f"replica-{index}", parts.hostname, parts.port))
        return local

    def services(self) -> list[Service]:
        """In start order: servers first, then what needs them."""
        env, host, python = self.env(), self.config.host, sys.executable
        cli = [python, "-m", "slm_flywheel.app.cli"]
        services = [
            # The database URLs (passwords in them) go by environment, not argv, which `ps` shows anyone.
            Service("mlflow", [
                str(BIN / "mlflow"), "server", "--artifacts-destination", str(self.dir / "artifacts"), "--serve-artifacts",
                "--host", host, "--port", str(self.config.mlflow_port), "--workers", "1",
            ], {**env, "MLFLOW_BACKEND_STORE_URI": database_url(self.database_server, "mlflow")}, f"{self.mlflow_url}/health"),
            Service("prefect", [str(BIN / "prefect"), "server", "start", "--host", host, "--port", str(self.config.prefect_port)], {
                **env, "PREFECT_API_DATABASE_CONNECTION_URL": database_url(self.database_server, "prefect", "postgresql+asyncpg"),
            }, f"{self.prefect_api}/health"),
            Service("worker", [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--limit", str(self.config.worker_limit)], env, ""),
            Service("webhook", [*cli, "webhook", "serve", "--config", str(self.config_path)], env,
                    f"http://{self.settings.webhook.host}:{self.settings.webhook.port}/health"),
        ]
        for name, replica_host, port in self._replicas():
            services.append(Service(name, [*cli, "serve", "--host", replica_host, "--port", str(port), "--replica-id", name, "--config", str(self.config_path)], env, f"http://{replica_host}:{port}/health"))
        return services

    # -- processes ---------------------------------------------------------------------------

    def _pid(self, name: str) -> int | None:
        try:
            pid = int((self.pids / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def _start(self, service: Service) -> int:
        if (pid := self._pid(service.name)) is not None:
            return pid
        parts = urlsplit(service.health)
        if parts.port and not _port_free(parts.hostname, parts.port):
            raise StackError(f"{service.name}: {parts.hostname}:{parts.port} is taken by another process: free it or change its port in flywheel.yaml")
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{service.name}.log").open("a") as log:
            process = subprocess.Popen(service.command, env=service.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.project_dir, start_new_session=True)
        (self.pids / f"{service.name}.pid").write_text(str(process.pid))
        return process.pid

    def _wait(self, service: Service, pid: int) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        while time.monotonic() < deadline:
            if not alive(pid):
                raise StackError(f"{service.name} exited; its log {self.logs / f'{service.name}.log'} ends:\n{self.tail(service.name)}")
            if not service.health or _healthy(service.health):
                return
            time.sleep(0.5)
        raise StackError(f"{service.name} not healthy at {service.health} after {self.config.start_timeout_s:.0f} s:\n{self.tail(service.name)}")

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def up(self) -> list[ServiceStatus]:
        """Start whatever is not running yet; returns every service's status."""
        from mlflow import MlflowClient
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from slm_flywheel.deployments.deploy import deploy
        from slm_flywheel.deployments.webhook import register_webhook

        self.dir.mkdir(parents=True, exist_ok=True)
        if self.postgres:
            self.postgres.init()
            self.postgres.start()
        for database in DATABASES:
            create_database(self.database_server, database)
        services = {service.name: service for service in self.services()}
        servers = [services.pop("mlflow"), services.pop("prefect")]
        started = [(service, self._start(service)) for service in servers]
        for service, pid in started:
            self._wait(service, pid)
        with temporary_settings(updates={PREFECT_API_URL: self.prefect_api}):
            deploy(self.settings, POOL, self.config_path, self.config.prefect_file)
        if self._replicas():
            # Materialize the base model once: replicas starting together on a fresh home would
            # each write it into the same folder.
            from slm_flywheel.models.base_model import resolve_base_model

            resolve_base_model(self.settings.base_model, self.settings.models_dir)
        started = [(service, self._start(service)) for service in services.values()]
        for service, pid in started:
            self._wait(service, pid)
        client = MlflowClient(self.mlflow_url, self.mlflow_url)
        register_webhook(client, self.webhook_url, self._secret())
        return self.status()

    def marked_processes(self) -> list[int]:
        """Processes still carrying this stack's mark (flow runs the worker started, their children)."""
        mark = f"{MARK}={self.dir}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return [pid for pid in found if alive(pid)]

    def _terminate(self, pids: list[int], timeout_s: float = 30) -> None:
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGTERM) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + timeout_s
        while (remaining := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in remaining:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue

    def down(self) -> list[str]:
        """Stop every service, any process left with the stack's mark, then PostgreSQL; returns
        what was stopped. The data (database, artifacts, samples) stays."""
        running = {service.name: self._pid(service.name) for service in self.services()}
        self._terminate([pid for pid in running.values() if pid is not None])  # all at once: each may take seconds
        stopped = [name for name, pid in running.items() if pid is not None]
        for name in running:
            (self.pids / f"{name}.pid").unlink(missing_ok=True)
        if leftovers := self.marked_processes():
            self._terminate(leftovers, timeout_s=10)
            stopped.append(f"{len(leftovers)} flow-run process(es)")
        if self.postgres and self.postgres.running():
            self.postgres.stop()
            stopped.append("postgres")
        return stopped

    def status(self) -> list[ServiceStatus]:
        """Each service: its pid (when this stack runs it) and whether it answers."""
        statuses = []
        if self.postgres:
            statuses.append(ServiceStatus("postgres", self.postgres.pid() if self.postgres.running() else None, self.postgres.running(), self.database_server.split("@")[-1]))
        for service in self.services():
            pid = self._pid(service.name)
            healthy = pid is not None and (not service.health or _healthy(service.health))
            statuses.append(ServiceStatus(service.name, pid, healthy, service.health.removesuffix("/health").removesuffix("/api")))
        local = {f"http://{host}:{port}" for _, host, port in self._replicas()}
        for url in self.settings.serving.replicas:
            if url.rstrip("/") not in local:
                statuses.append(ServiceStatus(f"remote {url}", None, _healthy(f"{url.rstrip('/')}/health"), url))
        return statuses

    def ui_urls(self) -> dict[str, str]:
        return {"MLflow UI": self.mlflow_url, "Prefect UI": self.prefect_url}
