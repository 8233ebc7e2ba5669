"""`harness ui` (harness/cli/ui.py): the MLflow server's whole process tree ends with the command, the URLs are
printed once the server answers, a server that fails to start is named with its exit code and last output, and each
study's runs page opens on a view ranked by its key metrics (harness/tracking.py, runs_page_urls)."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from harness.cli.main import main
from harness.cli.ui import check_port_free, key_metrics, serve
from harness.errors import UserError
from harness.tracking import SHARED_VIEW_TAG, parent_run_name, runs_page_urls

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _store(results: Path) -> str:
    """A small store as a study leaves it: one parent run with its study.yaml, two finished trial runs."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{results / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("block_sharing", artifact_location=(results / "mlartifacts").as_uri(),
                                   tags={"mlflow.experimentKind": "custom_model_development"})
    parent = client.create_run(exp, run_name=parent_run_name("smoke"),
                               tags={"harness.kind": "study", "harness.study": "block_sharing"})
    client.log_text(parent.info.run_id, "table:\n  metric: kid\neval:\n  metrics: [fid, kid, denoise_loss]\n",
                    "study.yaml")
    for i, variant in enumerate(("D8", "D2S4I")):
        run = client.create_run(exp, run_name=f"{variant} synthetic seed=0",
                                tags={"mlflow.parentRunId": parent.info.run_id, "harness.kind": "trial",
                                      "harness.study": "block_sharing", "harness.profile": "smoke"})
        for key, value in {"fid": 100.0 + i, "kid": 0.1 + i, "denoise_loss": 0.5, "loss": 0.3}.items():
            client.log_metric(run.info.run_id, key, value, step=1)
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)
    return uri


def _running(procs: list[psutil.Process]) -> list[str]:
    """The processes of ``procs`` still running (zombies count as gone: they hold no port and run nothing)."""
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return alive


def _descendants(pid: int) -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:  # it just ended
        return {}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count, a listener does
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """One store for the server tests (building one takes MLflow several seconds)."""
    path = tmp_path_factory.mktemp("results")
    _store(path)
    return path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_the_whole_server_and_the_urls_come_once_it_answers(results, tmp_path, sig):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    err = (tmp_path / "ui.err").open("w")
    # SIGINT at its default (Python turns it into KeyboardInterrupt), even where the tests run with it ignored
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--results-dir", str(results), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=err, text=True, env=_env(), cwd=REPO,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in proc.stdout], daemon=True).start()
    seen: list[str] = []
    tree: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 120
        while not any(line.endswith(f" at {base}") for line in seen):
            assert proc.poll() is None and time.monotonic() < deadline, (seen, (tmp_path / "ui.err").read_text())
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                pass
            tree.update(_descendants(proc.pid))
        # (b) the address is printed once the server answers, not before: it answers now, at once
        with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
            assert r.status == 200
        assert seen[0].startswith("starting the MLflow UI for ") and seen[0].endswith(f"on {base} ..."), seen
        study = lines.get(timeout=10)
        assert study.startswith(f"  block_sharing: {base}/#/experiments/"), study
        tree.update(_descendants(proc.pid))
        assert len(tree) >= 2, tree  # mlflow's CLI and uvicorn at least

        os.kill(proc.pid, sig)  # the harness process only, as `kill PID` or a supervisor does
        rc = proc.wait(timeout=60)
        left = _running(list(tree.values()))
        assert not left, "left running:\n" + "\n".join(left)
        assert _port_free(port)
        assert rc == 128 + sig, rc  # 143 or 130, as a shell reports a process a signal stopped
    finally:
        for p in tree.values():  # whatever a failing run left behind
            try:
                p.kill()
            except psutil.Error:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        err.close()


def test_a_server_that_exits_before_answering_is_named_with_its_exit_code_and_last_output(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('starting'); print('boom: the port is taken', file=sys.stderr); "
           "sys.exit(3)"]
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"exited with code 3 before it answered at http://127\.0\.0\.1:\d+; its "
                                        r"last output: starting \| boom: the port is taken$"):
        serve(cmd, f"http://127.0.0.1:{_free_port()}/health", 30, lambda: pytest.fail("not ready"))
    assert time.monotonic() - t0 < 10


