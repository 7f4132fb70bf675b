"""R4 — schemathesis fuzzes every operation of `/api/openapi.json` against a real `mes-central serve`.

How: a fresh database gets the demo plant (`mes-central seed demo`), central runs as its own process on a free
port (real HTTP, SQLite; PostgreSQL too under `make reliability`), and a user whose custom role holds every
permission with scope ALL signs in. For every operation of the document central serves, schemathesis
generates cases from the document (positive: valid per the schema; then negative: violating it) and each case
is sent over HTTP and checked: not a 5xx, status code documented, content type documented, body valid against
the documented schema (success envelope or the error envelope). Path parameters are drawn half of the time
from ids and codes that exist in the seeded plant, so fuzzed reads and writes reach real rows, not only 404s.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from central.domain.permissions import PERMISSIONS
from tests import services
from tests.brokers import free_port
from tests.reliability.conftest import Recorder
from tests.reliability.figures import ROOT, size

EXAMPLES = size(20, 100)  # per operation (quality-bars.md R4: ≥ 100 in the full run)
NEGATIVE_SHARE = 4  # one case in four violates the schema: the validation layer is fuzzed too
BACKENDS = size(("sqlite",), ("sqlite", "postgresql") if services.postgres_available() else ("sqlite",))
FUZZ_EMAIL, FUZZ_PASSWORD, FUZZ_ROLE = "fuzz@example.com", "Fuzz-Test-123!", "fuzz_all"
CHECKS: dict[str, Callable[..., Any]] = {
    "not_a_server_error": not_a_server_error,
    "status_code_conformance": status_code_conformance,
    "content_type_conformance": content_type_conformance,
    "response_schema_conformance": response_schema_conformance,
}


@dataclass
class Tally:
    cases: Counter[str] = field(default_factory=Counter)  # per operation label
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: int = 0
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # by check
    skipped_self_sabotage: int = 0


@dataclass
class Fuzzer:
    """Who fuzzes: a custom role with every permission (scope ALL) and its one user, signed in beforehand."""

    role_id: int
    user_id: int
    token: str
    upstream_token: str  # central's ERP/TPM pulls read its own mocks with this session
    spare: list[str]  # one session per sign-out case, which ends the session it is called with


async def _prepare(db_url: str, sessions: int) -> Fuzzer:
    """Demo plant, fuzz role, fuzz user and its sessions, straight through the service layer (no HTTP yet)."""
    from pydantic import SecretStr

    from central.config import Settings
    from central.db.engine import create_database
    from central.schemas.auth import RoleCreate, UserCreate
    from central.services import auth, users
    from central.services.demo_seed import seed_demo
    from central.services.uow import UnitOfWork

    settings = Settings(database_url=db_url, allow_demo_seed=True, migrate_on_start=False)
    db = create_database(db_url, pool_size=1)
    try:
        async with UnitOfWork(db.writer) as uow:
            await seed_demo(uow, settings)
        async with UnitOfWork(db.writer) as uow:
            role = await users.create_role(
                uow,
                RoleCreate(code=FUZZ_ROLE, name="Fuzzer", permissions=sorted(PERMISSIONS), data_scope="ALL"),
            )
            user = await users.create_user(
                uow,
                UserCreate(
                    email=FUZZ_EMAIL, name="fuzzer", password=SecretStr(FUZZ_PASSWORD), roles=[FUZZ_ROLE]
                ),
            )
            role_id = role.id
        tokens = []
        for _ in range(sessions + 2):
            async with UnitOfWork(db.writer) as uow:
                signed = await auth.sign_in(
                    uow,
                    FUZZ_EMAIL,
                    FUZZ_PASSWORD,
                    ttl_seconds=settings.session_ttl_seconds,
                    max_failures=settings.sign_in_max_failures,
                    window_seconds=settings.sign_in_window_seconds,
                )
                tokens.append(signed.token)
    finally:
        await db.dispose()
    return Fuzzer(role_id, int(user["id"]), tokens[0], tokens[1], tokens[2:])


class Central:
    """`mes-central serve` as a child process on a free port."""

    def __init__(self, workdir: Path, db_url: str, fuzzer: Fuzzer) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "central.log"
        self.fuzzer = fuzzer
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MES_")}
        self.env.update(
            MES_DATABASE_URL=db_url,
            MES_HTTP_PORT=str(self.port),
            MES_MQTT_URL="disabled",
            MES_ALLOW_DEMO_SEED="true",
            MES_MIGRATE_ON_START="false",
            MES_LOG_LEVEL="WARNING",
        )
        # ERP and TPM pulls read central's own demo mocks, so the sync operations do their work instead of
        # answering 502 "not configured".
        for system in ("erp", "tpm"):
            self.env[f"MES_{system.upper()}_BASE_URL"] = f"{self.base}/api/integration/mock/{system}"
            self.env[f"MES_{system.upper()}_API_KEY"] = fuzzer.upstream_token
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "central.cli", "serve"], cwd=ROOT, env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"central exited early:\n{self.tail()}"
            try:
                if requests.get(f"{self.base}/api/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"central not healthy within 30 s:\n{self.tail()}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(text[-lines:])


def _call(base: str, token: str, method: str, path: str, **kw: Any) -> Any:
    r = requests.request(
        method, f"{base}/api{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30, **kw
    )
    assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
    return r.json()["data"]


def _items(base: str, token: str, path: str) -> list[dict[str, Any]]:
    return list(_call(base, token, "GET", path, params={"pageSize": 100})["items"])


def _real_values(base: str, token: str) -> dict[str, list[str]]:
    """Ids and codes of the seeded plant, by path parameter name, so fuzzed paths hit real rows."""
    g = lambda path: _items(base, token, path)  # noqa: E731
    lines, runs, lots = g("/lines"), g("/runs"), g("/material-lots")
    ids: set[int] = set()
    for path in ("/users", "/slot-mappings", "/fai-templates", "/audit-logs"):
        ids.update(int(x["id"]) for x in g(path))
    ids.update(int(r["id"]) for r in _call(base, token, "GET", "/roles"))
    units = [u["sn"] for r in runs for u in _items(base, token, f"/runs/{r['runNo']}/units")]
    slots = [s["id"] for ln in lines for s in _items(base, token, f"/lines/{ln['id']}/feeder-slots")]
    pools: dict[str, list[Any]] = {
        "id": sorted(ids),
        "lineId": [ln["id"] for ln in lines],
        "stationCode": [s["code"] for s in g("/stations")],
        "code": [o["code"] for o in g("/operations")] + [e["equipmentCode"] for e in g("/tpm/equipment")],
        "routingCode": [r["code"] for r in g("/routes")],
        "specId": [s["id"] for s in g("/data-collection-specs")],
        "runNo": [r["runNo"] for r in runs],
        "woNo": [w["woNo"] for w in g("/work-orders")],
        "sn": units,
        "materialCode": [lot["materialCode"] for lot in lots],
        "lotNo": [lot["lotNo"] for lot in lots],
        "edgeId": [e["edgeId"] for e in _call(base, token, "GET", "/integration/edges")],
        "slotId": slots,
        "taskNo": [t["taskNo"] for t in g("/tpm/maintenance-tasks")],
        "ruleId": [r["id"] for r in g("/oqc/sampling-rules")],
        "versionNo": [1, 2],
        "entity": ["work-orders", "routes", "materials", "boms", "work-centers", "equipment"],
    }
    # Rows the seed has none of (FAI, OQC, defects, …) are created by the fuzzer itself: small ids reach them.
    for name in ("faiId", "oqcId", "fqcId", "defectId", "taskId", "itemId", "configId", "eventId"):
        pools[name] = [1, 2, 3]
    return {k: [str(v) for v in vs] for k, vs in pools.items() if vs}


def _db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        target = tmp_path / "mes.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    with services.pg_copy(request.getfixturevalue("pg_template"), "mes_r4_") as url:
        yield url


@pytest.fixture
def central(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Central]:
    gen = _db_url(request.param, request, tmp_path)
    url = next(gen)
    server = Central(tmp_path, url, asyncio.run(_prepare(url, EXAMPLES + EXAMPLES // NEGATIVE_SHARE)))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        gen.close()


def _int_is(raw: str, wanted: int) -> bool:
    return raw.isascii() and raw.isdigit() and int(raw) == wanted


@pytest.mark.parametrize("central", BACKENDS, indirect=True)
def test_fuzz_every_operation(central: Central, record_figures: Recorder) -> None:
    started = time.monotonic()
    base = central.base
    fuzzer = central.fuzzer
    token, spare = fuzzer.token, list(fuzzer.spare)
    pools = _real_values(base, token)

    def sabotages_itself(case: schemathesis.Case) -> bool:
        """Only what would lock the fuzzer out (its own role or user edited); never used to hide a defect."""
        pp = case.path_parameters or {}
        label = f"{case.method.upper()} {case.path}"
        if label in ("PATCH /api/roles/{id}", "DELETE /api/roles/{id}"):
            return _int_is(str(pp.get("id", "")), fuzzer.role_id)
        if label == "PATCH /api/users/{id}":
            return _int_is(str(pp.get("id", "")), fuzzer.user_id)
        return False

    # Loaded as a document, not from_url: from_url leaves out the operation that serves the document itself.
    document = requests.get(f"{base}/api/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [op.ok() for op in schema.get_all_operations()]
    documented = sum(len(ops) for ops in document["paths"].values())
    assert len(operations) == documented >= 150, (len(operations), documented)
    tally = Tally()
    http = requests.Session()
    samples: list[str] = []
    nothing_to_negate: list[str] = []

    def send(case: schemathesis.Case) -> None:
        if sabotages_itself(case):
            tally.skipped_self_sabotage += 1
            hypothesis.reject()
        label = f"{case.method.upper()} {case.path}"
        bearer = spare.pop() if label == "POST /api/auth/sign-out" and spare else token
        headers = {"Authorization": f"Bearer {bearer}"}
        response = case.call(base_url=base, session=http, headers=headers, timeout=60)
        http.cookies.clear()  # a fuzzed sign-in that happened to succeed must not change who calls next
        tally.cases[label] += 1
        tally.statuses[response.status_code] += 1
        if response.status_code >= 500:
            tally.server_errors += 1
        for name, check in CHECKS.items():
            try:
                case.validate_response(response, checks=[check], headers=headers)
            except (AssertionError, BaseExceptionGroup) as exc:  # a failure (group) naming what was off
                tally.violations[name].append(f"{label} → {response.status_code}: {str(exc)[:1500]}")
                if sum(1 for x in samples if x.startswith(f"[{name}] {label} ")) < 2 and len(samples) < 60:
                    samples.append(f"[{name}] {label} → {response.status_code}: {str(exc)[:1500]}")

    for op in operations:
        names = [p.name for p in op.path_parameters]
        generic = op.as_strategy()
        positive: Any = generic
        if names and all(n in pools for n in names):
            real = st.fixed_dictionaries({n: st.sampled_from(pools[n]) for n in names})
            positive = st.one_of(generic, real.flatmap(lambda pp, op=op: op.as_strategy(path_parameters=pp)))
        runs = [
            (positive, EXAMPLES),
            (
                op.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE),
                EXAMPLES // NEGATIVE_SHARE,
            ),
        ]
        for strategy, n in runs:

            @hypothesis.settings(
                max_examples=n,
                deadline=None,
                database=None,
                phases=[hypothesis.Phase.generate],
                suppress_health_check=list(hypothesis.HealthCheck),
                verbosity=hypothesis.Verbosity.quiet,
            )
            @hypothesis.given(case=strategy)
            def fuzz(case: schemathesis.Case) -> None:
                send(case)

            try:
                fuzz()
            except hypothesis.errors.Unsatisfiable:
                # An operation with no parameters and no body has nothing a negative case could violate.
                nothing_to_negate.append(f"{op.method.upper()} {op.path}")

    seconds = time.monotonic() - started
    per_op = sorted(tally.cases.get(f"{op.method.upper()} {op.path}", 0) for op in operations)
    violations = sum(len(v) for k, v in tally.violations.items() if k != "not_a_server_error")
    record_figures(
        "R4",
        "API fuzzing with schemathesis (every operation, authenticated with every permission)",
        backend=central.env["MES_DATABASE_URL"].split(":")[0],
        schemathesis=schemathesis.__version__,
        operations=len(operations),
        examples_asked_per_operation=f"{EXAMPLES} positive + {EXAMPLES // NEGATIVE_SHARE} negative",
        examples_per_operation_min=per_op[0],
        examples_per_operation_median=per_op[len(per_op) // 2],
        operations_below_asked=sum(1 for n in per_op if n < EXAMPLES),
        requests_sent=sum(tally.cases.values()),
        responses_5xx=tally.server_errors,
        schema_violations=violations,
        operations_without_negative_cases=len(nothing_to_negate),
        self_sabotage_cases_skipped=tally.skipped_self_sabotage,
        statuses=", ".join(f"{k}:{v}" for k, v in sorted(tally.statuses.items())),
        seconds=round(seconds, 1),
    )
    by_kind = Counter(
        (check, entry.split(": ", 1)[0]) for check, entries in tally.violations.items() for entry in entries
    )
    assert tally.server_errors == 0 and violations == 0, (
        f"{tally.server_errors} responses 5xx, {violations} off their schema:\n"
        + "\n".join(f"  {n} × [{check}] {what}" for (check, what), n in by_kind.most_common())
        + "\n\n"
        + "\n\n".join(samples)
        + f"\n--- central log ---\n{central.tail(80)}"
    )


def _unbounded(schema: Any, defs: dict[str, Any], where: str, seen: set[str]) -> Iterator[str]:
    """Integers without a maximum within BIGINT, query strings without a maxLength."""
    if isinstance(schema, list):
        for i, sub in enumerate(schema):
            yield from _unbounded(sub, defs, f"{where}[{i}]", seen)
        return
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name not in seen:
            yield from _unbounded(defs[name], defs, name, seen | {name})
        return
    if schema.get("type") == "integer" and not schema.get("maximum", 2**63) < 2**63:
        yield f"{where}: integer without a BIGINT maximum"
    if where.startswith("query ") and schema.get("type") == "string" and "maxLength" not in schema:
        if "enum" not in schema and "format" not in schema:
            yield f"{where}: query string without maxLength"
    for key in ("properties", "items", "anyOf", "oneOf", "allOf", "additionalProperties"):
        sub = schema.get(key)
        if isinstance(sub, dict) and key == "properties":
            for name, prop in sub.items():
                yield from _unbounded(prop, defs, f"{where}.{name}", seen)
        elif sub is not None:
            yield from _unbounded(sub, defs, where, seen)


def test_documented_inputs_fit_the_server(record_figures: Recorder) -> None:
    """What the fuzzer found, for every input at once: a documented integer fits a BIGINT (else the database
    answers 500) and a documented query string is bounded (else the request line outgrows the HTTP parser,
    which answers a plain-text 400 outside the envelope)."""
    from central import __version__
    from central.api.app import all_endpoints
    from central.api.openapi import build

    doc = build(all_endpoints(), __version__)
    defs = doc["components"]["schemas"]
    found: list[str] = []
    inputs = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            label = f"{method.upper()} {path}"
            for p in op["parameters"]:
                if p["in"] == "query":
                    inputs += 1
                    found += _unbounded(p["schema"], defs, f"query {label} {p['name']}", set())
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body is not None:
                inputs += 1
                found += _unbounded(body, defs, f"body {label}", set())
    record_figures(
        "R4", "API fuzzing with schemathesis", documented_inputs_checked=inputs, unbounded=len(found)
    )
    assert not found, "\n".join(sorted(set(found)))
