"""Bulk indexing of stored events and sessions into OpenSearch (the consumer's search sink).

The consumer indexes a batch's events once its SQL transaction has committed, and session
documents from the search outbox (:mod:`clickstream.outbox`); both only ever send committed rows,
before it commits the Kafka offsets, so every write here must be idempotent under redelivery:

* events are written with ``op_type=index`` and ``_id = event_id`` into the daily index of their
  ``occurred_at``: the stored copy of an event (the first one stored wins, as in PostgreSQL)
  always maps to the same index and id, so indexing it again replaces it with itself;
* sessions are replaced by ``_id = session_id`` through the sessions alias, and superseded ids
  are deleted (a ``404`` counts as done).

Failures are split three ways. ``429``, ``5xx``, connection errors and a ``cluster_block`` (a full
disk) are retried with exponential backoff, then raise :class:`~clickstream.errors.TransientError`
so the consumer pauses without committing offsets. A ``400`` on one document (mapping, parse
error) is returned as a :class:`Rejected` for the dead-letter topic. Anything else (bad
credentials, missing alias) raises :class:`~clickstream.errors.SinkError`: retrying cannot help.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date
from typing import Any, Final, Literal, NamedTuple

from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError
from opensearchpy.exceptions import SSLError, TransportError

from clickstream.errors import SinkError, TransientError
from clickstream.events import ClickEvent
from clickstream.search.documents import (
    DocumentError,
    click_event_json,
    dumps,
    event_document,
    session_document,
)
from clickstream.search.indices import events_index, sessions_alias, validate_prefix

__all__ = [
    "REJECTED_REASON",
    "Outcome",
    "Rejected",
    "SearchSink",
    "classify_item",
    "describe_error",
]

logger = logging.getLogger(__name__)

REJECTED_REASON: Final = "search_rejected"
"""Dead-letter reason code of documents OpenSearch (or the sink) refused."""

Outcome = Literal["done", "retry", "reject", "fatal"]
Operation = Literal["create", "index", "delete"]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A document that will never be accepted as it is; route its source to the dead letters.

    Attributes:
        doc_id: the ``event_id`` or ``session_id``.
        reason: the stable code :data:`REJECTED_REASON`.
        detail: what OpenSearch (or the sink) said, naming the field where it can.
    """

    doc_id: str
    reason: str
    detail: str


class _Action(NamedTuple):
    """One bulk action, already serialised: its NDJSON line(s), each ending in a newline."""

    op: Operation
    target: str
    doc_id: str
    lines: bytes


def _action(
    op: Operation,
    index: str,
    doc_id: str,
    source: str | None,
    *,
    require_alias: bool = False,
    version: int | None = None,
) -> _Action:
    # The same line as json.dumps({op: {"_index": ..., "_id": ..., ...}}), built directly:
    # this runs once per document.
    alias = ',"require_alias":true' if require_alias else ""
    if version is not None:
        alias += f',"version":{version},"version_type":"external_gte"'
    head = f'{{"{op}":{{"_index":{_quote(index)},"_id":{_quote(doc_id)}{alias}}}}}'
    text = f"{head}\n" if source is None else f"{head}\n{source}\n"
    return _Action(op, index, doc_id, text.encode())


_quote: Final[Callable[[str], str]] = json.encoder.encode_basestring
"""A JSON string literal, as json.dumps(..., ensure_ascii=False) writes it."""

# Only what the sink reads of a bulk response: a much smaller body to receive and parse.
_FILTER_PATH: Final = "errors,items.*.status,items.*.error"


def _error_type(error: Any) -> str:
    if isinstance(error, Mapping):
        return str(error.get("type", ""))
    return ""


def describe_error(error: Any) -> str:
    """One line from a bulk item's ``error`` object: type, reason and the innermost cause."""
    if not isinstance(error, Mapping):
        return str(error)
    parts = [f"{error.get('type', 'error')}: {error.get('reason', '')}".rstrip(": ")]
    cause = error.get("caused_by")
    while isinstance(cause, Mapping):
        parts.append(f"{cause.get('type', 'error')}: {cause.get('reason', '')}".rstrip(": "))
        cause = cause.get("caused_by")
    return " <- ".join(parts)


