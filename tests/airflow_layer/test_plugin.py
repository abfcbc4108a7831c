"""The Models page as Airflow's API server mounts it: real app, real auth manager, a registry written by medpipe.

The registry is published with `medpipe.registry.publish_version` into a local store: one champion that
passed the gate, and one older version whose gate record failed (with reasons holding HTML, to prove escaping).
Beside them, two run records (medpipe.run_record): the run that published the champion, and a newer run from
Airflow whose challenger the gate rejected, for the Runs view, its trend chart and the compare page.
A real (untrained) custom_cnn is published beside them and scores two inbox batches with `medpipe.inbox`, one of
them drifted, for the Scoring page (scored_batches.py).
The browser test of the same page is in test_e2e_standalone.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from airflow_layer.scored_batches import export_untrained, score_inbox

CLASSES = ["normal", "benign", "cancer"]
SCORER_VERSION = "20260115T000000-dddddd"


def _split_metrics(accuracy: float, auc: float | None) -> dict[str, Any]:
    per_class = {c: {"precision": 0.5, "recall": 0.25 if c == "cancer" else 0.75, "f1": 0.5, "support": 4,
                     "roc_auc": auc, "average_precision": 0.4, "sensitivity_at_90_specificity": 0.375,
                     "sensitivity_at_95_specificity": 0.125} for c in CLASSES}
    return {"n": 12, "accuracy": accuracy, "balanced_accuracy": accuracy - 0.1, "f1_weighted": 0.6, "f1_macro": 0.55,
            "macro_auc": auc, "per_class": per_class, "confusion_matrix": [[3, 1, 0], [1, 2, 1], [0, 1, 3]],
            "confidence_intervals": {"level": 0.95, "macro_auc": None if auc is None else [auc - 0.1, auc + 0.05],
                                     "balanced_accuracy": [accuracy - 0.25, accuracy + 0.05]},
            "baseline": {"majority_class": "normal", "accuracy": 0.33, "balanced_accuracy": 0.33,
                         "f1_weighted": 0.17, "f1_macro": 0.17, "macro_auc": 0.5}}


def _paired_predictions(folder: Path, shift: float) -> None:
    """predictions.json as export writes it, from an evaluation-style CSV of 12 images of 6 patients."""
    from medpipe.paired_predictions import write_paired_predictions

    rows = ["rel,patient,true,predicted,prob_normal,prob_benign,prob_cancer"]
    for i in range(12):
        probs = np.roll([0.6 - shift * (i % 2), 0.2, 0.2 + shift * (i % 2)], i % 3)
        rows.append(f"val/{CLASSES[i % 3]}/img{i}.png,P{i // 2},{CLASSES[i % 3]},x," + ",".join(map(str, probs)))
    (folder / "predictions_val.csv").write_text("\n".join(rows) + "\n")
    write_paired_predictions(folder / "predictions_val.csv", "val", CLASSES, "abc", folder / "predictions.json")
    (folder / "predictions_val.csv").unlink()  # names and patient ids stay in the run folder, never published


def _version_folder(root: Path, model: str, accuracy: float, auc: float | None, gate: dict[str, Any],
                    image_size: int = 32, shift: float | None = None) -> Path:
    folder = root / model
    (folder / "plots").mkdir(parents=True)
    if shift is not None:
        _paired_predictions(folder, shift)
    (folder / "model.onnx").write_bytes(b"\x08\x07onnx-bytes-of-" + model.encode())
    split = _split_metrics(accuracy, auc)
    split["calibration"] = {"brier": 0.41, "brier_prevalence": 0.66, "ece": 0.12, "ece_bins": 10,
                            "per_class": {c: {"mean_probability": 0.3, "prevalence": 0.33} for c in CLASSES}}
    split["pairwise_auc"] = {"normal_vs_benign": 0.71, "normal_vs_cancer": 0.93, "benign_vs_cancer": 0.62}
    metrics = {"model": model, "classes": CLASSES, "manifest_hash": "abc", "splits": {"val": split}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "gate.json").write_text(json.dumps(gate))
    (folder / "model_card.md").write_text(f"# {model}\n\n<script>alert(1)</script>\n\n| metric | value |\n|---|---|\n"
                                          "| macro AUC | 0.9 |\n\n![ROC curves](plots/val_roc.png)\n")
    (folder / "config.yaml").write_text(f"data:\n  image_size: {image_size}\n  classes: [normal, benign, cancer]\n")
    for kind in ("val_confusion", "val_roc"):
        Image.fromarray(np.full((8, 8), 200, np.uint8)).save(folder / "plots" / f"{kind}.png")
    return folder


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from medpipe.config import StoreConfig
    from medpipe.registry import publish_version
    from medpipe.store import open_store

    root = tmp_path_factory.mktemp("registry")
    store = open_store(StoreConfig(uri=str(root / "store")))
    failed_gate = {"passed": False, "challenger": "custom_cnn",
                   "reasons": ["macro_auc 0.61 < minimum 0.8", "<b>not</b> better than the baseline"]}
    passed_gate = {"passed": True, "challenger": "resnet18", "reasons": ["resnet18 passed all 4 checks"]}
    publish_version(store, _version_folder(root, "custom_cnn", 0.5, 0.61, failed_gate, image_size=48, shift=0.5),
                    "custom_cnn", "20260101T000000-aaaaaa", make_champion=False)
    publish_version(store, _version_folder(root, "resnet18", 0.875, None, passed_gate, shift=0.0), "resnet18",
                    "20260108T000000-bbbbbb")
    store.put_bytes("models/custom_cnn/damaged-1/metrics.json", b"{not json")  # an upload that died half-way
    _write_run_records(store)
    scorer = _version_folder(root / "scorer", "custom_cnn", 0.5, 0.6, failed_gate)
    export_untrained(scorer, "custom_cnn", SCORER_VERSION)  # replaces the placeholder model.onnx
    publish_version(store, scorer, "custom_cnn", SCORER_VERSION)  # its gate failed: published, not champion
    batches = score_inbox(store, scorer / "model.onnx", "custom_cnn", SCORER_VERSION, root / "scoring")
    return {"store_uri": str(root / "store"), "store": store, "batches": batches}


CHAMPION = {"model_name": "resnet18", "version": "20260108T000000-bbbbbb"}
REJECTED_RUN, PASSED_RUN = "manual__2026-01-15T03_00_00_00_00-1a2b3c4d", "20260108T000000Z-5e6f7a8b"
DAG_RUN_ID = "manual__2026-01-15T03:00:00+00:00"


def _write_run_records(store) -> None:
    """Two runs as the record stage writes them: the one that published the champion (from the CLI), and a newer
    one from the DAG whose challenger the gate rejected (with HTML in a reason)."""
    from medpipe.contracts import RunRecord
    from medpipe.run_record import write_run_record

    def models(auc: float) -> dict[str, Any]:
        entry = {"macro_auc": {"value": auc, "interval": [auc - 0.08, auc + 0.04]},
                 "balanced_accuracy": {"value": 0.6, "interval": None}}
        return {name: {"device": "cpu", "splits": {"val": entry}} for name in ("custom_cnn", "resnet18")}

    common = {"split": "val", "primary_metric": "macro_auc", "medpipe_version": "0.1.0", "code_commit": "abc123",
              "data_manifest_hash": "d" * 64, "config_hash": "c" * 64, "stage_seconds": {"start": 0.5, "gate": 2.0},
              "hardware": {"cpu_count": 2, "device_kind": "cpu", "gpus": []}}
    write_run_record(store, RunRecord(
        run_id=PASSED_RUN, started_at="2026-01-08T00:00:00+00:00", finished_at="2026-01-08T00:10:00+00:00",
        status="passed", models=models(0.9), champion_before=None, champion_after=CHAMPION, published=CHAMPION,
        gate={"passed": True, "challenger": "resnet18", "reasons": ["resnet18 passed all 4 checks"],
              "champion_metric": None}, **common))
    write_run_record(store, RunRecord(
        run_id=REJECTED_RUN, started_at="2026-01-15T03:00:00+00:00", finished_at="2026-01-15T03:20:00+00:00",
        status="rejected", models=models(0.7), champion_before=CHAMPION, champion_after=CHAMPION, published=None,
        dag_id="medpipe_retrain", dag_run_id=DAG_RUN_ID,
        gate={"passed": False, "challenger": "custom_cnn", "champion_metric": 0.88,
              "reasons": ["macro_auc 0.70 < champion 0.88 - 0.01", "<i>collapsed</i> model"]}, **common))


@pytest.fixture(scope="module")
def client(registry):
    from fastapi.testclient import TestClient

    from airflow.api_fastapi.app import create_app, purge_cached_app

    previous = os.environ.get("MEDPIPE_STORE_URI")
    os.environ["MEDPIPE_STORE_URI"] = registry["store_uri"]
    with TestClient(create_app(), base_url="http://localhost:8080", follow_redirects=False) as test_client:
        yield test_client
    purge_cached_app()
    if previous is None:
        os.environ.pop("MEDPIPE_STORE_URI", None)
    else:
        os.environ["MEDPIPE_STORE_URI"] = previous


@pytest.fixture(scope="module")
def auth(client, admin_password: str) -> dict[str, str]:
    response = client.post("/auth/token", json={"username": "admin", "password": admin_password})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_page_is_refused_without_credentials(client) -> None:
    api = client.get("/medpipe/models", headers={"Accept": "application/json"})
    assert api.status_code == 401
    browser = client.get("/medpipe/models/resnet18/20260108T000000-bbbbbb", headers={"Accept": "text/html"})
    assert browser.status_code == 303
    assert browser.headers["location"].startswith("/auth/login?next=")
    assert "medpipe%2Fmodels%2Fresnet18" in browser.headers["location"]
    files = client.get("/medpipe/models/resnet18/20260108T000000-bbbbbb/files/model.onnx")
    assert files.status_code == 401
    assert client.get("/medpipe/models", headers={"Authorization": "Bearer not-a-token"}).status_code == 403


def test_overview_lists_versions_champion_metrics_gate_and_links(client, auth) -> None:
    response = client.get("/medpipe/models", headers=auth)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    champion_row = page[page.index('id="resnet18-20260108T000000-bbbbbb"'):]
    champion_row = champion_row[:champion_row.index("</tr>")]
    assert "champion" in champion_row and "0.875" in champion_row and "passed" in champion_row
    assert "—" in champion_row  # macro_auc null is shown as undefined, not as a number
    other_row = page[page.index('id="custom_cnn-20260101T000000-aaaaaa"'):]
    other_row = other_row[:other_row.index("</tr>")]
    assert "badge champion" not in other_row and "failed" in other_row and "0.610" in other_row
    # The 95 % intervals under the figures (macro AUC and balanced accuracy of custom_cnn: 0.61, 0.5 - 0.1).
    assert f"{0.61 - 0.1:.2f}–{0.61 + 0.05:.2f}" in other_row and f"{0.5 - 0.25:.2f}–{0.5 + 0.05:.2f}" in other_row
    assert champion_row.count("95 % interval") == 1  # balanced accuracy only: its macro AUC is undefined
    assert "macro_auc 0.61 &lt; minimum 0.8" in other_row
    assert "&lt;b&gt;not&lt;/b&gt;" in other_row and "<b>not</b>" not in page
    damaged = page[page.index('id="custom_cnn-damaged-1"'):]
    damaged = damaged[:damaged.index("</tr>")]
    assert "model.onnx is missing" in damaged and "metrics.json is not valid JSON" in damaged
    for name in ("model.onnx", "model_card.md", "plots/val_roc.png", "plots/val_confusion.png"):
        assert f'/medpipe/models/resnet18/20260108T000000-bbbbbb/files/{name}"' in champion_row


def test_version_page_and_files_come_from_the_store(client, auth, registry) -> None:
    page = client.get("/medpipe/models/custom_cnn/20260101T000000-aaaaaa", headers=auth)
    assert page.status_code == 200
    assert "failed" in page.text and "majority baseline" in page.text and "cancer" in page.text
    key = "models/resnet18/20260108T000000-bbbbbb/"
    png = client.get(f"/medpipe/{key}files/plots/val_roc.png", headers=auth)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content == registry["store"].get_bytes(key + "plots/val_roc.png")
    onnx = client.get(f"/medpipe/{key}files/model.onnx", headers=auth)
    assert onnx.content == registry["store"].get_bytes(key + "model.onnx")
    assert onnx.headers["content-disposition"].startswith("attachment")
    card = client.get(f"/medpipe/{key}files/model_card.md", headers=auth)
    assert card.headers["content-type"].startswith("text/plain")  # never rendered as HTML
    assert card.headers["x-content-type-options"] == "nosniff"


def test_the_model_card_is_served_as_html_with_its_plots(client, auth) -> None:
    version = "/medpipe/models/resnet18/20260108T000000-bbbbbb"
    assert client.get(f"{version}/card", headers={"Accept": "application/json"}).status_code == 401
    overview = client.get("/medpipe/models", headers=auth).text
    assert f'href="{version}/card"' in overview and "parity.json" not in overview  # no parity.json published here
    page = client.get(f"{version}/card", headers=auth)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<table>" in page.text and "<td>macro AUC</td>" in page.text
    assert "&lt;script&gt;" in page.text and "<script>" not in page.text  # a card is data, never markup
    assert f'<base href="{version}/files/">' in page.text and '<img src="plots/val_roc.png"' in page.text
    image = client.get(f"{version}/files/plots/val_roc.png", headers=auth)  # where the browser resolves it
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert client.get("/medpipe/models/resnet18/20990101T000000-cccccc/card", headers=auth).status_code == 404


@pytest.mark.parametrize("path, status", [
    ("/medpipe/models/resnet18/20260108T000000-bbbbbb/files/%2E%2E/%2E%2E/champion.json", 400),
    # The client resolves dot segments itself: this arrives as version "champion.json" of resnet18 -> 404.
    ("/medpipe/models/resnet18/20260108T000000-bbbbbb/files/plots/../../../champion.json", 404),
    ("/medpipe/models/resnet18/20260108T000000-bbbbbb/files/secrets.txt", 400),
    ("/medpipe/models/resnet18/%2E%2E/files/model.onnx", 400),
    ("/medpipe/models/resnet18/20990101T000000-cccccc/files/model.onnx", 404),
    ("/medpipe/models/resnet18/20990101T000000-cccccc", 404),
])
def test_bad_or_unknown_keys_are_refused(client, auth, path: str, status: int) -> None:
    response = client.get(path, headers=auth)
    assert response.status_code == status, (path, response.text)
    assert response.json()["detail"] and "sha256" not in response.text


def test_plugin_is_registered_with_its_nav_entry(client, auth) -> None:
    plugins = client.get("/api/v2/plugins", headers=auth).json()["plugins"]
    ours = next(p for p in plugins if p["name"] == "medpipe_registry")
    assert ours["fastapi_apps"][0]["url_prefix"] == "/medpipe"
    view = ours["external_views"][0]
    assert (view["name"], view["href"], view["category"], view["url_route"]) == (
        "Models", "/medpipe/models", "browse", "medpipe-models")
    runs = ours["external_views"][1]
    assert (runs["name"], runs["href"], runs["url_route"]) == ("Runs", "/medpipe/runs", "medpipe-runs")
    assert client.get("/api/v2/importErrors", headers=auth).json()["total_entries"] == 0


def test_plugin_loader_imports_only_the_entry_file() -> None:
    """plugins/.airflowignore: the package's files must not also be loaded as top-level modules (app, settings...)."""
    import sys

    from airflow import plugins_manager

    assert [p["name"] for p in plugins_manager.get_plugin_info()] == ["medpipe_registry"]
    assert plugins_manager.get_import_errors() == {}
    assert not {"app", "catalog", "pages", "settings", "operators", "__init__"} & set(sys.modules)


