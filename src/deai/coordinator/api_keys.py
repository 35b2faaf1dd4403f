"""Routes for API keys (native API under /api): mint, list and revoke, all signed.

The keys are for the OpenAI-compatible API under /v1 (``coordinator.openai``);
minting one needs the account's own Ed25519 signature, like any other change.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from deai.coordinator.auth import coordinator, signer
from deai.coordinator.openai import keys
from deai.coordinator.service import Coordinator
from deai.core import wire

router = APIRouter(prefix="/api")
C = Annotated[Coordinator, Depends(coordinator)]
Signer = Annotated[str, Depends(signer)]


@router.post("/api-keys", response_model=wire.ApiKeyOut, status_code=201)
def create(body: wire.ApiKeyIn, c: C, me: Signer) -> wire.ApiKeyOut:
    return keys.create(c, me, body)


@router.get("/api-keys", response_model=dict[str, list[wire.ApiKeyOut]])
def list_keys(c: C, me: Signer) -> dict[str, list[wire.ApiKeyOut]]:
    return {"api_keys": keys.list_keys(c, me)}


@router.post("/api-keys/{key_id}/revoke", response_model=wire.ApiKeyOut)
def revoke(key_id: str, c: C, me: Signer) -> wire.ApiKeyOut:
    return keys.revoke(c, me, key_id)
