"""Azure Functions entry point (Python v2 model): triggers only; the work lives in ``shared/``."""

from __future__ import annotations

import json

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness probe: answers without touching storage or the hub."""
    return func.HttpResponse(json.dumps({"status": "ok"}), mimetype="application/json")
