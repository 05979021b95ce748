"""One batch from raw Kafka messages to committed sinks: decode, validate, store, index.

The order of effects makes redelivery harmless (exactly-once *effect*):

1. decode and validate every message; invalid ones become :class:`DeadLetter` s;
2. open a SQL transaction; write events, ``traffic_minute`` and sessions (idempotent), queue
   the ids of changed sessions in the search outbox (:mod:`clickstream.outbox`) and, with
   OpenSearch on, read the stored copies of the batch's duplicates;
3. send the dead letters and wait for Kafka's ack;
4. commit the SQL transaction;
5. index into OpenSearch the *new* events and the stored copies of the duplicates
   (``_id`` = ``event_id``, replacing a document of that id), and dead-letter the documents
   OpenSearch rejects;
6. the caller commits the Kafka offsets;
7. every few seconds (and when idle) the caller drains the outbox, in a thread of its own
   beside the loop: each queued session's document is made equal to its committed row, the
   latest state once per interval.

Only committed rows ever reach OpenSearch, so a document always equals its row: a failed
attempt (a crash, a lost connection, a deadlock) indexed nothing, even when another copy of
the same ``event_id`` from another partition is stored instead of the one it tried. A
failure before 4 rolls everything back in SQL and the batch is retried. A failure in 5
(OpenSearch unavailable) or a crash between 4 and 6 redelivers the batch: SQL reports its
events as duplicates and changes nothing, and step 5 indexes their stored copies. A failed
drain leaves the ids queued for the next one. Dead letters are delivered at least once; their
``source_*`` headers identify them uniquely.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from clickstream import outbox
from clickstream.errors import InvalidEvent, TransientError
from clickstream.events import ClickEvent, Reason, decode_event
from clickstream.store import (
    BatchOutcome,
    PositionedEvent,
    SessionRules,
    stored_events,
    write_batch,
)

__all__ = [
    "BatchProcessor",
    "BatchReport",
    "DeadLetter",
    "DeadLetterSink",
    "IncomingMessage",
    "Rejection",
    "SearchIndex",
    "StoredBatch",
]

_log = logging.getLogger(__name__)

_MAX_OWED = 1_000_000


class IncomingMessage(Protocol):
    """The part of ``confluent_kafka.Message`` a batch needs."""

    def value(self) -> bytes | None: ...
    def key(self) -> bytes | None: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An invalid message, kept with its original bytes, key, reason and origin."""

    key: bytes | None
    value: bytes | None
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    extra_headers: tuple[tuple[str, bytes], ...] = ()

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers: ``reason``, ``detail``, the ``source_*`` position, then any extra."""
        return [
            ("reason", self.reason.encode()),
            ("detail", self.detail.encode()),
            ("source_topic", self.source_topic.encode()),
            ("source_partition", str(self.source_partition).encode()),
            ("source_offset", str(self.source_offset).encode()),
            *self.extra_headers,
        ]


class Rejection(Protocol):
    """A document that OpenSearch refused for a reason retrying cannot fix."""

    @property
    def doc_id(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def detail(self) -> str: ...


class SearchIndex(Protocol):
    """The OpenSearch sink as the pipeline sees it (idempotent by document id)."""

    def index_click_events(self, events: Sequence[ClickEvent]) -> Sequence[Rejection]: ...

    def index_events(self, events: Sequence[Mapping[str, Any]]) -> Sequence[Rejection]: ...

    def upsert_session_documents(
        self,
        documents: Mapping[str, outbox.Document],
        deleted_session_ids: Sequence[str],
        *,
        version: int,
    ) -> Sequence[Rejection]: ...


class DeadLetterSink(Protocol):
    """Where dead letters go; ``send`` returns once Kafka acknowledged all of them."""

    def send(self, letters: Sequence[DeadLetter]) -> None: ...


@dataclass(slots=True)
class BatchReport:
    """Counts of one batch, for progress output and the final summary."""

    consumed: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    """Invalid or refused by PostgreSQL: not stored (consumed = stored + duplicates + this)."""
    search_rejected: int = 0
    """Stored, then refused by OpenSearch: dead-lettered too (``search_rejected``), to replay."""
    sessions_written: int = 0
    sessions_deleted: int = 0
    slow_path_users: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: BatchReport) -> None:
        """Accumulate another report into this one."""
        self.consumed += other.consumed
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.search_rejected += other.search_rejected
        self.sessions_written += other.sessions_written
        self.sessions_deleted += other.sessions_deleted
        self.slow_path_users += other.slow_path_users
        for reason, count in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + count


def _position(message: IncomingMessage) -> tuple[str, int, int]:
    return message.topic() or "", message.partition() or 0, message.offset() or 0


def _dead_letter(message: IncomingMessage, reason: str, detail: str) -> DeadLetter:
    return DeadLetter(
        key=message.key(),
        value=message.value(),
        reason=reason,
        detail=detail,
        source_topic=message.topic() or "",
        source_partition=message.partition() or 0,
        source_offset=message.offset() or 0,
    )


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A batch committed in SQL (steps 1-4), with what indexing and counting it needs."""

    consumed: int
    outcome: BatchOutcome
    copies: list[dict[str, Any]]
    """The stored copies of the batch's duplicates (with OpenSearch on), to index again."""
    letters: list[DeadLetter]
    """Dead letters already sent: invalid messages, events the database refused."""
    sources: dict[str, IncomingMessage]
    """The first message of each valid ``event_id`` of the batch."""


