"""`GET /v1/admin/disclosures`: filters, validation, and cursor paging that stays exact when many records
share one timestamp, against the real SQLite ledger."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import orjson
import pytest
from admin_helpers import AdminHarness

from gateway.ledger import RecordDraft
from gateway.ledger import ledger as ledger_module
from gateway.ledger.records import now_text, parse_time

PAGING_PARTNER = "paging-partner"


def _millisecond_clock() -> str:
    # A record's time is that of its append, in microseconds, so real ties are rare; the ledger's clock
    # truncated to the millisecond makes the many records appended together share timestamps.
    return now_text()[:23] + "000Z"


async def fill_ledger(h: AdminHarness, count: int) -> list[dict[str, Any]]:
    """`count` refusal records appended concurrently (with a millisecond clock, so many share a time),
    plus noise for filters."""
    ledger = h.gateway.state.services.ledger
    subject = h.keys.ledger.subject_ref("paging-subject")
    drafts = [RecordDraft(kind="refusal", caller="svc-a", partner=PAGING_PARTNER, route="r1", purpose="delivery",
                          reason="test", subject_ref=subject if i % 5 == 0 else None) for i in range(count)]
    drafts += [RecordDraft(kind="refusal", caller="svc-b", partner="other-partner", route="r2", reason="test")
               for _ in range(count // 4)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ledger_module, "now_text", _millisecond_clock)
        await asyncio.gather(*(ledger.append(d) for d in drafts))
    return await h.ledger_records(partner=PAGING_PARTNER, limit=None)


async def get(h: AdminHarness, query: str, scope: str = "gateway:audit") -> tuple[int, Any]:
    async with h.session.get(f"{h.url}/v1/admin/disclosures?{query}", headers=h.auth(scope)) as resp:
        return resp.status, orjson.loads(await resp.read())


async def all_pages(h: AdminHarness, query: str, limit: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10_000):
        status, page = await get(h, f"{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200, page
        assert len(page["records"]) <= limit
        records += page["records"]
        cursor = page["next_cursor"]
        if cursor is None:
            return records
        assert len(page["records"]) == limit
    raise AssertionError("paging did not end")


async def test_paging_across_identical_timestamps_returns_every_record_once_in_order(admin: AdminHarness) -> None:
    expected = await fill_ledger(admin, 300)
    group_sizes = Counter(r["time"] for r in expected)
    assert max(group_sizes.values()) > 7, "the test needs records sharing a timestamp across page boundaries"
    for limit in (7, 1, 1000):
        records = await all_pages(admin, f"partner={PAGING_PARTNER}", limit)
        assert [r["id"] for r in records] == [r["id"] for r in expected]
    # A filter that keeps every fifth record, paged: still exact.
    subject = admin.keys.ledger.subject_ref("paging-subject")
    records = await all_pages(admin, f"partner={PAGING_PARTNER}&subject_ref={subject}", 3)
    assert [r["id"] for r in records] == [r["id"] for r in expected if r.get("subject_ref") == subject]
    assert len(records) == 60


async def test_filters_select_records(admin: AdminHarness) -> None:
    expected = await fill_ledger(admin, 40)
    status, page = await get(admin, "caller=svc-b&limit=1000")
    assert status == 200
    assert {r["partner"] for r in page["records"]} == {"other-partner"}
    assert len(page["records"]) == 10
    status, page = await get(admin, f"partner={PAGING_PARTNER}&route=r1&purpose=delivery&kind=refusal&limit=1000")
    assert [r["id"] for r in page["records"]] == [r["id"] for r in expected]
    assert page["next_cursor"] is None
    status, page = await get(admin, f"partner={PAGING_PARTNER}&kind=disclosure")
    assert page["records"] == []
    # A time window: since is inclusive, until exclusive.
    cut = expected[len(expected) // 2]["time"]
    status, page = await get(admin, f"partner={PAGING_PARTNER}&until={cut}&limit=1000")
    assert status == 200
    assert all(r["time"] < cut for r in page["records"])
    status, later = await get(admin, f"partner={PAGING_PARTNER}&since={cut}&limit=1000")
    assert len(page["records"]) + len(later["records"]) == len(expected)
    status, page = await get(admin, f"partner={PAGING_PARTNER}&since=2000-01-01&until=2000-01-02")
    assert status == 200
    assert page["records"] == []


async def test_bad_filters_are_400_with_violations(admin: AdminHarness) -> None:
    await fill_ledger(admin, 4)
    cases = {
        "limit=0": "limit", "limit=1001": "limit", "limit=ten": "limit", "limit=-1": "limit",
        "since=yesterday": "since", "until=2024-13-01": "until", "since=2024-05-02&until=2024-05-01": "until",
        "kind=everything": "kind", "subject_ref=CUSTOMER-42": "subject_ref", "partner=a%20b": "partner",
        "partner=x&partner=y": "partner", "subject_id=CUSTOMER-42": "subject_id", "cursor=!!": "cursor",
        "cursor=eyJ2IjoxfQ": "cursor",
    }
    for query, path in cases.items():
        status, problem = await get(admin, query)
        assert status == 400, query
        assert problem["type"].endswith("malformed-request")
        assert path in [v["path"] for v in problem["violations"]], query
        assert b"CUSTOMER-42" not in orjson.dumps(problem)


async def test_a_cursor_only_resumes_the_query_it_came_from(admin: AdminHarness) -> None:
    await fill_ledger(admin, 10)
    status, page = await get(admin, f"partner={PAGING_PARTNER}&limit=2")
    cursor = page["next_cursor"]
    assert cursor
    status, problem = await get(admin, f"partner=other-partner&limit=2&cursor={cursor}")
    assert status == 400
    assert problem["violations"][0]["path"] == "cursor"
    # The page size may change between pages; the filters may not.
    status, page = await get(admin, f"partner={PAGING_PARTNER}&limit=5&cursor={cursor}")
    assert status == 200
    assert len(page["records"]) == 5


async def test_resuming_after_the_cursor_record_was_pruned(admin: AdminHarness) -> None:
    expected = await fill_ledger(admin, 120)
    status, page = await get(admin, f"partner={PAGING_PARTNER}&limit=10")
    last = page["records"][-1]
    await admin.gateway.state.services.ledger.prune(parse_time(last["time"]) + timedelta(microseconds=1))
    status, page = await get(admin, f"partner={PAGING_PARTNER}&limit=1000&cursor={page['next_cursor']}")
    assert status == 200
    rest = page["records"]
    assert [r["id"] for r in rest] == [r["id"] for r in expected if r["time"] > last["time"]]
