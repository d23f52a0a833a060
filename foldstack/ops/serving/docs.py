"""The API documentation pages, /docs (Swagger UI) and /redoc (ReDoc), served without the internet.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and a favicon from fastapi.tiangolo.com), so on a
machine without internet they are blank. Here the same pages load those files from the `fastapi-offline`
package, mounted at /static: every script, style sheet and icon a page references is served by the service
itself. Swagger UI's online spec validator (a badge fetched from validator.swagger.io) is switched off too.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, swagger_ui_default_parameters
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_URL = "/static"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
# What the package ships: swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png.
STATIC_DIR = Path(str(files("fastapi_offline") / "static"))


def add_offline_docs(app: FastAPI) -> None:
    """Mount the assets at /static and add /docs and /redoc on them; `app` must be made with
    docs_url=None and redoc_url=None (FastAPI's own pages would shadow these)."""
    if app.docs_url or app.redoc_url:
        raise ValueError("create the app with docs_url=None and redoc_url=None: it would serve the CDN pages")
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")
    parameters = {**swagger_ui_default_parameters, "validatorUrl": None}

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
                                   swagger_ui_parameters=parameters)

    @app.get(REDOC_URL, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png", with_google_fonts=False)


def _root(request: Request) -> str:
    """The prefix a proxy mounted the service under (uvicorn --root-path), so the URLs work behind it."""
    return str(request.scope.get("root_path") or "").rstrip("/")
