"""End to end: `airflow standalone` (scheduler, dag-processor, API server, triggerer), REST API, a real browser.

Triggers medpipe_retrain over the REST API on tiny images, waits for it and for the medpipe_score run that
the champion Asset schedules, then logs into the UI with headless Chromium and checks the Models page
(screenshot: test-artifacts/models_page.png); then a rejected second run, a drifted inbox batch, and the Runs,
compare, card and Scoring pages with every link walked (runs_page.png, scoring_page.png). Marked `e2e`; skipped
without /usr/bin/chromium (`apt-get install -y chromium`) or the `playwright` package. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import pytest

from airflow_layer.scored_batches import export_untrained, score_inbox
from airflow_layer.test_dags_run import FAST_TRAINING, UNTRAINED
from conftest import write_dataset

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = REPO_ROOT / "test-artifacts" / "models_page.png"
RUNS_SCREENSHOT = REPO_ROOT / "test-artifacts" / "runs_page.png"
SCORING_SCREENSHOT = REPO_ROOT / "test-artifacts" / "scoring_page.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
RUN_TIMEOUT_S = 480


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(what: str, check, timeout: float, interval: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"{what}: not reached within {timeout:.0f} s")


class Standalone:
    """A running `airflow standalone` in its own AIRFLOW_HOME and process group."""

    def __init__(self, home: Path, env: dict[str, str], port: int) -> None:
        self.home, self.env, self.base_url = home, env, f"http://127.0.0.1:{port}"
        self.log_path = home / "standalone.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import httpx

        airflow = [sys.executable, "-m", "airflow"]
        for args in (["db", "migrate"], ["pools", "set", "gpu", "2", "GPU slots"]):
            subprocess.run(airflow + args, env=self.env, check=True, capture_output=True, timeout=180)
        with open(self.log_path, "wb") as log:
            # setsid: scheduler, dag-processor, api-server and triggerer share one group we can stop together.
            self.proc = subprocess.Popen(airflow + ["standalone"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"airflow standalone exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        _wait_for("airflow standalone healthy", healthy, timeout=180)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def admin_password(self) -> str:
        return json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install it with `apt-get install -y chromium`")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    home = tmp_path_factory.mktemp("standalone")
    inbox = write_dataset(home / "inbox", per_class={"val": 2}, splits=("val",), size=32, seed=5)
    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "MEDPIPE_RETRAIN_SCHEDULE": "none",  # unpausing must not start a scheduled run of its own
        "MEDPIPE_STORE_URI": str(home / "store"),
        "MEDPIPE_WORK_ROOT": str(home / "work"),
        "MEDPIPE_SCORE_INBOX": str(inbox),
        "MEDPIPE_CONFIG": "",
        "MEDPIPE_TASK_RETRIES": "0",
        "OMP_NUM_THREADS": "1",
    }
    server = Standalone(home, env, port)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _api(server: Standalone):
    import httpx

    token = httpx.post(f"{server.base_url}/auth/token", timeout=30,
                       json={"username": "admin", "password": server.admin_password()}).json()["access_token"]
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _run_state(api, dag_id: str, run_id: str) -> str | None:
    state = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
    return state if state in ("success", "failed") else None


def _task_states(api, dag_id: str, run_id: str) -> dict[str, str]:
    items = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    return {ti["task_id"]: ti["state"] for ti in items}


def _print_failed_task_logs(api, dag_id: str, run_id: str) -> None:
    """On a failed run, print each failed task's own log (pytest shows it with the failure; assertion
    messages are cut short, and the standalone's folder is gone afterwards)."""
    for task_id, state in _task_states(api, dag_id, run_id).items():
        if state == "failed":
            response = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/1",
                               headers={"Accept": "text/plain"})
            print(f"---- {dag_id}/{task_id} log ({response.status_code}) ----\n{response.text[-6000:]}")


