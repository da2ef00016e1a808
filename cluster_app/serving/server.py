"""Run a :class:`~cluster_app.serving.gateway.Gateway` under uvicorn: in a background thread
(``AgentCluster.serve``, tests, benchmarks) or in the foreground (``cluster-app serve``)."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn

from cluster_app.errors import RunError
from cluster_app.serving.gateway import Gateway

__all__ = ["ServingHandle"]


class ServingHandle:
    """A gateway serving in a background thread, and a small client for it."""

    def __init__(self, gateway: Gateway, host: str | None = None, port: int | None = None) -> None:
        self.gateway = gateway
        host = host or gateway.spec.host
        port = gateway.spec.port if port is None else port
        config = uvicorn.Config(
            gateway.app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, name="cluster-app-gateway", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 600  # the served versions load and compile first
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RunError(f"the gateway did not start on {host}:{port}")
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0].getsockname()
        self.url = f"http://{sock[0]}:{sock[1]}"
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def complete(
        self,
        prompt: str,
        max_tokens: int = 16,
        temperature: float = 0.0,
        user: str | None = None,
        model: str | None = None,
        stop=None,
    ) -> str:
        """The completion of ``prompt`` through the HTTP API."""
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
        body.update({k: v for k, v in {"user": user, "model": model, "stop": stop}.items() if v})
        r = self.http.post("/v1/completions", json=body)
        if r.status_code != 200:
            raise RunError(f"completion failed ({r.status_code}): {r.json()['error']['message']}")
        return r.json()["choices"][0]["text"]

    def set_split(self, arms: dict[str, float], shadow: str | None = None) -> dict:
        """Start an A/B split (``{"prod": 0.9, "feature/x": 0.1}``), optionally a shadow."""
        body = {"arms": [{"ref": r, "weight": w} for r, w in arms.items()], "shadow": shadow}
        r = self.http.put("/v1/split", json=body)
        if r.status_code != 200:
            raise RunError(f"split refused ({r.status_code}): {r.json()['error']['message']}")
        return r.json()

    def split(self) -> dict:
        """The live split with per-arm stats and recent events (``GET /v1/split``)."""
        return self.http.get("/v1/split").json()

    def stop(self) -> None:
        """Stop the gateway and its thread."""
        self.http.close()
        self.server.should_exit = True
        self.thread.join(30)

    def __enter__(self) -> ServingHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
