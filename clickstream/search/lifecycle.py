"""Retention: the Index State Management policy of event indices, and pruning old sessions.

Event indices (one per UTC day) are deleted whole by an ISM policy. ISM is an OpenSearch plugin:
Aiven for OpenSearch ships it, a bare local node does not, so :func:`apply_ism_policy` reports
``"unavailable"`` there instead of failing. Sessions live in one index, where retention means
deleting documents: :func:`prune_sessions` does that with a scroll and bulk deletes, which
need no plugin.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Final, Literal

from opensearchpy import OpenSearch
from opensearchpy.exceptions import (
    AuthenticationException,
    AuthorizationException,
    ConflictError,
    NotFoundError,
    TransportError,
)
from opensearchpy.helpers import streaming_bulk

from clickstream.errors import SinkError
from clickstream.search.client import translate_error
from clickstream.search.documents import json_value
from clickstream.search.indices import (
    DEFAULT_RETENTION_DAYS,
    events_index_pattern,
    fingerprint,
    ism_policy,
    ism_policy_id,
    sessions_alias,
    validate_prefix,
)

__all__ = ["IsmStatus", "apply_ism_policy", "policy_with_fingerprint", "prune_sessions"]

logger = logging.getLogger(__name__)

IsmStatus = Literal["created", "updated", "unchanged", "unavailable", "forbidden"]

_ISM_BASE = "/_plugins/_ism"


def policy_with_fingerprint(policy: dict[str, Any]) -> dict[str, Any]:
    """``policy`` with a fingerprint of its content appended to its description.

    The server adds defaults (retry settings, timestamps) to stored policies, so comparing
    documents is unreliable; comparing the fingerprint in the description is exact.
    """
    body = policy["policy"]
    digest = fingerprint({key: value for key, value in body.items() if key != "description"})
    return {"policy": {**body, "description": f"{body['description']} [rev {digest}]"}}


def apply_ism_policy(
    client: OpenSearch, *, prefix: str, retention_days: int = DEFAULT_RETENTION_DAYS
) -> IsmStatus:
    """Create or update the event indices' ISM policy; idempotent.

    A new policy also gets attached to event indices created before it existed; an updated
    policy is rolled out to the indices it already manages (ISM switches them at their next
    state transition). New daily indices pick the policy up by its ``ism_template``.

    Returns:
        What happened; ``"unavailable"`` when the node has no ISM plugin, ``"forbidden"`` when
        the user may not manage ISM policies (for example an Aiven user limited by index ACLs).

    Raises:
        SinkError: the node answered the policy lookup in an unexpected way.
        opensearchpy.exceptions.TransportError: any other failure (callers translate it).
    """
    validate_prefix(prefix)
    try:
        return _apply_ism_policy(client, prefix=prefix, retention_days=retention_days)
    except (AuthenticationException, AuthorizationException) as exc:
        logger.debug("ISM refused: %s", exc)
        return "forbidden"


def _apply_ism_policy(client: OpenSearch, *, prefix: str, retention_days: int) -> IsmStatus:
    policy_id = ism_policy_id(prefix)
    desired = policy_with_fingerprint(ism_policy(prefix=prefix, retention_days=retention_days))
    path = f"{_ISM_BASE}/policies/{policy_id}"
    # 400/404 are answers here, not failures (and so not logged as such by the client).
    answer: dict[str, Any] = client.transport.perform_request(
        "GET", path, params={"ignore": [400, 404]}
    )
    current: dict[str, Any] | None = answer
    if "policy" not in answer:
        error = answer.get("error")
        if "no handler found" in str(error).lower():
            return "unavailable"  # the node has no ISM plugin
        if answer.get("status") != 404:
            msg = f"unexpected answer to GET {path}: {answer}"
            raise SinkError(msg)
        current = None

    pattern = events_index_pattern(prefix)
    if current is None:
        try:
            client.transport.perform_request("PUT", path, body=desired)
        except ConflictError:
            return "unchanged"  # created concurrently by another process running setup
        _attach(client, "add", pattern, policy_id)
        return "created"
    if current.get("policy", {}).get("description") == desired["policy"]["description"]:
        return "unchanged"
    try:
        client.transport.perform_request(
            "PUT",
            path,
            body=desired,
            params={"if_seq_no": current["_seq_no"], "if_primary_term": current["_primary_term"]},
        )
    except ConflictError:
        return "unchanged"  # updated concurrently; the next setup compares again
    _attach(client, "change_policy", pattern, policy_id)
    return "updated"


def _attach(client: OpenSearch, api: str, pattern: str, policy_id: str) -> None:
    """Attach (``add``) or switch (``change_policy``) existing indices to the policy."""
    try:
        response = client.transport.perform_request(
            "POST", f"{_ISM_BASE}/{api}/{pattern}", body={"policy_id": policy_id}
        )
    except NotFoundError:
        return  # no event index yet
    failed = response.get("failed_indices", []) if isinstance(response, dict) else []
    for failure in failed:
        logger.info(
            "ISM %s %s: %s", api, failure.get("index_name", "?"), failure.get("reason", "?")
        )


_PRUNE_PAGE: Final = 1000
"""Sessions read per search while pruning."""


def prune_sessions(client: OpenSearch, *, prefix: str, older_than: datetime) -> int:
    """Delete session documents whose ``ended_at`` is before ``older_than``; return how many.

    A session rewritten by the consumer while this runs is left alone (the delete is
    conditional on the sequence number seen by the search) and re-examined next time.
    Pages through the sessions alias with ``search_after`` (an index-level request, which the
    consumer's OpenSearch user may make under Aiven's index ACLs; a scroll would be a
    top-level API) and deletes through ``_bulk``.

    Raises:
        ValueError: ``older_than`` is naive.
        TransientError: OpenSearch is unavailable (rerun later; deletes done so far stay done).
        SinkError, ConfigError: OpenSearch refused the search or the deletes.
    """
    validate_prefix(prefix)
    if older_than.tzinfo is None or older_than.utcoffset() is None:
        msg = "older_than must be timezone-aware"
        raise ValueError(msg)
    cutoff = json_value(older_than, field="older_than")
    alias = sessions_alias(prefix)

    def deletes() -> Iterator[dict[str, Any]]:
        after: list[Any] | None = None
        while True:
            body: dict[str, Any] = {
                "query": {"range": {"ended_at": {"lt": cutoff}}},
                "sort": [{"ended_at": "asc"}, {"session_id": "asc"}],
                "size": _PRUNE_PAGE,
                "_source": False,
                "seq_no_primary_term": True,
                "track_total_hits": False,
            }
            if after is not None:
                body["search_after"] = after
            hits = client.search(index=alias, body=body)["hits"]["hits"]
            for hit in hits:
                yield {
                    "_op_type": "delete",
                    "_index": hit["_index"],
                    "_id": hit["_id"],
                    "if_seq_no": hit["_seq_no"],
                    "if_primary_term": hit["_primary_term"],
                }
            if len(hits) < _PRUNE_PAGE:
                return
            after = hits[-1]["sort"]

    deleted = 0
    try:
        for ok, result in streaming_bulk(
            client, deletes(), chunk_size=1000, raise_on_error=False, yield_ok=True
        ):
            item = result.get("delete", {})
            if ok and item.get("result") == "deleted":
                deleted += 1
            elif not ok and item.get("status") not in {404, 409}:
                logger.warning(
                    "could not delete session %s: %s", item.get("_id"), item.get("error")
                )
    except TransportError as exc:
        raise translate_error(exc, f"pruning sessions (after {deleted} deleted)") from exc
    return deleted
