"""The wire models: every rule of the contract's field table, camelCase on the wire, snake_case in Python."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from hexlabs_tasks._models import (
    Backoff,
    HttpMethod,
    RequestSpec,
    RetryPolicy,
    Task,
    TaskCreate,
    TaskStatus,
    TaskUpdate,
    to_unix_ms,
)

PERFORM_AT = 1_764_770_000_000

# The create body exactly as the contract shows it.
CONTRACT_EXAMPLE: dict[str, Any] = {
    "request": {
        "url": "https://example.com/webhook",
        "method": "post",
        "headers": {"X-Source": "billing"},
        "params": {"page": 2, "q": "x", "dry": True},
        "body": {"some": "payload"},
        "timeout": 30,
    },
    "performAt": PERFORM_AT,
    "retries": 3,
    "retryPolicy": {
        "backoff": "exponential",
        "initialDelay": 1.0,
        "maxDelay": 3600,
        "multiplier": 2.0,
        "jitter": 0.1,
        "retryOn": [408, 425, 429, 500, 502, 503, 504],
    },
    "dependsOn": [],
    "status": "pending",
}

MINIMAL: dict[str, Any] = {
    "request": {"url": "https://example.com/hook", "method": "post"},
    "performAt": PERFORM_AT,
}


def body(**changes: Any) -> dict[str, Any]:
    """The minimal create body with dotted-path changes applied; a value of ``...`` deletes the key."""
    result = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = result
        for name in parents:
            node = node.setdefault(name, {})
        if value is ...:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return result


def errors_of(model: type[TaskCreate | TaskUpdate | RequestSpec | RetryPolicy], data: Any) -> list[Any]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return info.value.errors()


def only_loc(model: type[TaskCreate | TaskUpdate], data: Any) -> tuple[Any, ...]:
    """The location of the one field that broke, without pydantic's union-member suffixes."""
    locs = {tuple(error["loc"]) for error in errors_of(model, data)}
    prefixes = {loc[:2] if loc[0] in ("request", "retryPolicy") else loc[:1] for loc in locs}
    assert len(prefixes) == 1, f"expected one broken field, got {locs}"
    return min(locs, key=len)


# -- the contract's example ----------------------------------------------------------------------------------


def test_contract_example_round_trips_unchanged() -> None:
    task = TaskCreate.model_validate(CONTRACT_EXAMPLE)
    assert task.to_wire() == CONTRACT_EXAMPLE


def test_minimal_create_fills_every_default() -> None:
    wire = TaskCreate.model_validate(MINIMAL).to_wire()
    assert wire == {
        "request": {
            "url": "https://example.com/hook",
            "method": "post",
            "headers": {},
            "params": {},
            "body": None,
            "timeout": 30,
        },
        "performAt": PERFORM_AT,
        "retries": 3,
        "retryPolicy": CONTRACT_EXAMPLE["retryPolicy"],
        "dependsOn": [],
        "status": "pending",
    }


def test_retry_policy_defaults_are_exactly_the_contracts() -> None:
    rules = RetryPolicy()
    assert rules.backoff is Backoff.EXPONENTIAL
    assert rules.initial_delay == 1.0
    assert rules.max_delay == 3600
    assert rules.multiplier == 2.0
    assert rules.jitter == 0.1
    assert rules.retry_on == [408, 425, 429, 500, 502, 503, 504]
    assert rules.to_wire() == CONTRACT_EXAMPLE["retryPolicy"]


def test_default_retry_on_lists_are_not_shared_between_policies() -> None:
    first, second = RetryPolicy(), RetryPolicy()
    first.retry_on.append(418)
    assert 418 not in second.retry_on


# -- names: camelCase on the wire, snake_case in Python ------------------------------------------------------


def test_attributes_are_snake_case_and_wire_is_camel_case() -> None:
    task = TaskCreate.model_validate(CONTRACT_EXAMPLE)
    assert task.perform_at == PERFORM_AT
    assert task.retry_policy.initial_delay == 1.0
    assert task.retry_policy.max_delay == 3600
    assert task.retry_policy.retry_on == [408, 425, 429, 500, 502, 503, 504]
    assert task.depends_on == []
    wire = task.to_wire()
    assert {"performAt", "retryPolicy", "dependsOn"} <= wire.keys()
    assert {"initialDelay", "maxDelay", "retryOn"} <= wire["retryPolicy"].keys()
    assert not any("_" in key for key in wire)
    assert not any("_" in key for key in wire["retryPolicy"])