def test_store_uri_falls_back_to_the_airflow_variable(client, auth, registry, monkeypatch) -> None:
    monkeypatch.delenv("MEDPIPE_STORE_URI")
    created = client.post("/api/v2/variables", headers=auth,
                          json={"key": "medpipe_store_uri", "value": registry["store_uri"]})
    assert created.status_code == 201, created.text
    try:
        page = client.get("/medpipe/models", headers=auth)
        assert page.status_code == 200 and registry["store_uri"] in page.text and "20260108T000000" in page.text
    finally:
        client.delete("/api/v2/variables/medpipe_store_uri", headers=auth)


def test_every_link_on_every_page_answers_200(client, auth) -> None:
    """Walk the Models pages as a logged-in user: every href and img src under /medpipe answers 200."""
    import re
    from urllib.parse import urljoin

    seen, queue = set(), ["/medpipe/models"]
    while queue:
        url = queue.pop()
        response = client.get(url, headers=auth)
        assert response.status_code == 200, (url, response.status_code, response.text[:300])
        if not response.headers["content-type"].startswith("text/html"):
            continue
        base = re.search(r'<base href="([^"]+)"', response.text)
        for link in re.findall(r'<(?:a|img)\b[^>]*?(?:href|src)="([^"#]+)"', response.text):
            target = urljoin(base.group(1) if base else url, link)
            if target.startswith("/medpipe/") and target not in seen:
                seen.add(target)
                queue.append(target)
    assert any(u.endswith("/card") for u in seen) and any(u.endswith(".png") for u in seen)
    assert {"/medpipe/runs", f"/medpipe/runs/{REJECTED_RUN}", f"/medpipe/runs/{PASSED_RUN}"} <= seen
    assert any(u.startswith("/medpipe/compare?a=resnet18/") for u in seen)
    assert len(seen) > 10
    # The Scoring page is reached from the Models page, and every file of its batches was fetched.
    batch = f"/medpipe/scoring/custom_cnn/{SCORER_VERSION}/inverted-0001/"
    assert "/medpipe/scoring" in seen and {batch + n for n in ("summary.json", "errors.csv", "predictions.csv")} <= seen
    for url in (u for u in seen if u.startswith("/medpipe/scoring")):  # and none of it without credentials
        assert client.get(url, headers={"Accept": "application/json"}).status_code == 401, url
        browser = client.get(url, headers={"Accept": "text/html"})
        assert browser.status_code == 303 and browser.headers["location"].startswith("/auth/login?next="), url


