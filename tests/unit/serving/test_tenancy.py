"""Token files with tenants and limits, the admission arithmetic (token buckets, concurrency caps, priority
shedding) and the access log's lines and files."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from kubeforge.serving.accesslog import AccessLog, line, rfc3339
from kubeforge.serving.auth import ANONYMOUS, Caller, Forbidden, Tokens, Unauthorized
from kubeforge.serving.tenancy import Admission, Throttled

TOKENS = """\
# gateway tokens with tenants
gateway:
  maxConcurrent: 4
  batchMaxConcurrent: 2
tenants:
  acme: {requestsPerSecond: 2, burst: 3, maxConcurrent: 2}
  research: {maxConcurrent: 10}
  open: {}
tokens:
  - name: acme-web
    tenant: acme
    token: acme-secret-token
  - name: research-nightly
    tenant: research
    priority: batch
    models: [clf]
    sha256: {digest}
  - name: ops
    token: ops-secret-token
""".replace("{digest}", hashlib.sha256(b"research-secret-token").hexdigest())


def test_yaml_tokens_name_their_caller_tenant_and_priority():
    tokens = Tokens(TOKENS)
    assert tokens.check("Bearer acme-secret-token", "any") == Caller("acme-web", "acme", "interactive")
    assert tokens.check("Bearer research-secret-token", "clf") == Caller("research-nightly", "research", "batch")
    assert tokens.check("Bearer ops-secret-token", "clf") == Caller("ops", None, "interactive")
    with pytest.raises(Forbidden) as refused:
        tokens.check("Bearer research-secret-token", "other")
    assert refused.value.caller.identity == "research-nightly"
    with pytest.raises(Unauthorized):
        tokens.check("Bearer research-nightly", "clf")  # a name is not a token
    assert tokens.tenants["acme"].bucket == 3 and tokens.tenants["research"].requests_per_second is None
    assert tokens.gateway is not None and (tokens.gateway.max_concurrent, tokens.gateway.batch) == (4, 2)


def test_original_token_lines_keep_working_and_are_named_by_line():
    tokens = Tokens("# team tokens\nadmin\n\nreader clf, other  # two models\n")
    assert tokens.check("Bearer admin", "x") == Caller("line-2")
    assert tokens.check("Bearer reader", "clf") == Caller("line-4")
    assert tokens.tenants == {} and tokens.gateway is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tenants:\n  research: {requestsPerSecond: -1}\ntokens: [{name: a, token: t}]",
         "tenants.research.requestsPerSecond: Input should be greater than 0"),
        ("tenants:\n  research: {requestsPerSecond: 0}\ntokens: [{name: a, token: t}]",
         "tenants.research.requestsPerSecond: Input should be greater than 0"),
        ("tenants:\n  r: {burst: 5}\ntokens: [{name: a, token: t}]",
         "tenants.r: burst needs requestsPerSecond"),
        ("tenants:\n  r: {maxConcurrent: 0}\ntokens: [{name: a, token: t}]",
         "tenants.r.maxConcurrent: Input should be greater than or equal to 1"),
        ("tenants:\n  r: {rps: 5}\ntokens: [{name: a, token: t}]", "tenants.r.rps: Extra inputs are not permitted"),
        ("tokens:\n  - {name: a, token: hunter22}\n  - {name: b, token: t2, tenant: nobody}",
         "tokens[1] (b).tenant: 'nobody' is not under tenants (none defined)"),
        ("tokens:\n  - {name: a, token: hunter22}\n  - {name: b, token: t2, priority: urgent}",
         "tokens[1] (b).priority: Input should be 'interactive' or 'batch'"),
        ("tokens:\n  - {name: a, token: hunter22}\n  - {name: b}",
         "tokens[1] (b): give exactly one of token and sha256"),
        ("tokens:\n  - {name: a, token: hunter22}\n  - {name: b, token: hunter22}",
         "tokens[1] (b): the same token as a"),
        ("tokens:\n  - {name: a, token: hunter22}\n  - {name: a, token: t2}", "tokens[1] (a).name: tokens[0] has the"),
        ("tokens:\n  - {name: a, token: hunter22, sha256: abc}", "tokens[0] (a).sha256: String should match"),
        ("tokens: []", "tokens: List should have at least 1 item"),
        ("gateway: {maxConcurrent: 4, batchMaxConcurrent: 5}\ntokens: [{name: a, token: t}]",
         "gateway: batchMaxConcurrent (5) is above maxConcurrent (4)"),
        ("tenants:\n  none: {}\ntokens: [{name: a, token: t}]", "tenants.none: the name is reserved"),
        ("tokens:\n  - name: a\n    token: hunter22: x\n", "not valid YAML at line 3, column"),
        ("tokens:\n  - [name, hunter22]\n", "tokens[0]: Input should be a valid dictionary"),
    ],
)  # fmt: skip
def test_bad_token_files_are_refused_naming_entry_and_field_never_the_token(text, message):
    with pytest.raises(ValueError) as refused:
        Tokens(text)
    assert message in str(refused.value)
    assert "hunter22" not in str(refused.value)


def _admission(text: str = TOKENS) -> Admission:
    admission = Admission()
    admission.load(Tokens(text), now=0.0)
    return admission


ACME = Caller("acme-web", "acme")


def test_rate_limit_is_a_token_bucket_with_burst_and_a_retry_time():
    admission = _admission()
    for _ in range(3):  # the burst
        admission.release(admission.admit(ACME, now=0.0))
    with pytest.raises(Throttled) as refused:
        admission.admit(ACME, now=0.1)
    assert refused.value.reason == "rate" and refused.value.tenant == "acme"
    assert refused.value.limit == {"requestsPerSecond": 2.0, "burst": 3}
    assert refused.value.retry_after == pytest.approx(0.4)  # 0.2 of a request refilled at 2/s
    assert refused.value.retry_after_header == "1"
    assert refused.value.body()["retryAfterSeconds"] == 0.4
    admission.release(admission.admit(ACME, now=0.5))  # one refilled
    with pytest.raises(Throttled):
        admission.admit(ACME, now=0.5)
    for _ in range(3):  # a quiet spell refills up to the burst, no further
        admission.release(admission.admit(ACME, now=100.0))
    with pytest.raises(Throttled):
        admission.admit(ACME, now=100.0)


def test_concurrency_caps_per_tenant_and_a_refusal_takes_nothing():
    admission = _admission()
    held = [admission.admit(ACME, now=0.0) for _ in range(2)]
    with pytest.raises(Throttled) as refused:
        admission.admit(ACME, now=0.0)
    assert (refused.value.reason, refused.value.limit) == ("concurrency", {"maxConcurrent": 2})
    assert admission.tenants["acme"].level == 1  # the refused request took no token from the bucket
    admission.release(held.pop())
    held.append(admission.admit(ACME, now=0.0))
    assert admission.in_flight == 2 and admission.tenants["acme"].in_flight == 2


def test_batch_callers_are_turned_away_first_as_the_gateway_fills():
    admission = _admission()
    batch, other = Caller("research-nightly", "research", "batch"), Caller("ops")
    admission.admit(batch, now=0.0)
    admission.admit(other, now=0.0)
    with pytest.raises(Throttled) as refused:
        admission.admit(batch, now=0.0)  # 2 in flight: batchMaxConcurrent
    assert (refused.value.reason, refused.value.tenant, refused.value.limit) == (
        "overload",
        "research",
        {"batchMaxConcurrent": 2},
    )
    admission.admit(other, now=0.0)
    admission.admit(ANONYMOUS, now=0.0)  # interactive callers keep the room above it
    with pytest.raises(Throttled) as full:
        admission.admit(other, now=0.0)
    assert (full.value.reason, full.value.tenant, full.value.limit) == ("overload", "none", {"maxConcurrent": 4})


def test_reloaded_limits_keep_the_bucket_and_requests_in_flight():
    admission = _admission()
    held = admission.admit(ACME, now=0.0)
    admission.load(Tokens(TOKENS.replace("requestsPerSecond: 2, burst: 3", "requestsPerSecond: 1, burst: 1")), 0.0)
    assert admission.tenants["acme"] is held and held.in_flight == 1
    assert held.level == 1  # two left in the old bucket, one fits the new one
    admission.admit(ACME, now=0.0)
    with pytest.raises(Throttled) as refused:
        admission.admit(ACME, now=0.0)
    assert refused.value.limit == {"requestsPerSecond": 1.0, "burst": 1}
    admission.load(Tokens("tokens: [{name: a, token: t}]"), 0.0)
    admission.admit(ACME, now=0.0)  # the tenant is gone with its limits
    admission.release(held)
    assert admission.in_flight == 2


def test_no_token_file_means_no_limits():
    admission = Admission()
    admission.load(None, 0.0)
    for _ in range(1000):
        admission.admit(ANONYMOUS, now=0.0)


def test_access_log_lines_have_rfc3339_times_and_the_identity(tmp_path: Path):
    assert rfc3339(1738324800.1239) == "2025-01-31T12:00:00.123Z"
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    path = tmp_path / "logs" / "access.jsonl"
    access = AccessLog(str(path), max_file_mb=1, max_files=2)
    entry = (1738324800.5, "r1", ACME, "POST", "/v2/models/clf/infer", "clf", "3", "stable", 200, 0.00125, 90, 60, None)
    for _ in range(10_000):  # about 3 MB: rotated twice, two rotated files kept
        access.record(entry)
    access.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["access.jsonl", "access.jsonl.1", "access.jsonl.2"]
    assert all(p.stat().st_size <= 1024 * 1024 for p in path.parent.iterdir())
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {
        "time": "2025-01-31T12:00:00.500Z",
        "request_id": "r1",
        "identity": "acme-web",
        "tenant": "acme",
        "priority": "interactive",
        "method": "POST",
        "path": "/v2/models/clf/infer",
        "model": "clf",
        "version": "3",
        "role": "stable",
        "status": 200,
        "latency_ms": 1.25,
        "bytes": 90,
        "request_bytes": 60,
        "throttled": None,
    }
    assert re.fullmatch(r"(\{[^\n]*\}\n)+", path.read_text())


def test_access_log_lines_escape_what_callers_send():
    odd = 'id"with\\quotes\nand \u00e9'
    entry = (0.0, odd, Caller(None), "POST", "/v2/models/\u00fcber/infer", None, None, None, 404, 12.0, 0, 0, "rate")
    text = line(entry)
    assert text.count(b"\n") == 1 and text.endswith(b"}\n")
    record = json.loads(text)
    assert (record["request_id"], record["path"], record["identity"]) == (odd, "/v2/models/\u00fcber/infer", None)
    assert (record["latency_ms"], record["throttled"]) == (12000.0, "rate")
