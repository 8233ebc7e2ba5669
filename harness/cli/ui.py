"""`harness ui`: the MLflow UI for the study store, stopped with everything it started, announced once it answers.

`mlflow ui` is a tree of processes (the CLI, uvicorn's supervisor and workers, a multiprocessing tracker, MLflow's
job runner and its huey consumers). Killing only the process we started leaves the rest serving the port, so the
server runs in its own session (process group): a stop signal, an error or Ctrl-C ends the whole group, and any
descendant that left the group, first politely, then with SIGKILL after a grace period.

Kept out of main.py so it imports only click until the command runs; user errors propagate to the main group,
which prints them as one line with exit code 2.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from harness.errors import UserError

WAIT_S = 300.0  # how long the server may take to answer (about 45 s on a busy 2-core machine with MLflow's defaults)
GRACE_S = 10.0  # from the stop signal to SIGKILL
TAIL_LINES = 8  # of the server's output, quoted when it fails to start
# The stop signals `harness ui` passes on to the server. SIGHUP goes on as SIGTERM: uvicorn's supervisor and the
# huey consumers restart their workers on SIGHUP instead of stopping.
FORWARD = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGINT, signal.SIGHUP: signal.SIGTERM}


class _Stop(Exception):
    """A stop signal arrived; raised in the main thread by the signal handler."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@click.command("ui")
@click.option("--port", default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (only this machine by default).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Server worker processes (MLflow's default is 4; one serves a browser and starts in about half "
                   "the time).")
@click.option("--wait", "wait_s", default=WAIT_S, show_default=True, type=click.FloatRange(min=1),
              help="Seconds the server may take to answer before it is stopped.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI (default: sqlite store in <results-dir>/mlflow.db).")
@click.option("--results-dir", default=None, type=click.Path(file_okay=False),
              help="Where tables, plots, runs and the default MLflow store go (default: ./results beside studies/).")
def ui(port: int, host: str, workers: int, wait_s: float, tracking_uri: str | None, results_dir: str | None) -> None:
    """Serve the MLflow UI for the study store (on 127.0.0.1 unless told otherwise); print each study's runs page,
    ranked by its key metrics, once the UI answers."""
    from harness.run.session import no_store, resolve_tracking_uri, store_exists
    from harness.tracking import runs_page_urls, sqlite_path

    rdir = Path(results_dir or "results").resolve()
    uri = resolve_tracking_uri(tracking_uri, rdir)
    if not store_exists(uri):
        raise no_store(uri, "run a study first or pass --results-dir")
    check_port_free(host, port)
    base = f"http://{url_host(host)}:{port}"
    click.echo(f"starting the MLflow UI for {uri} on {base} ...")
    sys.stdout.flush()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    if sqlite_path(uri) is not None:
        cmd += ["--default-artifact-root", (rdir / "mlartifacts").as_uri()]
    # MLflow's job runner (GenAI judges and scorers, 8 more processes) has nothing to do for training runs
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}

    urls: dict[str, str] = {}

    def meanwhile() -> None:  # while the server starts (it only reads the store until a browser asks)
        urls.update(runs_page_urls(uri, base, key_metrics))

    def ready() -> None:
        click.echo(f"MLflow UI for {uri} at {base}")
        for name, url in urls.items():
            click.echo(f"  {name}: {url}")
        sys.stdout.flush()

    sys.exit(serve(cmd, f"{base}/health", wait_s, ready, env=env, meanwhile=meanwhile))


def serve(cmd: list[str], health_url: str, wait_s: float, ready: Callable[[], None],
          env: dict[str, str] | None = None, grace_s: float = GRACE_S,
          meanwhile: Callable[[], None] | None = None) -> int:
    """Run the server ``cmd`` in its own process group, call ``meanwhile()`` while it starts and ``ready()`` once
    ``health_url`` answers, and wait for the server.

    Returns the server's exit code, or 128 + the signal number when SIGTERM, SIGINT or SIGHUP stopped it. On every
    way out (a stop signal, an exception, the server's own exit) the whole group and any descendant seen are gone
    before this returns. A server that exits, or does not answer within ``wait_s``, is a UserError quoting its
    exit code and last output lines."""
    server = _Server(cmd, env)
    previous = {s: signal.getsignal(s) for s in FORWARD}
    stopping, pending = False, None

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping, pending
        if server.proc is None:  # inside Popen: raised there, it could lose the new process; raised after it
            pending = signum
        elif not stopping:  # a second signal while stopping must not abandon the cleanup halfway
            stopping = True
            raise _Stop(signum)

    for s in FORWARD:
        signal.signal(s, on_signal)
    cause = signal.SIGTERM
    try:
        server.start()
        if pending is not None:
            stopping = True
            raise _Stop(pending)
        if meanwhile is not None:
            meanwhile()
        server.wait_until_answers(health_url, wait_s)
        ready()
        return server.wait()
    except _Stop as stop:
        cause = FORWARD[stop.signum]
        return 128 + stop.signum
    finally:
        stopping = True
        try:
            server.stop(cause, grace_s)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