def test_runs_view_lists_runs_newest_first_with_verdict_reasons_and_links(client, auth) -> None:
    assert client.get("/medpipe/runs", headers={"Accept": "application/json"}).status_code == 401
    assert 'href="/medpipe/runs"' in client.get("/medpipe/models", headers=auth).text  # linked from the Models page
    page = client.get("/medpipe/runs", headers=auth)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert text.index(f'id="run-{REJECTED_RUN}"') < text.index(f'id="run-{PASSED_RUN}"')  # newest first
    rejected = text[text.index(f'id="run-{REJECTED_RUN}"'):]
    rejected = rejected[:rejected.index("</tr>")]
    assert "rejected" in rejected and "macro_auc 0.70 &lt; champion 0.88 - 0.01" in rejected
    assert "&lt;i&gt;collapsed&lt;/i&gt;" in rejected and "<i>collapsed" not in text
    assert "custom_cnn" in rejected and "0.700" in rejected and "[0.620–0.740]" in rejected
    assert rejected.count('href="/medpipe/models/resnet18/20260108T000000-bbbbbb"') == 2  # champion before → after
    assert 'target="_top" href="/dags/medpipe_retrain/runs/manual__2026-01-15T03%3A00%3A00%2B00%3A00"' in rejected
    assert f'href="/medpipe/runs/{REJECTED_RUN}"' in rejected
    assert "<svg" in text and "<script" not in text and text.count("<circle") >= 3  # 2 challengers + champion


