"""The OpenAI-compatible API under /v1: routes, schemas, errors, keys, gateway, batches.

``install(app)`` adds the /v1 routes, the native routes that serve them (API
keys, task progress) and the error handlers that answer /v1 in OpenAI's shape.
"""

from __future__ import annotations

from fastapi import FastAPI

from deai.coordinator import api_keys
from deai.coordinator.openai import errors, relay, routes


def install(app: FastAPI) -> None:
    app.state.relay = relay.Relay(app.state.coordinator.notifier)  # progress, any replica
    app.include_router(routes.router)
    app.include_router(relay.router)
    app.include_router(api_keys.router)
    errors.install(app)