def _train_and_score(server: Standalone, data: Path) -> dict[str, Any]:
    api = _api(server)
    for dag_id in ("medpipe_retrain", "medpipe_score"):
        _wait_for(f"{dag_id} parsed", lambda: api.get(f"/api/v2/dags/{dag_id}").status_code == 200, timeout=120)
        assert api.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).status_code == 200
    conf = {"data_root": str(data), "overrides": [*FAST_TRAINING, "export.parity_images=8", "score.provider=cpu"]}
    created = api.post("/api/v2/dags/medpipe_retrain/dagRuns", json={"logical_date": None, "conf": conf})
    assert created.status_code == 200, created.text
    run_id = created.json()["dag_run_id"]
    state = _wait_for("medpipe_retrain finished", lambda: _run_state(api, "medpipe_retrain", run_id), RUN_TIMEOUT_S)
    if state != "success":
        _print_failed_task_logs(api, "medpipe_retrain", run_id)
        print(server.log_tail(200))
    assert state == "success", _task_states(api, "medpipe_retrain", run_id)
    links = api.get(f"/api/v2/dags/medpipe_retrain/dagRuns/{run_id}/taskInstances/publish/links").json()
    # The Asset update from publish schedules the scoring DAG on its own.
    score_runs = _wait_for("medpipe_score triggered by the champion asset", lambda: api.get(
        "/api/v2/dags/medpipe_score/dagRuns").json()["dag_runs"], timeout=120)
    assert score_runs[0]["run_type"] == "asset_triggered"
    score_state = _wait_for("medpipe_score finished",
                            lambda: _run_state(api, "medpipe_score", score_runs[0]["dag_run_id"]), RUN_TIMEOUT_S)
    assert score_state == "success", _task_states(api, "medpipe_score", score_runs[0]["dag_run_id"])
    return {"links": links["extra_links"], "api": api}


def _rejected_run(server: Standalone, data: Path) -> str:
    """A second retraining run over REST whose models never train: the gate rejects it, the record stage keeps it."""
    api = _api(server)
    conf = {"data_root": str(data),
            "overrides": [*FAST_TRAINING, *UNTRAINED, "export.parity_images=8", "score.provider=cpu"]}
    created = api.post("/api/v2/dags/medpipe_retrain/dagRuns", json={"logical_date": None, "conf": conf})
    assert created.status_code == 200, created.text
    run_id = created.json()["dag_run_id"]
    state = _wait_for("rejected medpipe_retrain finished", lambda: _run_state(api, "medpipe_retrain", run_id),
                      RUN_TIMEOUT_S)
    states = _task_states(api, "medpipe_retrain", run_id)
    assert state == "success" and states["publish"] == "skipped" and states["record"] == "success", states
    return run_id


def _publish_a_gated_version(store: Any, champion: dict[str, Any], folder: Path) -> None:
    """A second version beside the champion (so the Models page offers a compare link): the champion's files with
    an untrained model and a failed gate verdict, published by medpipe.registry (not champion: its gate failed)."""
    from medpipe.registry import publish_version

    prefix = f"models/{champion['model_name']}/{champion['version']}/"
    for key in store.list(prefix):
        rel = key.removeprefix(prefix)
        if rel != "manifest.json" and not rel.endswith(".onnx"):
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(store.get_bytes(key))
    gate = json.loads((folder / "gate.json").read_text())
    (folder / "gate.json").write_text(json.dumps({**gate, "passed": False, "reasons": ["untrained (e2e test)"]}))
    export_untrained(folder, "custom_cnn", "20000101T000000-untrained")
    result = publish_version(store, folder, "custom_cnn", "20000101T000000-untrained")
    assert result["status"] == "published" and not result["champion_updated"], result


def _walk_links(page, base_url: str, start: str) -> set[str]:
    """Every href and img src under /medpipe reachable from `start`, fetched with the browser's login cookie."""
    import re

    seen, queue = {start}, [start]
    while queue:
        url = queue.pop()
        response = page.request.get(base_url + url)
        assert response.status == 200, (url, response.status)
        if not response.headers.get("content-type", "").startswith("text/html"):
            continue
        html = response.text()
        base = re.search(r'<base href="([^"]+)"', html)
        for link in re.findall(r'<(?:a|img)\b[^>]*?(?:href|src)="([^"#]+)"', html):
            target = urljoin(base.group(1) if base else url, link.replace("&amp;", "&"))
            if target.startswith("/medpipe/") and target not in seen:
                seen.add(target)
                queue.append(target)
    return seen