def test_run_detail_page_shows_every_model(client, auth) -> None:
    page = client.get(f"/medpipe/runs/{REJECTED_RUN}", headers=auth)
    assert page.status_code == 200
    assert "custom_cnn" in page.text and "resnet18" in page.text and "0.880" in page.text
    assert "d" * 64 in page.text and "2 CPUs, cpu" in page.text
    assert client.get("/medpipe/runs/%2E%2E", headers=auth).status_code == 400
    assert client.get("/medpipe/runs/no-such-run", headers=auth).status_code == 404


def test_version_page_shows_intervals_calibration_pairwise_auc_and_operating_points(client, auth) -> None:
    page = client.get("/medpipe/models/custom_cnn/20260101T000000-aaaaaa", headers=auth).text
    assert "[0.510–0.660]" in page and "Brier score 0.410" in page and "normal vs cancer" in page
    assert "Operating points" in page and "sensitivity at 95 % specificity" in page
    assert "<th>cancer</th><td class=num>0.610</td><td class=num>0.400</td><td class=num>0.375</td>" \
           "<td class=num>0.125</td>" in page


def test_compare_page_shows_metrics_the_paired_difference_and_the_config_diff(client, auth) -> None:
    url = "/medpipe/compare?a=resnet18/20260108T000000-bbbbbb&b=custom_cnn/20260101T000000-aaaaaa"
    assert client.get(url, headers={"Accept": "application/json"}).status_code == 401
    overview = client.get("/medpipe/models", headers=auth).text
    assert f'href="{url}"' in overview  # "compare with champion" on the other version's row
    page = client.get(url, headers=auth)
    assert page.status_code == 200
    assert "b − a" in page.text and "-0.375" in page.text  # accuracy 0.5 - 0.875
    assert "Paired on the same 12 images of the val split (6 patients" in page.text
    assert "<th>macro_auc</th><td class=num>-0.625</td>" in page.text  # b shifted its odd images toward cancer
    assert "<th>balanced_accuracy</th><td class=num>-0.500</td>" in page.text
    assert "img0" not in client.get("/medpipe/models/resnet18/20260108T000000-bbbbbb/predictions.json",
                                    headers=auth).text  # no file names (nor patient ids) are published
    unpaired = client.get(f"/medpipe/compare?a=resnet18/20260108T000000-bbbbbb&b=custom_cnn/{SCORER_VERSION}",
                          headers=auth).text
    assert "No paired difference: at least one version has no predictions.json" in unpaired  # none invented
    diff = page.text[page.text.index("Config (differing keys)"):]
    assert "data.image_size" in diff and "32" in diff and "48" in diff and "data.classes" not in diff
    for bad, status in (("a=resnet18&b=custom_cnn/x", 400), ("a=../x&b=custom_cnn/x", 400), ("b=custom_cnn/x", 400),
                        ("a=resnet18/nope&b=custom_cnn/20260101T000000-aaaaaa", 404)):
        assert client.get(f"/medpipe/compare?{bad}", headers=auth).status_code == status, bad


