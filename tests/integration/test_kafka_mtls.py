"""Real mutual TLS and the stack's Kafka ACLs, on a real broker configured like Aiven's.

The test makes a throwaway CA, a broker certificate and one client certificate per service
user, and starts an extra broker whose only client listener is SSL with
``ssl.client.auth=required``, Kafka's ``StandardAuthorizer`` and a principal mapping that turns
``CN=<user>`` into ``User:<user>`` (as Aiven names principals after service users). An admin
identity creates the topics and exactly the ACLs of :func:`infrastructure.stack.kafka_grants`.

The clients are configured the way production configures them: stack outputs (as JSON)
-> ``load_settings(role=...)`` -> ``kafka_client_config(settings)``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clickstream.dead_letters import read_letters
from clickstream.errors import ConfigError
from clickstream.kafka import kafka_client_config
from clickstream.settings import Settings, load_settings
from infrastructure.config import InfraConfig
from infrastructure.stack import kafka_grants

pytestmark = pytest.mark.integration


CFG = InfraConfig(aiven_project="local", service_prefix="clickstream-test")
WAIT_S = 60.0  # upper bound for a broker round trip; the tests never assert on durations


@dataclass(frozen=True)
class Pki:
    """PEM text of a CA and of certificates it signed."""

    ca: str
    certs: dict[str, tuple[str, str]]  # common name -> (certificate, private key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def make_pki(ca_name: str, *, clients: list[str], server: str | None = None) -> Pki:
    """A CA and certificates signed by it; ``server`` gets ``IP:127.0.0.1`` as its SAN."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    certs: dict[str, tuple[str, str]] = {}
    for name in [*clients, *([server] if server else [])]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if name == server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        certs[name] = (cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), _pem_key(key))
    return Pki(ca=ca_cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), certs=certs)


@dataclass(frozen=True)
class TlsBroker:
    bootstrap: str
    pki: Pki
    outputs_path: Path


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """A broker with only a mutual-TLS client listener, ACLs enforced, topics and grants made."""
    if shutil.which("java") is None:
        if os.environ.get("CLICKSTREAM_REQUIRE_SERVICES") == "1":
            pytest.fail("java is not installed; the mutual-TLS broker needs it")
        pytest.skip("java is not installed; the mutual-TLS broker needs it")
    from devstack.kafka import BrokerConfig, TlsListener, start_broker
    from devstack.process import free_tcp_port

    home = tmp_path_factory.mktemp("mtls")
    pki = make_pki(
        "clickstream test CA",
        clients=[CFG.producer_user, CFG.consumer_user, "admin"],
        server="broker",
    )
    broker_cert, broker_key = pki.certs["broker"]
    keystore = home / "broker.pem"
    keystore.write_text(broker_key + broker_cert, encoding="ascii")
    truststore = home / "ca.pem"
    truststore.write_text(pki.ca, encoding="ascii")
    config = BrokerConfig(
        data_dir=home / "broker",
        port=free_tcp_port(),
        controller_port=free_tcp_port(),
        heap="384m",
        tls=TlsListener(keystore_path=keystore, truststore_path=truststore, store_type="PEM"),
        extra_properties={
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            # Aiven names a certificate's principal after the service user (its CN).
            "ssl.principal.mapping.rules": "RULE:^CN=([^,]+)$/$1/,DEFAULT",
            # The broker itself (SSL) and the loopback-only controller listener (PLAINTEXT).
            "super.users": "User:broker;User:admin;User:ANONYMOUS",
        },
    )
    with start_broker(config) as broker:
        admin_cert, admin_key = pki.certs["admin"]
        admin = AdminClient(
            {
                "bootstrap.servers": broker.bootstrap,
                "security.protocol": "SSL",
                "ssl.ca.pem": pki.ca,
                "ssl.certificate.pem": admin_cert,
                "ssl.key.pem": admin_key,
            }
        )
        topics = [NewTopic(CFG.topic, 3, 1), NewTopic(CFG.dlq_topic, 1, 1)]
        for future in admin.create_topics(topics, request_timeout=WAIT_S).values():
            future.result()
        bindings = [
            AclBinding(
                ResourceType[grant.resource_type.upper()],
                grant.resource_name,
                ResourcePatternType[grant.pattern_type],
                f"User:{grant.principal}",
                "*",
                AclOperation[grant.operation.upper()],
                AclPermissionType.ALLOW,
            )
            for grant in kafka_grants(CFG)
        ]
        for future in admin.create_acls(bindings, request_timeout=WAIT_S).values():
            future.result()
        wait_for_acls(admin, len(bindings))
        outputs = {
            "kafka_bootstrap": broker.bootstrap,
            "kafka_ca": pki.ca,
            "kafka_producer_cert": pki.certs[CFG.producer_user][0],
            "kafka_producer_key": pki.certs[CFG.producer_user][1],
            "kafka_consumer_cert": pki.certs[CFG.consumer_user][0],
            "kafka_consumer_key": pki.certs[CFG.consumer_user][1],
            "kafka_topic": CFG.topic,
            "kafka_dlq_topic": CFG.dlq_topic,
            "kafka_consumer_group": CFG.consumer_group,
        }
        outputs_path = home / "outputs.json"
        outputs_path.write_text(json.dumps(outputs), encoding="utf-8")
        yield TlsBroker(bootstrap=broker.bootstrap, pki=pki, outputs_path=outputs_path)


