"""Run the coordinator under uvicorn."""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn

from deai.coordinator.app import create_app
from deai.coordinator.notifier import Notifier
from deai.coordinator.settings import Settings


class _Server(uvicorn.Server):
    """Releases open long-polls on SIGTERM/SIGINT so shutdown does not wait them out."""

    def __init__(self, config: uvicorn.Config, notifier: Notifier) -> None:
        super().__init__(config)
        self.notifier = notifier

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.notifier.close()
        super().handle_exit(sig, frame)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5)
    _Server(config, app.state.coordinator.notifier).run()