def test_scoring_page_shows_each_batch_and_flags_drift(client, auth, registry) -> None:
    summary = registry["batches"]["inverted-0001"]
    assert summary["drift"]["drifted"] is True and summary["verified"] is True  # what the page must show
    page = client.get("/medpipe/scoring", headers=auth)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    row = page.text[page.text.index(f'id="custom_cnn-{SCORER_VERSION}-inverted-0001"'):]
    row = row[:row.index("</tbody>")].split("</tr></table>")[0]
    assert "DRIFT: PSI over threshold" in row and "drifted" in row.split(">")[0]
    assert f"PSI (threshold {summary['drift']['threshold']:.3f})" in row
    for feature in summary["drift"]["drifted_features"]:  # the cells over the threshold are marked
        assert f'<td>{feature}</td><td class="num over">{summary["drift"]["psi"][feature]:.3f}</td>' in row
    assert f'<td class="num">{summary["files"]}</td>' in row and summary["scored_at"] in row
    for name, count in summary["predicted"].items():
        assert f"{name}: {count}" in row
    assert any(f"{column}: {value:.3f}" in row for column, value in summary["mean"].items())
    assert f'href="/medpipe/models/custom_cnn/{SCORER_VERSION}"' in row and "unverified model" not in row
    small = page.text[page.text.index(f'id="custom_cnn-{SCORER_VERSION}-small-0002"'):]
    small = small[:small.index("</td></tr>")]
    assert "not checked: 3 scored images; drift needs at least 100" in small and "DRIFT" not in small
    assert "1 drifted" in page.text


