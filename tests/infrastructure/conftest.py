"""Pulumi's own mocks for the infrastructure tests: no CLI, no cloud, no network.

The mocks echo each resource's inputs as its state (property names are camelCase on the wire)
and add the outputs Aiven would compute: hosts, ports, passwords, client certificates. A
recording monitor keeps every registration's type, name, parent and dependencies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest
from pulumi.runtime.mocks import MockMonitor

from clickstream.stack_outputs import OutputKey

PROJECT = "clickstream"
STACK = "dev"
CA_PEM = "-----BEGIN CERTIFICATE-----\nproject CA\n-----END CERTIFICATE-----\n"
KAFKA_HOST = "kafka.example.aivencloud.com"
KAFKA_PORT = 24951
PG_HOST = "pg.example.aivencloud.com"
PG_PORT = 24947
OS_HOST = "os.example.aivencloud.com"
OS_PORT = 24949
ADMIN_PASSWORD = "admin-secret"  # the avnadmin password Aiven puts in service URIs
# Aiven hands out generated passwords; these contain characters a URI must escape.
PASSWORDS = {
    "clickstream_app": "app:p@ss/1",
    "clickstream_owner": "owner pw#2",
    "clickstream_reader": "read=only&4",
    "clickstream-search": "search%pw?3",
}


def cert_of(user: str) -> str:
    """The (fake) PEM client certificate the mocks issue to a Kafka user."""
    return f"-----BEGIN CERTIFICATE-----\ncertificate of {user}\n-----END CERTIFICATE-----\n"


def key_of(user: str) -> str:
    """The (fake) PEM private key the mocks issue to a Kafka user."""
    return f"-----BEGIN PRIVATE KEY-----\nkey of {user}\n-----END PRIVATE KEY-----\n"


@dataclass
class Created:
    """One resource the program declared: its type token, logical name and inputs."""

    typ: str
    name: str
    inputs: dict[str, Any]


class AivenMocks(pulumi.runtime.Mocks):
    """Computes the outputs Aiven would, from the inputs; records every resource."""

    def __init__(self) -> None:
        self.created: list[Created] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.created.append(Created(args.typ, args.name, dict(args.inputs)))
        state = dict(args.inputs)
        username = args.inputs.get("username", "")
        if args.typ == "aiven:index/kafka:Kafka":
            state.update(
                serviceHost=KAFKA_HOST,
                servicePort=KAFKA_PORT,
                serviceUri=f"{KAFKA_HOST}:{KAFKA_PORT}",
                serviceUsername="avnadmin",
                servicePassword=ADMIN_PASSWORD,
                kafkas=[{"accessCert": cert_of("avnadmin"), "accessKey": key_of("avnadmin")}],
            )
        elif args.typ == "aiven:index/kafkaUser:KafkaUser":
            state.update(
                accessCert=cert_of(username), accessKey=key_of(username), password="unused"
            )
        elif args.typ == "aiven:index/pg:Pg":
            state.update(
                serviceHost=PG_HOST,
                servicePort=PG_PORT,
                serviceUri=f"postgres://avnadmin:{ADMIN_PASSWORD}@{PG_HOST}:{PG_PORT}/defaultdb",
                pg={"uri": f"postgres://avnadmin:{ADMIN_PASSWORD}@{PG_HOST}:{PG_PORT}/defaultdb"},
            )
        elif args.typ in ("aiven:index/pgUser:PgUser", "aiven:index/opensearchUser:OpensearchUser"):
            state.update(password=PASSWORDS[username])
        elif args.typ == "aiven:index/openSearch:OpenSearch":
            state.update(
                serviceHost=OS_HOST,
                servicePort=OS_PORT,
                serviceUri=f"https://avnadmin:{ADMIN_PASSWORD}@{OS_HOST}:{OS_PORT}",
                opensearches=[
                    {
                        "opensearchDashboardsUri": f"https://avnadmin:{ADMIN_PASSWORD}@{OS_HOST}:443",
                        "uris": [f"https://avnadmin:{ADMIN_PASSWORD}@{OS_HOST}:{OS_PORT}"],
                    }
                ],
            )
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> Any:
        if args.token == "aiven:index/getProject:getProject":
            return {"project": args.args["project"], "caCert": CA_PEM}
        return {}

    def of_type(self, typ: str) -> list[Created]:
        """The recorded resources of one type token (``aiven:index/kafkaTopic:KafkaTopic``)."""
        return [item for item in self.created if item.typ == typ]


@dataclass
class Registration:
    """What the engine would see of one resource: URN, parent, dependencies, protection."""

    typ: str
    name: str
    urn: str
    parent: str
    dependencies: list[str]
    protect: bool


class RecordingMonitor(MockMonitor):
    """The stock mock monitor, also keeping each registration's parent and dependencies."""

    def __init__(self, mocks: AivenMocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        self.registrations.append(
            Registration(
                typ=request.type,
                name=request.name,
                urn=response.urn,
                parent=request.parent,
                dependencies=list(request.dependencies),
                protect=bool(request.protect),
            )
        )
        return response


@dataclass
class Deployment:
    """The result of running the program under mocks."""

    outputs: dict[str, Any]
    secret: dict[str, bool]
    created: list[Created]
    registrations: list[Registration]
    mocks: AivenMocks = field(repr=False)

    def urn_of(self, typ: str, name: str) -> str:
        """The URN of the one registration with this type and logical name."""
        (urn,) = [r.urn for r in self.registrations if r.typ == typ and r.name == name]
        return urn


@pytest.fixture
def pulumi_config() -> Iterator[Callable[[Mapping[str, str], list[str]], None]]:
    """Set the stack configuration (``clickstream:key`` -> value; secret keys); reset after."""

    def set_config(values: Mapping[str, str], secret_keys: list[str]) -> None:
        pulumi.runtime.set_all_config(dict(values), secret_keys)

    yield set_config
    pulumi.runtime.set_all_config({}, [])


@pytest.fixture
def run_program() -> Callable[[Callable[[], Mapping[Any, pulumi.Output[Any]]]], Deployment]:
    """Run ``program`` (returning named outputs) under fresh mocks and resolve everything."""

    def run(program: Callable[[], Mapping[Any, pulumi.Output[Any]]]) -> Deployment:
        mocks = AivenMocks()
        monitor = RecordingMonitor(mocks)
        pulumi.runtime.set_mocks(
            mocks, project=PROJECT, stack=STACK, preview=False, monitor=monitor
        )
        values: dict[str, Any] = {}
        secret: dict[str, bool] = {}

        @pulumi.runtime.test
        def body() -> Any:
            outputs = program()

            async def resolve() -> None:
                for name, output in outputs.items():
                    key = name.value if isinstance(name, OutputKey) else str(name)
                    values[key] = await output.future()
                    secret[key] = await output.is_secret()

            return asyncio.ensure_future(resolve())

        body()
        return Deployment(values, secret, mocks.created, monitor.registrations, mocks)

    return run
