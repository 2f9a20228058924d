"""One JSON POST to a model server (embedding or rerank), with the retries and messages both need: backoff on
429/502/503/504 and dropped connections (the server's ``Retry-After`` honoured), and errors that name the server and
the setting a user changes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigError, RagError

if TYPE_CHECKING:
    import httpx

__all__ = ["RETRY_STATUS", "backoff", "post_json"]

RETRY_STATUS = frozenset({429, 502, 503, 504})


def backoff(attempt: int, retry_after: str = "") -> float:
    """Seconds to wait before retry ``attempt + 1``: the server's Retry-After, else 0.5, 1, 2, 4, ... (at most 8)."""
    if retry_after.replace(".", "", 1).isdigit():
        return min(8.0, float(retry_after))
    return min(8.0, 0.5 * 2**attempt)


def post_json(
    client: httpx.Client,
    url: str,
    body: dict[str, Any],
    *,
    retries: int,
    timeout: float,
    service: str,
    base_url: str,
    model: str,
    setting: str,
    without: str,
) -> httpx.Response:
    """The server's answer to ``body`` (status < 400), after up to ``retries`` retries; else a :class:`ConfigError`
    (down, or too slow) or a :class:`RagError` (it refused), each naming ``service`` at ``base_url`` and ``setting``.
    ``without`` says what unsetting the setting does (``embed in this process``)."""
    import httpx

    for attempt in range(retries + 1):
        try:
            response = client.post(url, json=body)
        except httpx.TransportError as error:  # timeouts included
            if attempt < retries:
                time.sleep(backoff(attempt))
                continue
            if isinstance(error, httpx.TimeoutException):
                raise ConfigError(
                    f"the {service} at {base_url} did not answer within {timeout:.0f} s "
                    f"({type(error).__name__}): check that it is running and not overloaded ({setting})"
                ) from error
            raise ConfigError(
                f"cannot reach the {service} at {base_url} ({error}): start it, or fix {setting} "
                f"(unset it to {without})"
            ) from error
        if response.status_code in RETRY_STATUS and attempt < retries:
            time.sleep(backoff(attempt, response.headers.get("retry-after", "")))
            continue
        if response.status_code >= 400:
            raise RagError(
                f"the {service} at {base_url} refused model {model!r} ({response.status_code}): {response.text[:300]}"
            )
        return response
    raise AssertionError("unreachable")