def test_scored_batch_files_are_served_safely(client, auth, registry) -> None:
    base = f"/medpipe/scoring/custom_cnn/{SCORER_VERSION}/inverted-0001/"
    key = f"scores/custom_cnn/{SCORER_VERSION}/inverted-0001/"
    for name, media in (("summary.json", "application/json"), ("predictions.csv", "text/csv; charset=utf-8"),
                        ("errors.csv", "text/csv; charset=utf-8")):
        response = client.get(base + name, headers=auth)
        assert response.status_code == 200 and response.headers["content-type"] == media
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content == registry["store"].get_bytes(key + name)
    rows = client.get(base + "predictions.csv", headers=auth).text.splitlines()
    assert rows[0].endswith("model_verified,model_version") and all(r.endswith(f"true,{SCORER_VERSION}")
                                                                      for r in rows[1:])
    for path, status in ((base + "model.onnx", 400), (base + "%2E%2E", 400),
                         (f"/medpipe/scoring/custom_cnn/{SCORER_VERSION}/%2Eetc/summary.json", 400),
                         (f"/medpipe/scoring/custom_cnn/{SCORER_VERSION}/nope/summary.json", 404)):
        assert client.get(path, headers=auth).status_code == status, path


def test_a_manually_promoted_champion_says_so(client, auth, tmp_path, monkeypatch) -> None:
    from medpipe.config import StoreConfig
    from medpipe.registry import publish_version, read_champion
    from medpipe.store import open_store

    store = open_store(StoreConfig(uri=str(tmp_path / "store")))
    folder = _version_folder(tmp_path, "custom_cnn", 0.5, 0.6, {"passed": False, "challenger": "custom_cnn",
                                                                  "reasons": ["macro_auc 0.6 < minimum 0.8"]})
    monkeypatch.setenv("MEDPIPE_STORE_URI", str(tmp_path / "store"))
    publish_version(store, folder, "custom_cnn", "v1")  # a failed gate: published, never champion by itself
    assert read_champion(store) is None and "No champion yet" in client.get("/medpipe/models", headers=auth).text
    publish_version(store, folder, "custom_cnn", "v1", promote=True)
    page = client.get("/medpipe/models", headers=auth).text
    assert page.count("champion by manual promotion, no passed gate") == 2  # the summary line and the row
    version_page = client.get("/medpipe/models/custom_cnn/v1", headers=auth).text
    assert "champion by manual promotion, no passed gate" in version_page
