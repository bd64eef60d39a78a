"""A client for one serving replica: the embedded server, or any server speaking vLLM's LoRA API.

vLLM has no per-workload route: against it `route` is a no-op and a workload is addressed by
its versioned adapter name. The embedded server adds `/v1/workloads/{w}/route` for atomic swaps.
"""

from __future__ import annotations

from typing import Any

import httpx


class ServingError(RuntimeError):
    """A replica refused or failed a request; the message names the replica and its answer."""


class ServingClient:
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 120.0):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServingError(f"{self.base_url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            raise ServingError(f"{self.base_url}{path}: HTTP {response.status_code}: {message}")
        return response

    def models(self) -> list[str]:
        return [item["id"] for item in self._call("GET", "/v1/models").json()["data"]]

    def routes(self) -> dict[str, str | None]:
        """workload -> served adapter (embedded server only; {} for vLLM)."""
        try:
            return self._call("GET", "/v1/workloads").json()["workloads"]
        except ServingError:
            return {}

    def load_adapter(self, name: str, path: str) -> None:
        self._call("POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})

    def unload_adapter(self, name: str) -> None:
        self._call("POST", "/v1/unload_lora_adapter", json={"lora_name": name})

    def route(self, workload: str, name: str, unload_previous: bool = True) -> str | None:
        """Switch `workload` to `name`; returns the adapter it served before."""
        response = self._call("POST", f"/v1/workloads/{workload}/route", json={"lora_name": name, "unload_previous": unload_previous})
        return response.json().get("previous")

    def chat(self, model: str, text: str) -> dict[str, Any]:
        """One OpenAI-style chat completion against `model` (an adapter name or a workload)."""
        body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 64, "temperature": 0}
        return self._call("POST", "/v1/chat/completions", json=body).json()

    def predict(self, workload: str, texts: list[str]) -> list[dict[str, Any]]:
        return self._call("POST", f"/v1/workloads/{workload}/predict", json={"inputs": texts}).json()["predictions"]