def wait_for_acls(admin: AdminClient, count: int) -> None:
    """Wait (bounded) until the broker's authorizer, not just the controller, has the ACLs."""
    everything = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
        AclOperation.ANY, AclPermissionType.ANY,
    )  # fmt: skip
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = admin.describe_acls(everything, request_timeout=WAIT_S).result()
        if len(found) >= count:
            return
        time.sleep(0.2)
    pytest.fail(f"the broker did not show {count} ACLs within {WAIT_S} s")


def settings_for(broker: TlsBroker, role: str, **env: str) -> Settings:
    environ = {"CLICKSTREAM_STACK_OUTPUTS": str(broker.outputs_path), **env}
    return load_settings(role=role, environ=environ)  # type: ignore[arg-type]


def produce(config: dict[str, Any], topic: str, value: bytes) -> list[KafkaError | None]:
    """Produce one message (idempotently) and return the delivery results."""
    results: list[KafkaError | None] = []
    producer = Producer({**config, "enable.idempotence": True, "message.timeout.ms": 20_000})
    producer.produce(topic, value, key=b"user-1", on_delivery=lambda err, _msg: results.append(err))
    producer.flush(WAIT_S)
    return results


def consume_one(config: dict[str, Any], topic: str, group: str) -> Any:
    """Poll until a message or an error arrives (bounded by WAIT_S); commit; return it."""
    consumer = Consumer(
        {
            **config,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is None:
                consumer.commit(message=message, asynchronous=False)
            return message
        return None
    finally:
        consumer.close()


def test_producer_and_consumer_work_over_mutual_tls_with_their_grants(tls_broker):
    producer = kafka_client_config(settings_for(tls_broker, "producer"))
    assert producer["security.protocol"] == "SSL"
    payload = f'{{"event_id": "{uuid.uuid4()}"}}'.encode()
    results = produce(producer, CFG.topic, payload)
    assert results == [None], [e.str() if e else None for e in results]

    consumer = kafka_client_config(settings_for(tls_broker, "consumer"))
    message = consume_one(consumer, CFG.topic, CFG.consumer_group)
    assert message is not None and message.error() is None
    assert message.value() == payload
    # The consumer may write dead letters.
    assert produce(consumer, CFG.dlq_topic, payload) == [None]


def test_the_consumer_reads_its_dead_letters_back_with_its_grants(tls_broker):
    # The reader's fresh group id needs Describe to find its coordinator: without the stack's
    # PREFIXED grant this failed with "Group authorization failed".
    consumer = settings_for(tls_broker, "consumer")
    payload = f'{{"not": "an event {uuid.uuid4()}"}}'.encode()
    assert produce(kafka_client_config(consumer), CFG.dlq_topic, payload) == [None]
    letters = list(read_letters(consumer, last=None, timeout=WAIT_S))
    assert payload in [letter.value for letter in letters]
    # The producer has no business there.
    with pytest.raises(ConfigError):
        list(read_letters(settings_for(tls_broker, "producer"), last=None, timeout=WAIT_S))


def test_the_producer_cannot_read_the_events(tls_broker):
    producer = kafka_client_config(settings_for(tls_broker, "producer"))
    message = consume_one(producer, CFG.topic, CFG.consumer_group)
    assert message is not None and message.error() is not None
    assert message.error().code() in (
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
    )


def test_the_consumer_cannot_write_the_events(tls_broker):
    consumer = kafka_client_config(settings_for(tls_broker, "consumer"))
    (error,) = produce(consumer, CFG.topic, b"{}")
    assert error is not None
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_the_consumer_cannot_use_another_group(tls_broker):
    consumer = kafka_client_config(settings_for(tls_broker, "consumer"))
    message = consume_one(consumer, CFG.topic, "someone-elses-group")
    assert message is not None and message.error() is not None
    assert message.error().code() == KafkaError.GROUP_AUTHORIZATION_FAILED


def first_client_error(config: dict[str, Any]) -> KafkaError:
    """Connect with ``config`` and return the first error librdkafka reports (within WAIT_S)."""
    errors: list[KafkaError] = []
    admin = AdminClient({**config, "error_cb": errors.append})
    deadline = time.monotonic() + WAIT_S
    while not errors and time.monotonic() < deadline:
        # Only the error callback tells why; the request itself just times out.
        with contextlib.suppress(KafkaException):
            admin.list_topics(timeout=1.0)
        admin.poll(0.1)
    assert errors, "the connection did not fail"
    return errors[0]


def test_a_wrong_ca_fails_clearly(tls_broker):
    other = make_pki("some other CA", clients=[])
    settings = settings_for(tls_broker, "producer", CLICKSTREAM_KAFKA_SSL_CA=other.ca)
    error = first_client_error(kafka_client_config(settings))
    assert "certificate verify failed" in error.str()


def test_without_a_client_certificate_the_broker_refuses(tls_broker):
    settings = settings_for(tls_broker, "admin")  # the admin role has no Kafka identity
    assert settings.kafka_ssl_certificate is None
    error = first_client_error(kafka_client_config(settings))
    assert error.code() in (KafkaError._SSL, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN)