def test_a_server_that_never_answers_is_stopped_with_everything_it_started(tmp_path):
    """A descendant that ignores SIGTERM and leaves the group is still killed, after the grace period."""
    pidfile = tmp_path / "grandchild.pid"
    stubborn = (f"import os, signal, time; os.setsid(); signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(120)")
    cmd = [sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
           f"{stubborn!r}]); print('waiting', flush=True); time.sleep(120)"]
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"did not answer at http://127\.0\.0\.1:\d+ within 3 s, so it was stopped; "
                                        r"its last output: waiting \(pass a longer --wait"):
        serve(cmd, f"http://127.0.0.1:{_free_port()}/health", 3, lambda: pytest.fail("not ready"), grace_s=1)
    assert time.monotonic() - t0 < 15
    grandchild = int(pidfile.read_text())
    try:
        assert not _running([psutil.Process(grandchild)])
    except psutil.NoSuchProcess:
        pass  # gone and reaped


def test_a_port_in_use_is_refused_before_the_server_starts(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is already in use"):
            check_port_free("127.0.0.1", port)
        result = CliRunner().invoke(main, ["ui", "--results-dir", str(tmp_path), "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: port {port} on 127.0.0.1 is already in use"), result.output
    assert "starting" not in result.output


def test_key_metrics_are_the_table_metric_first_then_the_study_metrics_as_logged():
    block = {"table": {"metric": "fid"}, "eval": {"metrics": ["fid", "kid", "denoise_loss"]}}
    assert key_metrics(block, {"fid", "kid", "denoise_loss", "loss"}) == [("fid", False), ("kid", False)]
    # fid under the classifier extractor is the classifier-feature distance, under its own key
    assert key_metrics(block, {"fd_classifier", "kd_classifier"}) == [("fd_classifier", False),
                                                                      ("kd_classifier", False)]
    clf = {"table": {"metric": "accuracy"}, "eval": {"metrics": ["accuracy", "val_loss", "params"]}}
    assert key_metrics(clf, {"val_accuracy", "val_loss", "train_loss"}) == [("val_accuracy", True),
                                                                             ("val_loss", False)]
    assert key_metrics({}, {"fid", "kid"}) == [("fid", False), ("kid", False)]  # the schema's defaults
    assert key_metrics({}, {"emd_test", "loss"}) == [("emd_test", False)]  # none of those: the catalogue's
    assert key_metrics({"table": "junk", "eval": {"metrics": [1, None]}}, {"loss"}) == []


def test_runs_page_urls_open_a_saved_view_of_the_trials_ranked_by_the_key_metrics(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = _store(tmp_path)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("block_sharing")
    client.set_experiment_tag(exp.experiment_id, SHARED_VIEW_TAG + "someone", "{}")  # a user's own shared view
    base = "http://127.0.0.1:5000"
    url = runs_page_urls(uri, base, key_metrics)["block_sharing"]
    prefix = f"{base}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey="
    assert url.startswith(prefix), url
    key = url[len(prefix):]
    view = json.loads(client.get_experiment(exp.experiment_id).tags[SHARED_VIEW_TAG + key])
    # the study file's table metric (kid) ranks, lower first; its other table metric follows
    assert view["orderByKey"] == "metrics.`kid`" and view["orderByAsc"] is True
    assert view["selectedColumns"][:2] == ["metrics.`kid`", "metrics.`fid`"]
    assert view["searchFilter"] == "tags.`harness.kind` = 'trial'"
    assert view["columnWidths"]["attributes.`Run Name`"] >= 250

    assert runs_page_urls(uri, base, key_metrics)["block_sharing"] == url  # unchanged view: the same key
    other = runs_page_urls(uri, base, lambda study, logged: [("fid", False)])["block_sharing"]
    tags = client.get_experiment(exp.experiment_id).tags
    views = sorted(k for k in tags if k.startswith(SHARED_VIEW_TAG))
    assert views == sorted([SHARED_VIEW_TAG + "someone", SHARED_VIEW_TAG + other[len(prefix):]])  # old one replaced
    assert runs_page_urls(uri, base)["block_sharing"] == prefix.removesuffix("&viewStateShareKey=")


def test_parent_run_names_fit_the_run_name_column():
    when = time.mktime((2025, 5, 1, 12, 7, 0, 0, 0, -1))
    assert parent_run_name("smoke", when) == "smoke 05-01 12:07"
    assert len(parent_run_name("paper", when)) <= 17
