"""SDK for volumes of leases: create, list, show, remove; save a lease's home now.

    vols = Volumes(Client(url, keys.load("alice")))
    v = vols.create("data", size_gb=1)
    lease = Leases(client).create(cpus=1, memory_mb=1024, hours=1, max_price_hour=500_000,
                                  volume="data")   # restored into /work before it starts
    vols.snapshot(lease.id)                          # waits until the head has moved
"""

from __future__ import annotations

import builtins
import time

from deai.client.sdk import Client
from deai.core.errors import DeAIError
from deai.core.wire_volumes import VolumeIn, VolumeOut


class Volumes:
    def __init__(self, client: Client) -> None:
        self.client = client

    def create(self, name: str, size_gb: float = 1.0) -> VolumeOut:
        return self.client._post("/api/volumes", VolumeIn(name=name, size_gb=size_gb),
                                 VolumeOut)

    def list(self) -> builtins.list[VolumeOut]:
        resp = self.client.request("GET", "/api/volumes")
        return [VolumeOut.model_validate(v) for v in resp.json()["volumes"]]

    def show(self, ref: str) -> VolumeOut:
        return self.client._get(f"/api/volumes/{ref}", VolumeOut)

    def remove(self, ref: str) -> VolumeOut:
        return VolumeOut.model_validate(
            self.client.request("DELETE", f"/api/volumes/{ref}").json())

    def snapshot(self, lease_id: str, timeout: float = 300.0) -> VolumeOut:
        """Ask the lease's provider to save its home; wait until it has been saved."""
        asked = self.client._post(f"/api/leases/{lease_id}/snapshot", {}, VolumeOut)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = self.show(asked.id)
            if v.updated_at > asked.updated_at:  # saved (the head moved, or was the same)
                return v
            if v.error_at is not None and v.error_at != asked.error_at:
                raise DeAIError(f"lease {lease_id}: the volume was not saved: {v.error}")
            time.sleep(0.3)
        raise DeAIError(f"lease {lease_id}: no snapshot within {timeout:.0f} s")