def test_snake_case_names_are_accepted_on_input() -> None:
    snake = {
        "request": {"url": "https://example.com/hook", "method": "post"},
        "perform_at": PERFORM_AT,
        "retry_policy": {"initial_delay": 5.0, "max_delay": 60, "retry_on": [500]},
        "depends_on": ["a"],
    }
    task = TaskCreate.model_validate(snake)
    assert task.perform_at == PERFORM_AT
    assert task.retry_policy.initial_delay == 5.0
    assert task.retry_policy.max_delay == 60
    assert task.retry_policy.retry_on == [500]
    assert task.depends_on == ["a"]


def test_python_keyword_construction_uses_snake_case() -> None:
    task = TaskCreate(
        request=RequestSpec(url="https://example.com/hook", method=HttpMethod.GET),
        perform_at=PERFORM_AT,
        retry_policy=RetryPolicy(backoff=Backoff.LINEAR),
    )
    assert task.to_wire()["retryPolicy"]["backoff"] == "linear"


def test_model_dump_json_is_camel_case() -> None:
    assert '"performAt":' in TaskCreate.model_validate(MINIMAL).model_dump_json()


def test_read_model_is_camel_case_on_the_wire_and_snake_case_in_python() -> None:
    wire = {
        **CONTRACT_EXAMPLE,
        "id": "abc123",
        "status": "completed",
        "attempts": 1,
        "lastResponse": {"status": 200, "headers": {"a": "b"}, "body": "ok", "durationMs": 12},
        "lastError": None,
        "nextAttemptAt": None,
        "flowRunId": "f-1",
        "createdAt": 1,
        "updatedAt": 2,
        "completedAt": 3,
    }
    task = Task.model_validate(wire)
    assert task.last_response is not None
    assert task.last_response.duration_ms == 12
    assert task.flow_run_id == "f-1"
    assert task.status is TaskStatus.COMPLETED
    assert task.is_final
    assert task.to_wire() == wire


# -- request.url ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com",
        "http://example.com/a?b=c",
        "HTTPS://EXAMPLE.COM/x",
        "http://127.0.0.1:8080/hook",
    ],
)
def test_absolute_http_and_https_urls_are_accepted(url: str) -> None:
    assert TaskCreate.model_validate(body(request__url=url)).request.url == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/file",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "/relative/path",
        "example.com/hook",
        "//example.com/hook",
        "https://",
        "http:///path",
        "",
        "https://example.com:99999/",
        "https://exa mple.com/",
    ],
)
def test_url_must_be_absolute_http_or_https(url: str) -> None:
    assert only_loc(TaskCreate, body(request__url=url)) == ("request", "url")


@pytest.mark.parametrize("url", [..., None, 42])
def test_url_is_required_and_a_string(url: Any) -> None:
    assert only_loc(TaskCreate, body(request__url=url)) == ("request", "url")


# -- request.method ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "post", "put", "delete", "patch", "head", "options"])
@pytest.mark.parametrize("case", [str.lower, str.upper, str.title])
def test_every_method_in_any_case_is_stored_lowercase(method: str, case: Any) -> None:
    spec = TaskCreate.model_validate(body(request__method=case(method))).request
    assert spec.method is HttpMethod(method)
    assert spec.to_wire()["method"] == method


@pytest.mark.parametrize("method", ["fetch", "connect", "trace", "", " get", 1, None, ...])
def test_unknown_or_missing_method_is_rejected(method: Any) -> None:
    assert only_loc(TaskCreate, body(request__method=method)) == ("request", "method")


# -- request.headers -----------------------------------------------------------------------------------------


def test_headers_are_string_to_string() -> None:
    headers = {"X-Source": "billing", "Authorization": "Bearer t"}
    assert TaskCreate.model_validate(body(request__headers=headers)).request.headers == headers


