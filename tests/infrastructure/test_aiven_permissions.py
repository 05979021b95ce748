"""What Aiven and PostgreSQL would refuse, checked before anything is created.

Each test states, from Aiven's or PostgreSQL's documentation, what the service would do with
the program's resources (who may call which API, which names it refuses) and checks the
program against it under Pulumi's mocks; the expectations are written by hand.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import pytest

from clickstream.errors import ConfigError
from infrastructure.config import InfraConfig
from infrastructure.stack import build_stack

OS_ACL_CONFIG = "aiven:index/openSearchAclConfig:OpenSearchAclConfig"
OS_ACL_RULE = "aiven:index/openSearchAclRule:OpenSearchAclRule"
NATIVE_ACL = "aiven:index/kafkaNativeAcl:KafkaNativeAcl"

PROJECT = {"aiven_project": "acme-analytics", "service_prefix": "clickstream-dev"}


# --- configuration the program accepts or refuses wrongly --------------------------------------


def test_the_hobbyist_plan_the_docs_suggest_is_accepted():
    # docs/deploy-aiven.md suggests Aiven's hobbyist plans for a trial; the plan's name is
    # "hobbyist" (no dash), e.g. `aiven_pg { plan = "hobbyist" }` in Aiven's own examples.
    cfg = InfraConfig(**PROJECT, pg_plan="hobbyist", opensearch_plan="hobbyist")
    assert (cfg.pg_plan, cfg.opensearch_plan) == ("hobbyist", "hobbyist")


@pytest.mark.parametrize(
    ("key", "name"),
    [
        # PostgreSQL: 'role name "pg_reader" is reserved' (names starting with pg_).
        ("pg_reader_user", "pg_reader"),
        ("pg_app_user", "pg_app"),
        # PUBLIC is a reserved role name.
        ("pg_owner_user", "public"),
    ],
)
def test_postgresql_reserved_role_names_are_refused_before_anything_is_created(key, name):
    with pytest.raises(ConfigError):
        InfraConfig(**PROJECT, **{key: name})


def test_an_index_prefix_the_library_refuses_is_refused_by_the_program_too():
    # clickstream.search.indices.validate_prefix takes at most 100 characters; the consumer
    # refuses a longer prefix at start, after `pulumi up` has made ACLs and outputs for it.
    with pytest.raises(ConfigError):
        InfraConfig(**PROJECT, index_prefix="a" * 150)


# --- OpenSearch: what the service user can reach under Aiven's ACL rules -------------------------

# Aiven for OpenSearch ACLs (Aiven docs, "Understanding access control in Aiven for OpenSearch"):
# a path whose first segment starts with "_" is a top-level API, granted only by a rule whose
# pattern starts with "_" (index rules never grant it); these are governed by Aiven itself:
_SERVICE_CONTROLLED = {"_cluster", "_cat", "_tasks", "_scripts", "_snapshot", "_nodes"}
# with extended ACLs, these are checked against the indices named in the request instead:
_EXTENDED = {"_bulk", "_mget", "_msearch"}
_RANK = {"deny": 0, "read": 1, "write": 1, "readwrite": 2, "admin": 3}


def _aiven_allows(rules: list[dict[str, Any]], *, extended: bool, path: str, index: str) -> bool:
    """Aiven's decision for one request (``index``: what a _bulk line targets), ``admin`` needed.

    The requests below all need ``admin`` (templates, aliases, index creation) except _bulk,
    for which ``readwrite`` suffices; both are modelled by requiring the rank of readwrite.
    """
    first = path.strip("/").split("/")[0]
    if first in _SERVICE_CONTROLLED:
        return True
    target = index if (extended and first in _EXTENDED) else first
    matching = [r for r in rules if fnmatchcase(target, r["index"])]
    if not matching or any(r["permission"] == "deny" for r in matching):
        return False
    return max(_RANK[r["permission"]] for r in matching) >= _RANK["readwrite"]


def test_the_search_user_may_call_every_api_the_consumer_calls_at_start(run_program):
    deployed = run_program(lambda: build_stack(InfraConfig(**PROJECT)))
    (acl_config,) = [c.inputs for c in deployed.mocks.of_type(OS_ACL_CONFIG)]
    rules = [
        r.inputs
        for r in deployed.mocks.of_type(OS_ACL_RULE)
        if r.inputs["username"] == "clickstream-search"
    ]
    # What clickstream.search.setup.ensure_search_setup and the sink send for prefix
    # "clickstream" (opensearch-py paths, listed by hand); the ISM policy is left out because
    # setup already tolerates a refusal there.
    requests = [
        ("GET /_index_template/clickstream-events", ""),
        ("PUT /_index_template/clickstream-events", ""),
        ("PUT /_index_template/clickstream-sessions", ""),
        ("HEAD /clickstream*/_alias/clickstream-sessions", ""),
        ("HEAD /clickstream-sessions", ""),
        ("PUT /clickstream-sessions-v1", ""),
        ("POST /_bulk", "clickstream-events-2026.11.30"),
        ("POST /_bulk", "clickstream-sessions"),
        # prune-sessions: search_after pages on the alias, deletes through _bulk.
        ("POST /clickstream-sessions/_search", ""),
        # OpenSearch Dashboards, logged in as this user (docs/deploy-aiven.md step 5).
        ("POST /_msearch", "clickstream-events"),
    ]
    # A request the user may not make, to show the model refuses what it should.
    assert not _aiven_allows(
        rules, extended=acl_config["extendedAcl"], path="/_search/scroll", index=""
    )
    refused = [
        request
        for request, index in requests
        if not _aiven_allows(
            rules,
            extended=acl_config["extendedAcl"],
            path=request.split(" ", 1)[1],
            index=index,
        )
    ]
    assert refused == []


# --- Kafka: the dead letters can be read by someone -------------------------------------------


def test_some_kafka_user_may_read_the_dead_letter_topic(run_program):
    # `python -m clickstream.dead_letters` (docs/consumer.md) reads the dead-letter topic by
    # assignment (Fetch needs Read on the topic, no group). With the stack's ACLs nobody may,
    # so on Aiven refused input can only be inspected by hand in the console.
    deployed = run_program(lambda: build_stack(InfraConfig(**PROJECT)))
    readers = {
        a.inputs["principal"]
        for a in deployed.mocks.of_type(NATIVE_ACL)
        if a.inputs["resourceType"] == "Topic"
        and a.inputs["resourceName"] == "clickstream.events.dlq"
        and a.inputs["operation"] in ("Read", "All")
        and a.inputs["permissionType"] == "ALLOW"
    }
    assert readers != set()
