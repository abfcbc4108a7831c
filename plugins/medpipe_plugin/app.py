"""The Models page (and the Runs and Compare views, runs_view.py and compare_view.py): a FastAPI app that Airflow's API server mounts under /medpipe, behind Airflow's login.

Plugin apps are not protected by Airflow on their own, so every route depends on `requires_authenticated()`
(a Bearer token or the `_token` cookie the UI login sets). Without credentials an API client gets 401; a
browser (Accept: text/html) is sent to the login page with a 303 and comes back here afterwards.

The store is read, never written. Its URI comes from MEDPIPE_STORE_URI, else the Airflow Variable
`medpipe_store_uri`, else the DAGs' default; files are served only from keys built by `catalog.artifact_key`.
"""

from __future__ import annotations

import logging
import mimetypes
import os
from functools import lru_cache
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from medpipe_plugin import settings
from medpipe_plugin.catalog import artifact_key, check_segment, load_catalog, open_registry_store
from medpipe_plugin.compare_view import add_compare_route
from medpipe_plugin.pages import render_card, render_catalog, render_version
from medpipe_plugin.runs_view import add_run_routes
from medpipe_plugin.scoring_view import add_scoring_routes

if TYPE_CHECKING:
    from medpipe.store import Store

__all__ = ["URL_PREFIX", "create_app", "model_page_path", "registry_store_settings"]

_logger = logging.getLogger(__name__)

URL_PREFIX = "/medpipe"
STORE_URI_VARIABLE = "medpipe_store_uri"
# What the browser may do with files that come from the store: show images/text, never run them as a page.
_FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; img-src 'self'"}
_MEDIA_TYPES = {".onnx": "application/octet-stream", ".md": "text/plain; charset=utf-8",
                ".yaml": "text/plain; charset=utf-8", ".json": "application/json", ".png": "image/png"}


def model_page_path(model_name: str, version: str) -> str:
    """Path of one version's page on the API server, e.g. /medpipe/models/resnet18/20260105T030000-1a2b3c."""
    return f"{URL_PREFIX}/models/{check_segment(model_name, 'model name')}/{check_segment(version, 'version')}"


def _store_uri_variable() -> str | None:
    # Only read when the environment does not say: a Variable needs the metadata database.
    from airflow.models.variable import Variable

    return Variable.get(STORE_URI_VARIABLE, default_var=None)


def registry_store_settings() -> tuple[str, str | None]:
    """(store URI, endpoint URL) the page reads: env MEDPIPE_STORE_URI, else Variable medpipe_store_uri."""
    uri = os.environ.get("MEDPIPE_STORE_URI") or _store_uri_variable() or settings.store_uri()
    return uri, settings.store_endpoint_url()


@lru_cache(maxsize=4)
def _cached_store(uri: str, endpoint_url: str | None) -> Store:
    return open_registry_store(uri, endpoint_url)


def _store() -> Store:
    return _cached_store(*registry_store_settings())


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """401 for API clients; browsers go to Airflow's login page and return here after logging in."""
    if exc.status_code == 401 and _wants_html(request):
        from airflow.api_fastapi.app import get_auth_manager

        login = get_auth_manager().get_url_login(next_url=str(request.url))
        return RedirectResponse(login, status_code=303)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


def _catalog():
    """The registry as the page lists it; an unreachable store is a 502 that names it (never credentials)."""
    from medpipe.store import StoreError

    try:
        return load_catalog(_store())
    except StoreError as exc:
        _logger.warning("cannot read the model registry: %s", exc)
        raise HTTPException(502, f"cannot read the model registry: {exc}") from None


def _models_page(request: Request) -> HTMLResponse:
    return HTMLResponse(render_catalog(_catalog(), _root(request)))


def _find_version(model_name: str, version: str):
    """(catalog, the version's view); 400 for a malformed name, 404 for one the registry lacks."""
    try:
        check_segment(model_name, "model name")
        check_segment(version, "version")
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    catalog = _catalog()
    view = catalog.find(model_name, version)
    if view is None:
        raise HTTPException(404, f"version {model_name}/{version} is not in the registry {catalog.store_uri}")
    return catalog, view


def _version_page(request: Request, model_name: str, version: str) -> HTMLResponse:
    catalog, view = _find_version(model_name, version)
    return HTMLResponse(render_version(catalog, view, _root(request)))


def _card_page(request: Request, model_name: str, version: str) -> HTMLResponse:
    """The version's model_card.md as HTML, its plots shown (the raw Markdown stays under files/)."""
    catalog, view = _find_version(model_name, version)
    if "model_card.md" not in view.files:
        raise HTTPException(404, f"{model_name}/{version} has no model card in the registry {catalog.store_uri}")
    markdown = _version_file(model_name, version, "model_card.md").body.decode("utf-8", errors="replace")
    return HTMLResponse(render_card(view, markdown, _root(request)))


def _version_file(model_name: str, version: str, name: str) -> Response:
    from medpipe.store import ObjectNotFoundError, StoreError

    try:
        key = artifact_key(model_name, version, name)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    try:
        data = _store().get_bytes(key)
    except ObjectNotFoundError:
        raise HTTPException(404, f"{key} does not exist in the registry") from None
    except StoreError as exc:
        raise HTTPException(502, f"cannot read {key} from the model registry: {exc}") from None
    suffix = os.path.splitext(name)[1]
    media_type = _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    headers = dict(_FILE_HEADERS)
    if suffix == ".onnx":
        headers["Content-Disposition"] = f'attachment; filename="{model_name}-{version}.onnx"'
    return Response(data, media_type=media_type, headers=headers)


def create_app() -> FastAPI:
    """The Models app; Airflow mounts it at URL_PREFIX (see medpipe_registry_plugin.py)."""
    from airflow.api_fastapi.core_api.security import requires_authenticated

    app = FastAPI(title="medpipe models", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    router = APIRouter(dependencies=[Depends(requires_authenticated())])
    router.add_api_route("/models", _models_page, methods=["GET"], response_class=HTMLResponse)
    router.add_api_route("/models/{model_name}/{version}", _version_page, methods=["GET"],
                         response_class=HTMLResponse)
    router.add_api_route("/models/{model_name}/{version}/card", _card_page, methods=["GET"],
                         response_class=HTMLResponse)
    router.add_api_route("/models/{model_name}/{version}/files/{name:path}", _version_file, methods=["GET"])
    add_run_routes(router, _store, _root, URL_PREFIX)
    add_compare_route(router, _store, _root)
    add_scoring_routes(router, _store)  # /scoring: the inbox's scored batches (scoring_view.py)
    app.include_router(router)
    return app