@pytest.mark.parametrize(
    ("headers", "loc"),
    [
        ({"X-Count": 1}, ("request", "headers", "X-Count")),
        ({"X-On": True}, ("request", "headers", "X-On")),
        ({"X-None": None}, ("request", "headers", "X-None")),
        ({"X-List": ["a", "b"]}, ("request", "headers", "X-List")),
        ({"X-Obj": {"a": "b"}}, ("request", "headers", "X-Obj")),
        (["X-Source: billing"], ("request", "headers")),
        ("X-Source: billing", ("request", "headers")),
        ({"Bad Name": "x"}, ("request", "headers")),
        ({"X-Injected": "a\r\nX-Evil: 1"}, ("request", "headers")),
    ],
)
def test_headers_other_than_string_to_string_are_rejected(headers: Any, loc: tuple[str, ...]) -> None:
    assert only_loc(TaskCreate, body(request__headers=headers)) == loc


# -- request.params ------------------------------------------------------------------------------------------


def test_params_take_strings_numbers_and_booleans() -> None:
    params = {"page": 2, "ratio": 2.5, "q": "x", "dry": True, "wet": False}
    spec = TaskCreate.model_validate(body(request__params=params)).request
    assert spec.params == params
    assert spec.params["dry"] is True
    assert isinstance(spec.params["page"], int)
    assert isinstance(spec.params["ratio"], float)


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], [], None])
def test_params_reject_nested_objects_lists_and_null(value: Any) -> None:
    assert only_loc(TaskCreate, body(request__params={"p": value}))[:3] == ("request", "params", "p")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_params_reject_non_finite_numbers(value: float) -> None:
    assert only_loc(TaskCreate, body(request__params={"p": value}))[:2] == ("request", "params")


def test_params_must_be_an_object() -> None:
    assert only_loc(TaskCreate, body(request__params=["a=1"]))[:2] == ("request", "params")


# -- request.body --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"some": "payload"},
        [1, "two", {"three": 3}],
        "plain text",
        42,
        1.5,
        True,
        False,
        None,
        {},
        [],
        {"deep": {"er": [{"est": None}]}},
    ],
)
def test_body_takes_any_json_value(payload: Any) -> None:
    spec = TaskCreate.model_validate(body(request__body=payload)).request
    assert spec.body == payload
    assert spec.to_wire()["body"] == payload


def test_body_defaults_to_none() -> None:
    assert TaskCreate.model_validate(MINIMAL).request.body is None


@pytest.mark.parametrize("payload", [{1, 2}, b"bytes", object()])
def test_body_rejects_what_is_not_json(payload: Any) -> None:
    assert only_loc(TaskCreate, body(request__body=payload))[:2] == ("request", "body")


# -- request.timeout -----------------------------------------------------------------------------------------


def test_timeout_defaults_to_30_seconds() -> None:
    assert TaskCreate.model_validate(MINIMAL).request.timeout == 30


@pytest.mark.parametrize("timeout", [0.001, 0.5, 1, 30, 899.9, 900])
def test_timeout_above_zero_up_to_900_is_accepted(timeout: float) -> None:
    assert TaskCreate.model_validate(body(request__timeout=timeout)).request.timeout == timeout


@pytest.mark.parametrize("timeout", [0, -1, 900.001, 901, 10_000, None, "soon"])
def test_timeout_outside_zero_to_900_is_rejected(timeout: Any) -> None:
    assert only_loc(TaskCreate, body(request__timeout=timeout)) == ("request", "timeout")


# -- request: unknown fields ---------------------------------------------------------------------------------


def test_unknown_request_field_is_rejected() -> None:
    assert only_loc(TaskCreate, body(request__data={"a": 1})) == ("request", "data")


# -- performAt -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("perform_at", [..., None])
def test_perform_at_is_required(perform_at: Any) -> None:
    assert only_loc(TaskCreate, body(performAt=perform_at)) == ("performAt",)


@pytest.mark.parametrize("perform_at", [0, 1, PERFORM_AT, 253_402_300_799_999])
def test_perform_at_takes_unix_ms(perform_at: int) -> None:
    assert TaskCreate.model_validate(body(performAt=perform_at)).perform_at == perform_at


def test_perform_at_accepts_an_integral_float() -> None:
    task = TaskCreate.model_validate(body(performAt=float(PERFORM_AT)))
    assert task.perform_at == PERFORM_AT
    assert type(task.perform_at) is int


