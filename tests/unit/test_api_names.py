"""Name rules and wildcard matching (klieo_shm._names through the public API)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

import klieo_shm
from klieo_shm import (
    InvalidArgument,
    subject_matches,
    validate_bucket,
    validate_durable,
    validate_key,
    validate_key_pattern,
    validate_queue,
    validate_subject,
    validate_subject_pattern,
    validate_worker_id,
)

token = st.text(
    alphabet=st.characters(
        min_codepoint=0x21,
        max_codepoint=0x2FF,
        exclude_characters=".*>",
        exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
    ),
    min_size=1,
    max_size=8,
)
subjects = st.lists(token, min_size=1, max_size=6).map(".".join)
name_token = st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True)


def reference_match(pattern: str, subject: str) -> bool:
    """NATS matching, spelled as a regular expression."""
    parts = []
    for tok in pattern.split("."):
        if tok == "*":
            parts.append(r"[^.]+")
        elif tok == ">":
            parts.append(r".+")
        else:
            parts.append(re.escape(tok))
    return re.fullmatch(r"\.".join(parts), subject) is not None


@st.composite
def pattern_and_subject(draw: st.DrawFn) -> tuple[str, str]:
    subject = draw(st.lists(token, min_size=1, max_size=6))
    pattern = []
    for i, tok in enumerate(subject):
        choice = draw(st.sampled_from(["same", "star", "other", "gt"]))
        if choice == "gt":
            pattern.append(">")
            break
        pattern.append({"same": tok, "star": "*", "other": tok + "x"}[choice])
        if i == len(subject) - 1 and draw(st.booleans()):
            pattern.append(draw(st.sampled_from(["*", ">", "extra"])))
    return ".".join(pattern), ".".join(subject)


@given(subjects)
def test_generated_subjects_are_valid_and_returned_unchanged(subject):
    assert validate_subject(subject) == subject
    assert validate_subject_pattern(subject) == subject


@given(subjects)
def test_a_subject_matches_itself(subject):
    assert subject_matches(subject, subject)


@given(subjects)
def test_greater_than_matches_every_subject(subject):
    assert subject_matches(">", subject)


@given(subjects)
def test_stars_match_subjects_of_the_same_length_only(subject):
    n = subject.count(".") + 1
    assert subject_matches(".".join(["*"] * n), subject)
    assert not subject_matches(".".join(["*"] * (n + 1)), subject)
    if n > 1:
        assert not subject_matches(".".join(["*"] * (n - 1)), subject)


@given(pattern_and_subject())
def test_subject_matches_agrees_with_nats_rules(case):
    pattern, subject = case
    validate_subject_pattern(pattern)
    assert subject_matches(pattern, subject) == reference_match(pattern, subject)


@given(subjects)
def test_greater_than_needs_at_least_one_more_token(subject):
    assert not subject_matches(subject + ".>", subject)
    assert subject_matches(subject + ".>", subject + ".x")
    assert subject_matches(subject + ".>", subject + ".x.y")


@given(st.lists(name_token, min_size=1, max_size=4).map(".".join))
def test_dotted_names_are_valid_buckets_and_queues(name):
    assert validate_bucket(name) == name
    assert validate_queue(name) == name


@given(name_token)
def test_durable_tokens_are_valid_durables(name):
    assert validate_durable(name) == name


@given(st.text(min_size=1, max_size=20))
def test_invalid_names_raise_invalid_argument_or_pass_never_anything_else(text):
    for validate in (
        validate_subject,
        validate_subject_pattern,
        validate_bucket,
        validate_queue,
        validate_durable,
        validate_key,
        validate_key_pattern,
        validate_worker_id,
    ):
        try:
            result = validate(text)
        except InvalidArgument as exc:
            error = exc
        else:
            assert result == text
            continue
        assert error.value == text
        assert error.rule
        assert error.rule in str(error)


CASES = [
    (validate_subject, "", "must not be empty"),
    (validate_subject, "a..b", "tokens between dots must not be empty"),
    (validate_subject, "a.*", "'*' or '>'"),
    (validate_subject, "a b", "white space"),
    (validate_subject, "x" * 1025, "at most 1024"),
    (validate_subject_pattern, "a.>.b", "'>' must be the last token"),
    (validate_subject_pattern, "a*", "whole tokens"),
    (validate_bucket, "a/b", "letters, digits"),
    (validate_queue, "q..q", "must not be empty"),
    (validate_durable, "a.b", "letters, digits, '_' and '-'"),
    (validate_durable, "x" * 256, "at most 255"),
    (validate_key, ".a", "must not start or end with '.'"),
    (validate_key, "a..b", "nor contain '..'"),
    (validate_key, "a b", "letters, digits and '-/_=.'"),
    (validate_key_pattern, "a.>.b", "'>' as the last token"),
    (validate_worker_id, "", "non-empty"),
    (validate_worker_id, "w\n", "control characters"),
]


@pytest.mark.parametrize(("validate", "value", "rule"), CASES, ids=[repr(c[1])[:20] for c in CASES])
def test_invalid_name_raises_invalid_argument_naming_the_rule(validate, value, rule):
    with pytest.raises(InvalidArgument) as caught:
        validate(value)

    assert rule in caught.value.rule
    assert caught.value.value == value
    assert caught.value.rule in str(caught.value)


@pytest.mark.parametrize(
    "validate", [validate_subject, validate_bucket, validate_durable, validate_key, validate_queue]
)
def test_non_str_names_raise_invalid_argument(validate):
    with pytest.raises(InvalidArgument, match="must be a str"):
        validate(b"bytes")


def test_valid_keys_follow_nats_kv():
    for key in ("a", "a.b", "a/b", "a=b", "a-b_c", "A.9"):
        assert validate_key(key) == key


def test_key_patterns_allow_wildcard_tokens():
    for pattern in (">", "*", "a.*", "a.>", "*.b.>"):
        assert validate_key_pattern(pattern) == pattern


def test_invalid_argument_is_a_value_error_and_a_bus_error():
    with pytest.raises(ValueError):  # noqa: PT011 - the builtin is the point
        validate_subject("")
    assert issubclass(klieo_shm.InvalidArgument, klieo_shm.BusError)