class _Server:
    """The server's process group: its output drained to stderr (the last lines kept), its descendants tracked."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None) -> None:
        self.cmd, self.env = cmd, env
        self.proc: subprocess.Popen | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.seen: dict[int, Any] = {}  # pid -> psutil.Process: descendants, also any that leave the group
        self._drain: threading.Thread | None = None

    def start(self) -> None:
        # stdout joins stderr: the server's log goes to our stderr, so our stdout carries only the URLs
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self._drain = threading.Thread(target=self._copy_output, name="mlflow-ui-output", daemon=True)
        self._drain.start()

    def _copy_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            if line.strip():
                self.tail.append(line.rstrip())
            with contextlib.suppress(OSError, ValueError):  # our stderr gone (a closed terminal): keep draining
                sys.stderr.write(line)
                sys.stderr.flush()

    def _note_descendants(self) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(p.pid, p)

    def _last_output(self) -> str:
        time.sleep(0.2)  # the drain thread may still be copying the last lines
        lines = [" ".join(t.split()) for t in self.tail][-3:]
        return "; its last output: " + " | ".join(lines) if lines else " and printed nothing"

    def wait_until_answers(self, url: str, wait_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + wait_s
        while True:
            self._note_descendants()
            rc = self.proc.poll()
            if rc is not None:
                raise UserError(f"the MLflow UI server exited with code {rc} before it answered at "
                                f"{url.rsplit('/', 1)[0]}{self._last_output()}")
            if _answers(url):
                return
            if time.monotonic() > deadline:
                raise UserError(f"the MLflow UI server did not answer at {url.rsplit('/', 1)[0]} within "
                                f"{wait_s:.0f} s, so it was stopped{self._last_output()} (pass a longer --wait on a "
                                "busy machine)")
            time.sleep(0.25)

    def wait(self) -> int:
        assert self.proc is not None
        while True:
            try:
                return self.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self._note_descendants()  # workers restarted by uvicorn are new processes

    def stop(self, sig: int, grace_s: float) -> None:
        """Send ``sig`` to the group and every descendant seen, SIGKILL what is left after ``grace_s``, and return
        once none of them runs (a zombie reparented to an init that does not reap counts as gone)."""
        if self.proc is None:
            return
        self._note_descendants()
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group's id
        for s, limit in ((sig, grace_s), (signal.SIGKILL, 5.0)):
            self._signal_all(pgid, s)
            deadline = time.monotonic() + limit
            while self._alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self._alive(pgid):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1.0)
        if self._drain is not None:  # the pipe ends with the last process holding it: the server's last words
            self._drain.join(timeout=2.0)

    def _signal_all(self, pgid: int, sig: int) -> None:
        import psutil

        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        for p in self.seen.values():
            with contextlib.suppress(psutil.Error):
                if p.is_running():  # is_running checks the pid was not reused by another process
                    p.send_signal(sig)

    def _alive(self, pgid: int) -> bool:
        import psutil

        assert self.proc is not None
        self.proc.poll()  # reap the leader, or it stays a zombie in the group
        procs = list(self.seen.values())
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, 0)  # someone is in the group (maybe a zombie): find who
            procs += [p for p in psutil.process_iter() if _pgid(p.pid) == pgid]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    return True
        return False


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return True  # it answered
    except OSError:
        return False


def url_host(host: str) -> str:
    """The host part of a URL that reaches a server bound to ``host`` from this machine."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on: the new server would fail after its start-up, and until then the
    other server would answer in its place."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}; pass another --host") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: only a listener blocks the port
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is already in use (another `harness ui` or MLflow "
                                "server?): stop it or pass another --port") from None
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}; pass another --host or --port") from None


def key_metrics(study: dict[str, Any], logged: set[str]) -> list[tuple[str, bool]]:
    """A study's key metrics as the runs page shows them: [(logged metric key, higher is better)], its table metric
    first, then its other table metrics (eval.metrics), each as the key its trials logged (fid is the Inception
    distance or the classifier-feature one, whichever was measured). Without a study file (or when none of its
    metrics was logged), the catalogue's table metrics that were logged."""
    from harness.reporting.metrics import IMAGE_DISTANCES, TABLE_METRICS, table_metric
    from harness.study.schema import EvalSpec, TableSpec

    table = study.get("table") if isinstance(study.get("table"), dict) else {}
    evals = study.get("eval") if isinstance(study.get("eval"), dict) else {}
    names = [table.get("metric", TableSpec.metric), *(evals.get("metrics") or EvalSpec.metrics)]
    out: list[tuple[str, bool]] = []

    def add(names: list[Any]) -> None:
        for name in names:
            if not isinstance(name, str) or name not in TABLE_METRICS:
                continue
            for extractor in IMAGE_DISTANCES:
                m = table_metric(name, extractor)
                if m.key in logged and m.key not in {k for k, _ in out}:
                    out.append((m.key, m.higher_better))
                    break

    add(names)
    if not out:
        add(list(TABLE_METRICS))
    return out
