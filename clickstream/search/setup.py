"""Apply the index templates, the sessions index and alias, and the lifecycle policy.

:func:`ensure_search_setup` is idempotent: the ``setup`` command runs it, and the consumer runs it
at start with the same arguments, so both converge on the same state.
"""

from __future__ import annotations

import logging
from typing import Any

from opensearchpy import OpenSearch
from opensearchpy.exceptions import (
    AuthenticationException,
    AuthorizationException,
    RequestError,
    TransportError,
)

from clickstream.errors import SinkError
from clickstream.search.client import translate_error
from clickstream.search.indices import (
    DEFAULT_RETENTION_DAYS,
    DocumentKind,
    index_template,
    sessions_alias,
    sessions_gc_deletes,
    sessions_index,
    template_name,
    validate_prefix,
)
from clickstream.search.lifecycle import apply_ism_policy

__all__ = ["ensure_search_setup"]

logger = logging.getLogger(__name__)

_KINDS: tuple[DocumentKind, ...] = ("events", "sessions")


def ensure_search_setup(
    client: OpenSearch,
    *,
    prefix: str,
    shards: int = 1,
    replicas: int = 0,
    retention_days: int = DEFAULT_RETENTION_DAYS,
) -> None:
    """Make OpenSearch ready for the sink; safe to call any number of times, concurrently too.

    * puts the composable index templates ``<prefix>-events`` and ``<prefix>-sessions`` unless
      identical ones exist (``shards``/``replicas`` apply to indices created from now on);
    * creates the sessions index ``<prefix>-sessions-v1`` with its write alias
      ``<prefix>-sessions`` unless the alias exists;
    * creates or updates the ISM policy that deletes daily event indices ``retention_days``
      after their creation, or logs a warning and skips it when the node has no ISM plugin.

    Raises:
        ConfigError: invalid arguments, bad credentials or missing permissions.
        TransientError: OpenSearch is unreachable or overloaded; retry later.
        SinkError: OpenSearch refused the setup for another reason (the message says why).
    """
    validate_prefix(prefix)
    try:
        for kind in _KINDS:
            body = index_template(kind, prefix=prefix, shards=shards, replicas=replicas)
            _ensure_template(client, template_name(prefix, kind), body)
        _ensure_sessions_index(client, prefix=prefix)
        status = apply_ism_policy(client, prefix=prefix, retention_days=retention_days)
    except TransportError as exc:
        raise translate_error(exc, "OpenSearch setup") from exc

    if status == "unavailable":
        logger.warning(
            "this OpenSearch node has no Index State Management plugin (_plugins/_ism): "
            "skipped the lifecycle policy, so old event indices %s-events-* are NOT deleted "
            "automatically (Aiven for OpenSearch has ISM)",
            prefix,
        )
    elif status == "forbidden":
        logger.warning(
            "this OpenSearch user may not manage ISM policies: skipped the lifecycle policy of "
            "%s-events-*; run `python -m clickstream.search setup` once with an admin URL",
            prefix,
        )
    else:
        logger.info("ISM policy %s-events (retention %d days): %s", prefix, retention_days, status)
    logger.info(
        "OpenSearch ready: templates %s-events and %s-sessions, alias %s",
        prefix,
        prefix,
        sessions_alias(prefix),
    )


def _ensure_template(client: OpenSearch, name: str, body: dict[str, Any]) -> None:
    """Put the template unless the stored one carries the same fingerprint.

    Skipping an unchanged template keeps repeated setups (every consumer start) read-only.
    """
    try:
        found: dict[str, Any] = client.indices.get_index_template(name=name, ignore=404)
    except (AuthenticationException, AuthorizationException):
        found = {}  # may not read templates; try to write it below
    for template in found.get("index_templates", []):
        stored = template.get("index_template", {}).get("_meta", {}).get("fingerprint")
        if template.get("name") == name and stored == body["_meta"]["fingerprint"]:
            logger.debug("index template %s is up to date", name)
            return
    client.indices.put_index_template(name=name, body=body)
    logger.info("put index template %s", name)


def _ensure_gc_deletes(client: OpenSearch, alias: str) -> None:
    """Give a sessions index made before the template set it the template's ``gc_deletes``.

    Session deletes carry a version, which OpenSearch keeps that long to refuse an older,
    late write (see :mod:`clickstream.outbox`). Read first: an index that has it is left alone.
    """
    wanted = sessions_gc_deletes()
    found = client.indices.get_settings(index=alias, name="index.gc_deletes")
    for index, body in found.items():
        if body.get("settings", {}).get("index", {}).get("gc_deletes") != wanted:
            client.indices.put_settings(index=index, body={"index": {"gc_deletes": wanted}})
            logger.info("set gc_deletes of %s to %s", index, wanted)


def _ensure_sessions_index(client: OpenSearch, *, prefix: str) -> None:
    alias = sessions_alias(prefix)
    # Scoped to the prefix's indices (/<prefix>*/_alias/<alias>): an index-level request,
    # which an index ACL grants; the bare /_alias/<alias> is a top-level API on Aiven.
    if client.indices.exists_alias(index=f"{prefix}*", name=alias):
        _ensure_gc_deletes(client, alias)
        return
    if client.indices.exists(index=alias):
        msg = (
            f"{alias!r} is a concrete index, not an alias (something wrote to it before setup); "
            "reindex or delete it, then run setup again"
        )
        raise SinkError(msg)
    index = sessions_index(prefix)
    try:
        client.indices.create(index=index, body={"aliases": {alias: {"is_write_index": True}}})
        logger.info("created sessions index %s with write alias %s", index, alias)
    except RequestError as exc:
        if exc.error != "resource_already_exists_exception":
            raise
        # Created concurrently, or the alias was removed by hand: (re)attach it.
        client.indices.put_alias(index=index, name=alias, body={"is_write_index": True})