@pytest.mark.parametrize(
    "perform_at",
    [True, False, -1, 1.5, "1764770000000", "2025-12-03T12:00:00Z", [PERFORM_AT], 253_402_300_800_000],
)
def test_perform_at_rejects_what_is_not_unix_ms(perform_at: Any) -> None:
    assert only_loc(TaskCreate, body(performAt=perform_at)) == ("performAt",)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2025, 12, 3, 13, 53, 20, tzinfo=UTC),
        datetime(2025, 12, 3, 14, 53, 20, tzinfo=timezone(timedelta(hours=1))),
        datetime(2025, 12, 3, 8, 23, 20, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    ],
)
def test_perform_at_accepts_an_aware_datetime_as_unix_ms(moment: datetime) -> None:
    task = TaskCreate.model_validate(body(performAt=moment))
    assert task.perform_at == PERFORM_AT
    assert task.to_wire()["performAt"] == PERFORM_AT


def test_perform_at_keeps_milliseconds_of_a_datetime() -> None:
    moment = datetime(2025, 12, 3, 13, 53, 20, 123_456, tzinfo=UTC)
    assert TaskCreate.model_validate(body(performAt=moment)).perform_at == PERFORM_AT + 123


def test_perform_at_rejects_a_naive_datetime() -> None:
    errors = errors_of(TaskCreate, body(performAt=datetime(2025, 12, 3, 13, 53, 20)))
    assert [tuple(e["loc"]) for e in errors] == [("performAt",)]
    assert "timezone-aware" in errors[0]["msg"]


def test_to_unix_ms_rejects_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        to_unix_ms(datetime(2025, 1, 1))


# -- retries -------------------------------------------------------------------------------------------------


def test_retries_defaults_to_3() -> None:
    assert TaskCreate.model_validate(MINIMAL).retries == 3


@pytest.mark.parametrize("retries", [0, 1, 50, 100])
def test_retries_from_0_to_100_are_accepted(retries: int) -> None:
    assert TaskCreate.model_validate(body(retries=retries)).retries == retries


@pytest.mark.parametrize("retries", [-1, 101, 1.5, "3", True, None])
def test_retries_outside_0_to_100_are_rejected(retries: Any) -> None:
    assert only_loc(TaskCreate, body(retries=retries)) == ("retries",)


# -- retryPolicy ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backoff", ["exponential", "linear", "fixed"])
def test_backoff_is_exponential_linear_or_fixed(backoff: str) -> None:
    task = TaskCreate.model_validate(body(retryPolicy={"backoff": backoff}))
    assert task.retry_policy.backoff is Backoff(backoff)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backoff", "random"),
        ("backoff", "Exponential "),
        ("backoff", None),
        ("jitter", -0.01),
        ("jitter", 1.01),
        ("initialDelay", -1),
        ("maxDelay", -1),
        ("multiplier", 0.5),
        ("retryOn", [99]),
        ("retryOn", [600]),
        ("retryOn", ["500"]),
        ("retryOn", 500),
        ("unknown", 1),
    ],
)
def test_retry_policy_rejects_out_of_range_values(field: str, value: Any) -> None:
    assert only_loc(TaskCreate, body(retryPolicy={field: value}))[:2] == ("retryPolicy", field)


@pytest.mark.parametrize("jitter", [0, 0.5, 1])
def test_jitter_from_0_to_1_is_accepted(jitter: float) -> None:
    assert TaskCreate.model_validate(body(retryPolicy={"jitter": jitter})).retry_policy.jitter == jitter


def test_partial_retry_policy_keeps_the_other_defaults() -> None:
    rules = TaskCreate.model_validate(body(retryPolicy={"backoff": "fixed"})).retry_policy
    assert rules.to_wire() == {**CONTRACT_EXAMPLE["retryPolicy"], "backoff": "fixed"}


def test_empty_retry_on_is_allowed() -> None:
    assert TaskCreate.model_validate(body(retryPolicy={"retryOn": []})).retry_policy.retry_on == []


# -- dependsOn -----------------------------------------------------------------------------------------------


def test_depends_on_defaults_to_empty_and_drops_duplicates_in_order() -> None:
    assert TaskCreate.model_validate(MINIMAL).depends_on == []
    assert TaskCreate.model_validate(body(dependsOn=["b", "a", "b"])).depends_on == ["b", "a"]