def classify_item(op: Operation, status: int, error: Any = None) -> Outcome:
    """What a bulk item result means for an idempotent writer.

    * 2xx, ``create`` answered 409 (already indexed), ``delete`` of a missing document (404
      without an error object), a versioned write answered 409 ``version_conflict_engine_
      exception`` (a newer version is there already): ``done``;
    * 429, 5xx and 403 ``cluster_block_exception`` (read-only index after a full disk): ``retry``;
    * other 400s (mapping or parse errors of this document): ``reject``;
    * everything else (401/403 security, 404 missing index or alias, ...): ``fatal``.
    """
    if 200 <= status < 300:
        return "done"
    if op == "create" and status == 409:
        return "done"
    if status == 409 and _error_type(error) == "version_conflict_engine_exception":
        return "done"  # a versioned write older than what the index holds: superseded
    if op == "delete" and status == 404 and error is None:
        return "done"  # a missing document; a missing index or alias comes with an error
    if status == 429 or status >= 500:
        return "retry"
    if status == 403 and _error_type(error) == "cluster_block_exception":
        return "retry"
    if status == 400:
        return "reject"
    return "fatal"


def _transient_request_error(exc: TransportError) -> bool:
    if isinstance(exc, SSLError):
        return False  # certificate problems are configuration, not load
    if isinstance(exc, OpenSearchConnectionError):
        return True
    status = exc.status_code
    return isinstance(status, int) and (status == 429 or status >= 500)