def _check_operator_pages(page, base_url: str, champion: dict[str, Any], rejected_run_id: str) -> None:
    """Runs (the rejected challenger and its reasons), compare, the card as HTML with its images, Scoring (a
    drifted batch flagged), and every link of every page answering 200."""
    page.goto(f"{base_url}/medpipe/runs")
    rejected = page.locator("tr", has_text="rejected").first
    assert "champion" in rejected.inner_text(), rejected.inner_text()  # the reason: worse than the champion
    assert quote(rejected_run_id, safe="") in rejected.inner_html()  # its link to the Airflow run
    assert page.locator("svg circle").count() >= 2  # the trend chart: both challengers
    page.screenshot(path=str(RUNS_SCREENSHOT), full_page=True)
    page.goto(f"{base_url}/medpipe/models")
    page.locator('a[href*="/medpipe/compare?"]').first.click()
    assert "b − a" in page.content() and "Config (differing keys)" in page.content()
    page.goto(f"{base_url}/medpipe/models/{champion['model_name']}/{champion['version']}/card")
    images = page.locator("img")
    assert images.count() >= 1
    assert all(images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") for i in range(images.count()))
    page.goto(f"{base_url}/medpipe/scoring")
    assert "DRIFT" in page.locator("tr.drifted").first.inner_text()
    assert "Problems" not in page.content()  # the scoring DAG's own outputs (scores/<run>/) are no problem
    page.screenshot(path=str(SCORING_SCREENSHOT), full_page=True)
    seen = _walk_links(page, base_url, "/medpipe/models")
    assert {"/medpipe/runs", "/medpipe/scoring"} <= seen and any(u.endswith("/card") for u in seen)
    assert any(u.startswith("/medpipe/compare?") for u in seen) and any("/medpipe/runs/" in u for u in seen)


def test_retrain_over_rest_then_models_page_in_a_browser(standalone: Standalone, tmp_path: Path) -> None:
    import httpx
    from playwright.sync_api import sync_playwright

    from medpipe.config import StoreConfig
    from medpipe.registry import read_champion
    from medpipe.store import open_store

    result = _train_and_score(standalone, write_dataset(tmp_path / "data", per_class=8, size=32))
    champion = read_champion(open_store(StoreConfig(uri=str(standalone.home / "store"))))
    assert champion is not None
    page_url = f"{standalone.base_url}/medpipe/models/{champion['model_name']}/{champion['version']}"
    assert result["links"] == {"Model page": page_url}
    assert any(k.startswith("scores/") for k in open_store(StoreConfig(uri=str(standalone.home / "store"))).list("scores/"))

    rejected_run_id = _rejected_run(standalone, tmp_path / "data")
    store = open_store(StoreConfig(uri=str(standalone.home / "store")))
    score_inbox(store, None, champion["model_name"], champion["version"], tmp_path / "inbox")
    _publish_a_gated_version(store, champion, tmp_path / "gated")

    # Without credentials: an API client gets 401, a browser is sent to the login page.
    assert httpx.get(f"{standalone.base_url}/medpipe/models", timeout=30).status_code == 401
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            anonymous = browser.new_page()
            anonymous.goto(f"{standalone.base_url}/medpipe/models")
            assert "/auth/login" in anonymous.url
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{standalone.base_url}/plugin/medpipe-models")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", standalone.admin_password())
            page.click("button[type=submit]")
            page.wait_for_url("**/plugin/medpipe-models", timeout=60_000)
            frame = page.frame_locator("iframe[title='Models']")
            row = frame.locator(f"tr#{champion['model_name']}-{champion['version']}")
            row.wait_for(timeout=60_000)
            assert "champion" in row.inner_text()
            val_auc = champion["metrics"]["val"]["macro_auc"]
            assert f"{val_auc:.3f}" in row.inner_text()
            frame.locator("img.plot").first.wait_for()
            page.wait_for_timeout(1500)  # let the menu/iframe animations settle before the screenshot
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            # The publish task's extra link opens that version's page (the login cookie is reused).
            page.goto(page_url)
            assert champion["version"] in page.content() and "champion" in page.content()
            _check_operator_pages(page, standalone.base_url, champion, rejected_run_id)
        finally:
            browser.close()
