"""The NATS backend's name mapping and URL options (no server needed)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

import klieo_shm
from klieo_shm.nats._names import Namespace, escape_name, parse_url, unescape_name

NATS_NAME = re.compile(r"[A-Za-z0-9_-]+")
tokens = st.text(alphabet="ab_-.Z9", min_size=1, max_size=12).filter(
    lambda s: ".." not in s and not s.startswith(".") and not s.endswith(".")
)


@given(tokens)
def test_escape_name_gives_a_nats_name_that_unescapes_to_the_original(name: str):
    escaped = escape_name(name)

    assert NATS_NAME.fullmatch(escaped)
    assert unescape_name(escaped) == name


@given(tokens, tokens)
def test_escape_name_is_one_to_one(a: str, b: str):
    assert (escape_name(a) == escape_name(b)) == (a == b)


def test_dotted_bucket_maps_to_a_legal_nats_bucket():
    ns = Namespace("klieo")

    assert ns.bucket("dedup.orders") == "klieo_dedup_dorders"
    assert ns.bucket("dedup_orders") == "klieo_dedup__orders"


@given(tokens)
def test_no_user_bucket_collides_with_an_internal_bucket(name: str):
    ns = Namespace("p")

    assert ns.bucket(name) not in (ns.lease_bucket, ns.claims_bucket)


def test_pubsub_and_request_subjects_live_in_separate_namespaces():
    ns = Namespace("p")

    assert ns.pubsub_subject("a.b") == "p.ps.a.b"
    assert ns.from_pubsub_subject("p.ps.a.b") == "a.b"
    assert ns.request_subject("a.b") == "p.rr.a.b"


def test_parse_url_reads_every_option():
    options = parse_url(
        "nats://127.0.0.1:4222?prefix=t-1&max_payload=1024&job_ack_wait=0.5&storage=memory"
    )

    assert options.servers == "nats://127.0.0.1:4222"
    assert (options.prefix, options.max_payload) == ("t-1", 1024)
    assert (options.job_ack_wait, options.storage) == (0.5, "memory")


def test_parse_url_defaults():
    options = parse_url("nats://localhost:4222")

    assert (options.prefix, options.max_payload, options.storage) == ("klieo", None, "file")


@pytest.mark.parametrize(
    "url",
    [
        "nats://",
        "nats://h:1/path",
        "nats://h:1?prefix=a.b",
        "nats://h:1?prefix=a_b",
        "nats://h:1?max_payload=0",
        "nats://h:1?job_ack_wait=-1",
        "nats://h:1?storage=disk",
        "nats://h:1?unknown=1",
    ],
)
def test_parse_url_refuses_bad_urls_with_invalid_argument(url: str):
    with pytest.raises(klieo_shm.InvalidArgument):
        parse_url(url)
