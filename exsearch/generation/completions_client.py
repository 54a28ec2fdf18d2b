"""HTTP to an OpenAI-compatible completions server: retries, timeouts, bounded concurrency.

`openai.OpenAIGenerator` decides what to ask (prompts, sampling knobs, scoring) and reads the
answers; this module only delivers requests and returns their JSON. Requests are retried with
exponential backoff (and jitter) on connection errors, timeouts, 429 and 5xx; other errors fail
at once with the server's message.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import httpx
from tqdm.auto import tqdm

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_MAX_BACKOFF_S = 60.0


class ServerError(RuntimeError):
    """The completions server could not be reached or answered with an error."""


class CompletionsClient:
    """One HTTP connection pool to a server's API root, sized to `max_concurrency`; thread-safe.

    Call `close()` to release the connections.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 64,
        timeout_s: float = 600.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout_s,
            limits=httpx.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def post_all(self, bodies: list[dict], desc: str, progress: bool) -> list[dict]:
        """POST every body to /completions, at most `max_concurrency` at once; answers in order."""
        answers: list[dict] = [{}] * len(bodies)
        if not bodies:
            return answers
        bar = tqdm(total=len(bodies), desc=desc, disable=not progress, leave=False)
        pool = ThreadPoolExecutor(min(self.max_concurrency, len(bodies)), "completions")
        try:
            futures = {
                pool.submit(self.request, "POST", "/completions", b): i
                for i, b in enumerate(bodies)
            }
            for future in as_completed(futures):
                answers[futures[future]] = future.result()
                bar.update()
        finally:
            # On an error, drop the queued requests instead of waiting for them.
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()
        return answers

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One request, retried with exponential backoff (and jitter) on transient failures."""
        url = f"{self.base_url}{path}"
        error = ""
        for attempt in range(self.max_retries + 1):
            wait = self.backoff_s * 2**attempt * (0.5 + random.random() / 2)
            try:
                r = self._http.request(method, path, json=body)
            except httpx.TimeoutException:
                error = f"no answer within generation.timeout_s = {self.timeout_s:g}s"
            except httpx.TransportError as e:
                error = f"cannot reach the server ({type(e).__name__}: {e})"
            else:
                if r.status_code == 200:
                    try:
                        return r.json()
                    except ValueError:
                        raise ServerError(f"{method} {url}: not JSON: {r.text[:300]!r}") from None
                detail = f"HTTP {r.status_code}: {r.text[:300]}"
                if r.status_code not in _RETRY_STATUS:
                    raise ServerError(f"{method} {url} failed with {detail}")
                error = detail
                retry_after = r.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    wait = max(wait, float(retry_after))
            if attempt < self.max_retries:
                time.sleep(min(wait, _MAX_BACKOFF_S))
        raise ServerError(
            f"{method} {url} failed after {self.max_retries + 1} attempt(s); last error: {error}. "
            "Is the server running and serving this model (generation.base_url, "
            "docs/serving.md)? A loaded server needs a larger generation.timeout_s or a smaller "
            "generation.max_concurrency."
        )
