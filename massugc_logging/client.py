"""A direct client for code that still builds its payloads by hand.

``UsageClient.log_usage_data(payload)`` is the call the app's code already
makes, and it answers as the app's own client did, so the app's
``result = client.log_usage_data(usage_data); if result.get('skipped'): ...``
works unchanged: the server's JSON object when the event was delivered, else
``{"skipped": True, "reason": ...}`` with ``"endpoint_not_implemented"`` for a
404, ``"http_<status>"`` for another status, or the network failure in words
(never a secret). ``send_usage_data(payload)`` returns the typed
:class:`~massugc_logging.outcome.Outcome` instead.

Both post synchronously on the calling thread (use the handler to stay off the
app thread), redact every string of ``job_data`` first, and never raise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any, Optional, Union

from massugc_logging.contract import DEFAULT_ENDPOINT, DEFAULT_EVENT_TYPE, PRODUCTION_API_URL
from massugc_logging.keystore import ApiKey, KeyStore
from massugc_logging.outcome import Outcome, OutcomeKind
from massugc_logging.payload import encode_event, event_id_for, lossless_text
from massugc_logging.pipeline.transport import DEFAULT_TIMEOUT, Timeout, Transport, app_headers
from massugc_logging.redaction import (
    DEFAULT_ERROR_MESSAGE_LIMIT,
    DEFAULT_FIELD_LIMIT,
    KnownSecrets,
    Redactor,
    system_redactor,
)


class UsageClient:
    """Posts ready-made usage payloads to the MassUGC Cloud API."""

    def __init__(
        self,
        api_url: Optional[str] = None,
        api_key: Optional[Union[str, ApiKey]] = None,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        timeout: Timeout = DEFAULT_TIMEOUT,
        allow_insecure_http: bool = False,
        redactor: Optional[Redactor] = None,
        ca_bundle: Optional[str] = None,
        user_agent: Optional[str] = None,
        headers: Optional[Mapping[str, Any]] = None,
    ) -> None:
        key: Optional[ApiKey]
        if isinstance(api_key, ApiKey):
            key = api_key
        else:
            key, _ = KeyStore().resolve(api_key or None)
        self._transport = Transport(
            api_url or os.environ.get("MASSUGC_API_URL") or PRODUCTION_API_URL,
            key, endpoint=endpoint, timeout=timeout, allow_insecure_http=allow_insecure_http,
            ca_bundle=ca_bundle, user_agent=user_agent, headers=app_headers(headers),
        )
        self._redactor = redactor or system_redactor()
        #: The key, scrubbed from the payload in any common encoding.
        self._secrets = KnownSecrets([key.reveal()] if key is not None else [])

    def __repr__(self) -> str:
        return f"<UsageClient {self._transport.url}>"

    @property
    def url(self) -> str:
        """The full URL events are posted to."""
        return self._transport.url

    def scrub(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``payload`` with every ``job_data`` string redacted and capped (a UUID,
        a path, an enum, a Decimal or a datetime as its text first)."""
        event = dict(payload)
        job = event.get("job_data")
        if isinstance(job, Mapping):
            clean: dict[str, Any] = {}
            for name, value in job.items():
                limit = DEFAULT_ERROR_MESSAGE_LIMIT if name == "error_message" else \
                    DEFAULT_FIELD_LIMIT
                text = value if isinstance(value, str) else lossless_text(value)
                clean[name] = value if text is None else self._redactor.redact_and_cap(
                    text, limit, known_secrets=self._secrets)
            event["job_data"] = clean
        return event

    def log_usage_data(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Redact and POST one payload; answer as the app's own client did (never raises).

        Returns the server's JSON object when delivered (``{}`` if it sent none), else a
        dict with ``"skipped": True`` and a ``"reason"``: ``"endpoint_not_implemented"``
        (404), ``"http_<status>"``, or what went wrong on the way; ``"status"`` and
        ``"detail"`` (the server's error code and message) when there was an answer.
        """
        return skipped_or_response(self.send_usage_data(payload))

    def send_usage_data(self, payload: Mapping[str, Any]) -> Outcome:
        """Redact and POST one payload; return the typed outcome (never raises)."""
        try:
            event = self.scrub(payload)
            job = event.get("job_data") if isinstance(event.get("job_data"), Mapping) else {}
            run_id = job.get("run_id") if isinstance(job, Mapping) else None
            if run_id is not None and not isinstance(run_id, str):
                run_id = lossless_text(run_id)
            success = bool(job.get("success")) if isinstance(job, Mapping) else False
            event_id = event_id_for(
                str(event.get("event_type") or DEFAULT_EVENT_TYPE),
                run_id if isinstance(run_id, str) else "", success, str(uuid.uuid4()),
            )
            body = encode_event(event)
        except (TypeError, ValueError) as exc:
            return Outcome(OutcomeKind.PERMANENT, reason=f"payload is not JSON: {exc}")
        except Exception as exc:
            return Outcome(OutcomeKind.PERMANENT, reason=f"payload unusable: {type(exc).__name__}")
        return self._transport.send(body, event_id)

    def close(self) -> None:
        """Close pooled connections."""
        self._transport.close()


def skipped_or_response(outcome: Outcome) -> dict[str, Any]:
    """An outcome as the app's client answered: the server's object, or a skip with a reason."""
    if outcome.delivered:
        return dict(outcome.response) if isinstance(outcome.response, Mapping) else {}
    if outcome.status is None:
        return {"skipped": True, "reason": outcome.reason or outcome.kind.value}
    reason = "endpoint_not_implemented" if outcome.status == 404 else f"http_{outcome.status}"
    answer: dict[str, Any] = {"skipped": True, "reason": reason, "status": outcome.status}
    if outcome.reason:
        answer["detail"] = outcome.reason
    return answer


__all__ = ["UsageClient", "skipped_or_response"]
