"""Airflow plugin: the medpipe "Models" page (model registry browser) in the Airflow UI.

Registers a FastAPI app mounted by the API server at /medpipe (the page itself, its plots and files) and an
external views that put "Models" and "Runs" in the Browse menu, shown inside the UI at /plugin/medpipe-models and
/plugin/medpipe-runs.
The publish task's "Model page" link comes from PublishModelOperator (medpipe_plugin.operators): in Airflow 3
the worker stores an operator's extra links in XCom, so the link needs no registration here.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from medpipe_plugin.app import URL_PREFIX, create_app

__all__ = ["MedpipeRegistryPlugin"]


class MedpipeRegistryPlugin(AirflowPlugin):
    """The Models page: every published version, its metrics, gate result, plots and files."""

    name = "medpipe_registry"
    fastapi_apps = [{"name": "medpipe-models", "app": create_app(), "url_prefix": URL_PREFIX}]
    external_views = [
        {
            "name": "Models",
            "href": f"{URL_PREFIX}/models",
            "destination": "nav",
            "category": "browse",
            "url_route": "medpipe-models",
        },
        {  # every retraining run's record: verdict, reasons, champion before/after, the trend (runs_view.py)
            "name": "Runs",
            "href": f"{URL_PREFIX}/runs",
            "destination": "nav",
            "category": "browse",
            "url_route": "medpipe-runs",
        },
        {  # the inbox's scored batches and their drift (medpipe_plugin.scoring_view)
            "name": "Scoring",
            "href": f"{URL_PREFIX}/scoring",
            "destination": "nav",
            "category": "browse",
            "url_route": "medpipe-scoring",
        },
    ]