@pytest.mark.parametrize("depends_on", [[1], "abc", [None]])
def test_depends_on_is_a_list_of_ids(depends_on: Any) -> None:
    assert only_loc(TaskCreate, body(dependsOn=depends_on))[:1] == ("dependsOn",)


# -- status and unknown fields -------------------------------------------------------------------------------


def test_status_on_create_may_be_pending() -> None:
    assert TaskCreate.model_validate(body(status="pending")).status == "pending"


@pytest.mark.parametrize("status", ["running", "completed", "failed", "cancelled", "PENDING", "", None])
def test_status_on_create_other_than_pending_is_rejected(status: Any) -> None:
    assert only_loc(TaskCreate, body(status=status)) == ("status",)


@pytest.mark.parametrize("field", ["id", "attempts", "lastError", "foo", "perform_at_ms"])
def test_unknown_top_level_field_is_rejected(field: str) -> None:
    errors = errors_of(TaskCreate, body(**{field: 1}))
    assert [(tuple(e["loc"]), e["type"]) for e in errors] == [((field,), "extra_forbidden")]


def test_validation_errors_name_every_broken_field() -> None:
    data = body(request__url="ftp://x", request__method="fetch", performAt=-1, retries=101)
    locs = {tuple(e["loc"]) for e in errors_of(TaskCreate, data)}
    assert locs == {("request", "url"), ("request", "method"), ("performAt",), ("retries",)}


# -- TaskUpdate ----------------------------------------------------------------------------------------------


def test_update_fields_are_all_optional() -> None:
    update = TaskUpdate.model_validate({})
    assert update.model_fields_set == set()
    assert update.model_dump(exclude_unset=True) == {}


@pytest.mark.parametrize(
    ("data", "attribute", "expected"),
    [
        ({"retries": 5}, "retries", 5),
        ({"performAt": PERFORM_AT}, "perform_at", PERFORM_AT),
        ({"perform_at": PERFORM_AT}, "perform_at", PERFORM_AT),
        ({"performAt": datetime(2025, 12, 3, 13, 53, 20, tzinfo=UTC)}, "perform_at", PERFORM_AT),
        ({"performAt": float(PERFORM_AT)}, "perform_at", PERFORM_AT),
        ({"dependsOn": ["x", "x"]}, "depends_on", ["x"]),
        ({"status": "pending"}, "status", TaskStatus.PENDING),
    ],
)
def test_update_takes_one_field_at_a_time(data: dict[str, Any], attribute: str, expected: Any) -> None:
    update = TaskUpdate.model_validate(data)
    assert getattr(update, attribute) == expected
    assert update.model_fields_set == {attribute}


def test_update_replaces_whole_top_level_objects() -> None:
    update = TaskUpdate.model_validate({"retryPolicy": {"backoff": "fixed"}, "request": MINIMAL["request"]})
    assert update.retry_policy == RetryPolicy(backoff=Backoff.FIXED)
    assert update.request is not None
    assert update.request.timeout == 30
    assert update.model_dump(by_alias=True, exclude_unset=True).keys() == {"retryPolicy", "request"}


@pytest.mark.parametrize("status", ["running", "completed", "failed", "cancelled", "done"])
def test_update_status_other_than_pending_is_rejected(status: str) -> None:
    assert only_loc(TaskUpdate, {"status": status}) == ("status",)


@pytest.mark.parametrize(
    "field",
    [
        "request",
        "performAt",
        "retries",
        "retryPolicy",
        "dependsOn",
        "status",
    ],
)
def test_update_rejects_an_explicit_null(field: str) -> None:
    assert only_loc(TaskUpdate, {field: None}) == (field,)


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"retries": 101}, ("retries",)),
        ({"performAt": True}, ("performAt",)),
        ({"performAt": datetime(2025, 1, 1)}, ("performAt",)),
        ({"request": {"url": "ftp://x", "method": "get"}}, ("request", "url")),
        ({"request": {"url": "https://example.com"}}, ("request", "method")),
        ({"retryPolicy": {"jitter": 2}}, ("retryPolicy", "jitter")),
        ({"id": "abc"}, ("id",)),
    ],
)
def test_update_applies_the_create_rules(data: dict[str, Any], loc: tuple[str, ...]) -> None:
    assert only_loc(TaskUpdate, data) == loc
