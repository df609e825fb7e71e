"""A refused profile reload names file, line, path and rule, never a value: a value substituted from the
environment (a partner password in `upstream.base_url`) must reach neither the 422 body nor the
`profiles_reload_refused` log line (auth review F8)."""

from __future__ import annotations

from admin_helpers import AdminHarness, LogCapture

SECRET = "S3cr3t-Partner-Pw"


async def test_reload_refusal_quotes_no_substituted_value(admin: AdminHarness, captured_logs: LogCapture) -> None:
    environ = admin.gateway.state.environ
    environ["PARTNER_URL_ANALYTICS_INFINITY_VALLEY"] = f"https://svc-user:{SECRET}@api.infinity-valley.example/v1"
    async with admin.session.post(admin.url + "/v1/admin/reload", headers=admin.auth("gateway:admin")) as response:
        status, text = response.status, await response.text()
        body = await response.json(content_type=None)
    assert status == 422
    assert SECRET not in text
    assert "svc-user" not in text
    (violation,) = body["violations"]
    # Still useful: the file and line, the path and the rule that failed.
    assert violation["path"].endswith("analytics-infinity-valley.yaml:16")
    assert violation["reason"].startswith("upstream.base_url: does not match the required pattern ")

    await admin.gateway.state.reload_logged()
    refused = [event for event in captured_logs.events if event.get("event") == "profiles_reload_refused"]
    assert refused
    assert "upstream.base_url: does not match the required pattern" in str(refused)
    assert SECRET not in captured_logs.text()
