"""Process lifecycle state shared by the server (signals) and the app (/readyz)."""

from __future__ import annotations


class Lifecycle:
    """`draining` turns true on the first SIGTERM/SIGINT; /readyz answers 503 from then on."""

    def __init__(self) -> None:
        self.draining = False

    def start_draining(self) -> None:
        self.draining = True