class SearchSink:
    """Writes stored events and sessions to OpenSearch with idempotent bulk requests.

    Args:
        client: from :func:`clickstream.search.client.make_client`.
        prefix: the index prefix given to :func:`clickstream.search.setup.ensure_search_setup`.
        chunk_size: documents per bulk request.
        max_chunk_bytes: upper bound of one bulk request body.
        max_attempts: tries per document before :class:`TransientError` (1 = no retry).
        initial_backoff: seconds before the second try; doubled for each further try.
        max_backoff: upper bound of one wait, in seconds.
        sleep: how to wait (tests pass a recorder).
    """

    def __init__(
        self,
        client: OpenSearch,
        prefix: str,
        *,
        chunk_size: int = 2000,
        max_chunk_bytes: int = 5 * 1024 * 1024,
        max_attempts: int = 6,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if chunk_size < 1 or max_chunk_bytes < 1 or max_attempts < 1:
            msg = "chunk_size, max_chunk_bytes and max_attempts must be positive"
            raise ValueError(msg)
        self._client = client
        self._prefix = validate_prefix(prefix)
        self._chunk_size = chunk_size
        self._max_chunk_bytes = max_chunk_bytes
        self._max_attempts = max_attempts
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._sleep = sleep

    def index_events(self, events: Sequence[Mapping[str, Any]]) -> list[Rejected]:
        """Index ``events`` (rows as stored in ``events``) into their daily indices.

        Idempotent: re-indexing a batch, in whole or in part, leaves one document per
        ``event_id``, which each write replaces. Pass only *committed* rows (the stored copy of
        an id, the first one stored): a copy that was never stored could replace the stored
        one, or land in another daily index if its ``occurred_at`` is on another day.

        Returns:
            The documents that were refused (a 400 from OpenSearch, or a row the sink cannot
            convert); all others are indexed (or were already) when this returns.

        Raises:
            TransientError: OpenSearch stayed unavailable or overloaded for all attempts.
            SinkError: an error retrying cannot fix (credentials, permissions, TLS, ...).
        """
        actions: list[_Action] = []
        rejected: list[Rejected] = []
        for row in events:
            try:
                event_id, occurred_at, document = event_document(row)
                source = dumps(document)
            except DocumentError as exc:
                rejected.append(_rejected_row(row, "event_id", exc))
                continue
            index = events_index(self._prefix, occurred_at)
            actions.append(_action("index", index, event_id, source))
        return self._index(actions, rejected)

    def index_click_events(self, events: Sequence[ClickEvent]) -> list[Rejected]:
        """:meth:`index_events` for validated events: the same documents, serialised faster.

        Pass the stored copies (the first copy of an ``event_id``), as for :meth:`index_events`.
        """
        actions = []
        indices: dict[date, str] = {}  # events_index() per UTC day, not per event
        for event in events:
            event_id, occurred_at, source = click_event_json(event)
            day = occurred_at.astimezone(UTC).date()
            index = indices.get(day)
            if index is None:
                index = indices[day] = events_index(self._prefix, occurred_at)
            actions.append(_action("index", index, event_id, source))
        return self._index(actions, [])

    def _index(self, actions: list[_Action], rejected: list[Rejected]) -> list[Rejected]:
        rejected.extend(self._execute(actions))
        logger.debug("indexed %d events, %d rejected", len(actions), len(rejected))
        return rejected

    def upsert_sessions(
        self,
        sessions: Sequence[Mapping[str, Any]],
        deleted_session_ids: Sequence[str],
        *,
        version: int | None = None,
    ) -> list[Rejected]:
        """Replace ``sessions`` by ``session_id`` and delete ``deleted_session_ids``.

        Each session document is replaced as a whole (rows are complete). An id that is both
        upserted and deleted is kept (upserted): the rows are the current state. Deleting an id
        that does not exist is fine. Idempotent under repetition.

        With ``version``, every write and delete carries it as an external version
        (``external_gte``): OpenSearch then ignores a write older than the one it holds, even
        one that lands late (a request the client gave up on, executed after a newer one), and
        a delete keeps its version for the index's ``gc_deletes`` time. Give each call a
        version at least as high as every earlier call's.

        Returns:
            The session documents OpenSearch refused (400), as :class:`Rejected`.

        Raises:
            TransientError: OpenSearch stayed unavailable or overloaded for all attempts.
            SinkError: an error retrying cannot fix (credentials, missing alias, ...).
        """
        rejected: list[Rejected] = []
        documents: dict[str, str] = {}
        for row in sessions:
            try:
                session_id, document = session_document(row)
                documents[session_id] = dumps(document)
            except DocumentError as exc:
                rejected.append(_rejected_row(row, "session_id", exc))
        return self._upsert(documents, deleted_session_ids, rejected, version)

    def upsert_session_documents(
        self,
        documents: Mapping[str, str | Mapping[str, Any]],
        deleted_session_ids: Sequence[str],
        *,
        version: int | None = None,
    ) -> list[Rejected]:
        """:meth:`upsert_sessions` for documents by ``session_id`` that may be serialised already.

        A ``str`` value is the document's JSON text (as :func:`~clickstream.search.documents.
        session_json_sql` renders it) and is sent as it is; a mapping is a ``sessions`` row
        and is converted like in :meth:`upsert_sessions`. Same guarantees and errors.
        """
        rejected: list[Rejected] = []
        sources: dict[str, str] = {}
        for session_id, document in documents.items():
            if isinstance(document, str):
                sources[session_id] = document
                continue
            try:
                sources[session_id] = dumps(session_document(document)[1])
            except DocumentError as exc:
                rejected.append(Rejected(session_id, REJECTED_REASON, str(exc)))
        return self._upsert(sources, deleted_session_ids, rejected, version)

    def _upsert(
        self,
        sources: Mapping[str, str],
        deleted_session_ids: Sequence[str],
        rejected: list[Rejected],
        version: int | None,
    ) -> list[Rejected]:
        alias = sessions_alias(self._prefix)
        upserts = [
            _action("index", alias, session_id, source, require_alias=True, version=version)
            for session_id, source in sources.items()
        ]
        deletes = [
            _action("delete", alias, session_id, None, require_alias=True, version=version)
            for session_id in dict.fromkeys(deleted_session_ids)
            if session_id not in sources
        ]
        rejected.extend(self._execute(deletes + upserts))
        logger.debug(
            "upserted %d sessions, deleted %d, %d rejected",
            len(upserts),
            len(deletes),
            len(rejected),
        )
        return rejected

    def _chunks(self, actions: Sequence[_Action]) -> Iterator[Sequence[_Action]]:
        """Consecutive runs of at most ``chunk_size`` actions and (unless one action is larger
        on its own) ``max_chunk_bytes`` bytes."""
        start, size = 0, 0
        for end, action in enumerate(actions):
            length = len(action.lines)
            if end > start and (
                end - start >= self._chunk_size or size + length > self._max_chunk_bytes
            ):
                yield actions[start:end]
                start, size = end, 0
            size += length
        if start < len(actions):
            yield actions[start:]

    def _bulk(self, actions: Sequence[_Action]) -> Iterator[dict[str, Any]]:
        """One result item per action, in order; one bulk request per chunk."""
        for chunk in self._chunks(actions):
            response = self._client.bulk(
                body=b"".join(action.lines for action in chunk), filter_path=_FILTER_PATH
            )
            items = response.get("items") or []
            if len(items) != len(chunk):
                return  # cannot tell which item is whose: the caller retries the rest
            if not response.get("errors"):
                # Every item succeeded (no item has an error, and delete's 404 "not_found"
                # carries none either): classify them without looking.
                yield from (_DONE for _ in chunk)
                continue
            for item in items:
                yield next(iter(item.values()))

    def _execute(self, actions: Sequence[_Action]) -> list[Rejected]:
        """Run ``actions``, retrying what may succeed later; return the refused documents."""
        pending = list(actions)
        rejected: list[Rejected] = []
        last_problem = ""
        for attempt in range(1, self._max_attempts + 1):
            if not pending:
                return rejected
            if attempt > 1:
                delay = min(self._max_backoff, self._initial_backoff * 2 ** (attempt - 2))
                logger.warning(
                    "OpenSearch bulk: retrying %d actions in %.1fs (attempt %d of %d): %s",
                    len(pending),
                    delay,
                    attempt,
                    self._max_attempts,
                    last_problem,
                )
                self._sleep(delay)
            retry: list[_Action] = []
            processed = 0
            try:
                for action, item in zip(pending, self._bulk(pending), strict=False):
                    processed += 1
                    if item is _DONE:
                        continue
                    status = int(item.get("status", 500))
                    error = item.get("error")
                    outcome = classify_item(action.op, status, error)
                    if status == 409 and action.op != "create":
                        # Versions only grow, and a late request's answer is never read: a
                        # conflict here means someone else wrote this id with a higher one.
                        logger.warning(
                            "OpenSearch holds a newer version of %s than this write's; left "
                            "as it is (%s)",
                            action.doc_id,
                            describe_error(error),
                        )
                    if outcome == "retry":
                        retry.append(action)
                        last_problem = f"{status} {describe_error(error)}"
                    elif outcome == "reject":
                        rejected.append(
                            Rejected(action.doc_id, REJECTED_REASON, describe_error(error))
                        )
                    elif outcome == "fatal":
                        msg = (
                            f"OpenSearch refused {action.op} of {action.doc_id!r} in "
                            f"{action.target!r} with {status}: {describe_error(error)}"
                        )
                        raise SinkError(msg)
            except TransportError as exc:
                if not _transient_request_error(exc):
                    msg = f"OpenSearch bulk request failed: {exc}"
                    raise SinkError(msg) from exc
                # The unanswered actions are sent again: every action is idempotent, so one
                # that reached OpenSearch before the connection broke does no harm.
                retry.extend(pending[processed:])
                last_problem = str(exc)
            else:
                # Never drop an action silently, even if a response had fewer items.
                retry.extend(pending[processed:])
            pending = retry
        if not pending:
            return rejected
        msg = (
            f"OpenSearch did not accept {len(pending)} actions after {self._max_attempts} "
            f"attempts: {last_problem}"
        )
        raise TransientError(msg)


_DONE: Final[dict[str, Any]] = {"status": 200}
"""The result item of an action in a bulk response without errors."""


def _rejected_row(row: Mapping[str, Any], id_field: str, exc: DocumentError) -> Rejected:
    return Rejected(str(row.get(id_field) or ""), REJECTED_REASON, str(exc))