@dataclass(frozen=True, slots=True)
class BatchProcessor:
    """Everything one batch needs: the SQL engine, the session rules and the other sinks."""

    engine: Engine
    rules: SessionRules
    clock: Callable[[], datetime]
    future_tolerance: timedelta
    dead_letters: DeadLetterSink
    search: SearchIndex | None = None
    _owed: set[tuple[str, int, int]] = field(
        default_factory=set, init=False, repr=False, compare=False
    )
    """Where (topic, partition, offset) the events are that a batch stored and that then
    failed in step 5: when this process reads those messages again and finds them stored,
    the report counts them as stored (once), as if the first attempt had succeeded. Only
    counts depend on it: a partition that moved to another consumer meanwhile is counted
    there as duplicates. It is emptied if it ever grows past a bound."""

    def process(self, messages: Sequence[IncomingMessage]) -> BatchReport:
        """Process one batch to the point where its offsets may be committed.

        The same as :meth:`store`, then :meth:`index` and :meth:`complete`. (The consumer
        runs :meth:`index` of one batch in a thread while it stores the next.)

        Raises:
            TransientError: a sink is unavailable; the offsets must not be committed and the
                whole batch should be retried later (events stored before OpenSearch failed
                are then duplicates, whose stored copies the retry indexes).
        """
        stored = self.store(messages)
        return self.complete(stored, lambda: self.index(stored))

    def store(self, messages: Sequence[IncomingMessage]) -> StoredBatch:
        """Steps 1-4: validate, write and commit the batch in SQL, send its dead letters.

        Raises:
            TransientError: the database or the dead-letter topic is unavailable; the batch
                should be retried. Nothing was committed, except after the database refused
                the batch and it went on event by event: the events committed by then are
                duplicates in the retry.
        """
        now = self.clock()
        valid: list[PositionedEvent] = []
        letters: list[DeadLetter] = []
        sources: dict[str, IncomingMessage] = {}
        for message in messages:
            try:
                event = decode_event(
                    message.value(), now=now, future_tolerance=self.future_tolerance
                )
            except InvalidEvent as exc:
                letters.append(_dead_letter(message, exc.reason, exc.detail))
                continue
            sources.setdefault(event.event_id, message)
            valid.append(PositionedEvent(event, message.partition() or 0, message.offset() or 0))
        try:
            outcome, copies = self._commit(valid, letters)
        except DBAPIError as exc:
            # A value the database refuses although it passed validation: isolate the culprits.
            _log.warning("the database refused a batch (%s); storing events one by one", exc.orig)
            outcome, copies = self._commit_one_by_one(valid, letters, sources)
        return StoredBatch(len(messages), outcome, copies, letters, sources)

    def index(self, stored: StoredBatch) -> list[DeadLetter]:
        """Step 5: index the batch's committed events; return dead letters of the refused ones.

        Indexes the new events and the stored copies of the duplicates. The letters are for
        the caller to send. Uses only the search sink, so it may run in another thread.

        Raises:
            TransientError: OpenSearch is unavailable; the batch must be retried.
        """
        search = self.search
        new_events, copies = stored.outcome.new_events, stored.copies
        if search is None or not (new_events or copies):
            return []
        rejected = [*search.index_click_events(new_events)]
        if copies:
            rejected += search.index_events(copies)
        return _rejected_events(rejected, stored.sources)

    def complete(self, stored: StoredBatch, indexed: Callable[[], list[DeadLetter]]) -> BatchReport:
        """The end of step 5: send what OpenSearch refused, and count the batch.

        ``indexed()`` gives the letters of :meth:`index` (or waits for them, when it ran in
        another thread). If it or the dead-letter topic fails, the batch is owed (see
        :meth:`owe`) and the error is raised: its offsets must not be committed.
        """
        try:
            refused = indexed()
            if refused:
                self.dead_letters.send(refused)
        except BaseException:
            self.owe(stored)
            raise
        return self._report(stored, refused)

    def _report(self, stored: StoredBatch, refused: Sequence[DeadLetter]) -> BatchReport:
        """The counts of a batch whose offsets are about to be committed."""
        outcome = stored.outcome
        new, duplicates = len(outcome.new_events), outcome.duplicates
        if self._owed and duplicates:
            again = self._owed.intersection(map(_position, stored.sources.values()))
            self._owed.difference_update(again)
            new, duplicates = new + len(again), duplicates - len(again)
        report = BatchReport(
            consumed=stored.consumed,
            stored=new,
            duplicates=duplicates,
            dead_lettered=len(stored.letters),
            search_rejected=len(refused),
            sessions_written=len(outcome.sessions.upserted),
            sessions_deleted=len(outcome.sessions.deleted),
            slow_path_users=outcome.slow_path_users,
        )
        for letter in stored.letters:
            report.reasons[letter.reason] = report.reasons.get(letter.reason, 0) + 1
        return report

    def owe(self, stored: StoredBatch) -> None:
        """Note a batch committed in SQL whose offsets will not be committed (it is retried)."""
        self._owe(stored.outcome.new_events, stored.sources)

    def _owe(self, events: Sequence[ClickEvent], sources: Mapping[str, IncomingMessage]) -> None:
        positions = [_position(sources[event.event_id]) for event in events]
        if len(self._owed) + len(positions) > _MAX_OWED:
            self._owed.clear()  # partitions moved away: their retries happen elsewhere
        self._owed.update(positions)

    def _commit(
        self, valid: Sequence[PositionedEvent], letters: Sequence[DeadLetter]
    ) -> tuple[BatchOutcome, list[dict[str, Any]]]:
        copies: list[dict[str, Any]] = []
        try:
            with self.engine.begin() as conn:
                outcome = write_batch(conn, events=valid, rules=self.rules)
                if self.search is not None:
                    outbox.enqueue(conn, [*outcome.sessions.upserted, *outcome.sessions.deleted])
                    if outcome.duplicates:
                        new = {event.event_id for event in outcome.new_events}
                        copies = stored_events(
                            conn, (i.event.event_id for i in valid if i.event.event_id not in new)
                        )
                if letters:
                    self.dead_letters.send(letters)
        except DBAPIError as exc:
            if _is_unavailable(exc):
                msg = f"the database is unavailable: {exc.orig}"
                raise TransientError(msg) from exc
            raise
        return outcome, copies

    def _commit_one_by_one(
        self,
        valid: Sequence[PositionedEvent],
        letters: list[DeadLetter],
        sources: Mapping[str, IncomingMessage],
    ) -> tuple[BatchOutcome, list[dict[str, Any]]]:
        total = BatchOutcome()
        copies: list[dict[str, Any]] = []
        try:
            for item in valid:
                try:
                    outcome, more = self._commit([item], ())
                except DBAPIError as exc:
                    source = sources[item.event.event_id]
                    detail = f"database: {exc.orig}"
                    letters.append(_dead_letter(source, Reason.REJECTED_BY_SINK, detail))
                    continue
                total.add(outcome)
                copies.extend(more)
            if letters:
                self.dead_letters.send(letters)
        except BaseException:
            self._owe(total.new_events, sources)  # committed one by one before the failure
            raise
        return total, copies

    def sync_search(self, *, wait: bool = False) -> int:
        """Bring OpenSearch's session documents in line with committed SQL state.

        The consumer calls it every few seconds and when idle; the outbox is durable, so
        whatever one consumer leaves queued (a crash, an outage) any consumer drains later.
        With ``wait``, a drain another process is running is waited for, so everything
        committed before the call is in OpenSearch on return (before exiting, say).

        Raises:
            TransientError: OpenSearch or the database is unavailable; call again later.
        """
        if self.search is None:
            return 0
        try:
            return outbox.drain(
                self.engine,
                self.search.upsert_session_documents,
                on_rejected=self._dead_letter_sessions,
                wait=wait,
            )
        except DBAPIError as exc:
            if _is_unavailable(exc):
                msg = f"the database is unavailable: {exc.orig}"
                raise TransientError(msg) from exc
            raise

    def _dead_letter_sessions(
        self, rejected: Sequence[Rejection], documents: Mapping[str, outbox.Document]
    ) -> None:
        letters = []
        for rejection in rejected:
            document = documents.get(rejection.doc_id, {"session_id": rejection.doc_id})
            if isinstance(document, str):  # the JSON text PostgreSQL rendered
                value = document.encode()
                user = _user_of(document)
            else:
                value = json.dumps(document, default=str).encode()
                user = document.get("user_id")
            letters.append(
                DeadLetter(
                    key=str(user).encode() if user else None,
                    value=value,
                    reason=rejection.reason,
                    detail=f"opensearch rejected session document: {rejection.detail}",
                    source_topic="sessions",
                    source_partition=-1,
                    source_offset=-1,
                )
            )
        self.dead_letters.send(letters)


def _user_of(document: str) -> Any:
    try:
        parsed = json.loads(document)
    except ValueError:
        return None
    return parsed.get("user_id") if isinstance(parsed, dict) else None


def _is_unavailable(exc: DBAPIError) -> bool:
    return isinstance(exc, (OperationalError, InterfaceError)) or exc.connection_invalidated


def _rejected_events(
    rejections: Sequence[Rejection], sources: Mapping[str, IncomingMessage]
) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    for rejection in rejections:
        source = sources.get(rejection.doc_id)
        if source is not None:
            letters.append(
                _dead_letter(source, rejection.reason, f"opensearch: {rejection.detail}")
            )
    return letters
