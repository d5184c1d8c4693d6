"""The fake control plane of ``moenet_core.testing``: reports that change its state."""

from __future__ import annotations

from typing import Any

import aiohttp

from moenet_core.testing import FakeControlPlane


async def test_on_post_sees_only_accepted_reports() -> None:
    seen: list[Any] = []
    async with FakeControlPlane() as cp, aiohttp.ClientSession() as http:
        cp.on_post("modify", seen.append)
        url = f"{cp.url}/agent/n1/modify"
        auth = {"Authorization": "Bearer test-token"}

        async with http.post(url, json={"uuid": "u", "status": 1}, headers=auth) as r:
            assert r.status == 200
        assert seen == [{"uuid": "u", "status": 1}]

        cp.fail("modify", 1, status=503)
        async with http.post(url, json={"uuid": "u", "status": 2}, headers=auth) as r:
            assert r.status == 503
        async with http.post(url, json={"uuid": "u", "status": 3}) as r:  # no token
            assert r.status == 401
        assert seen == [{"uuid": "u", "status": 1}]  # neither reached the CP's state

        cp.on_post("modify", None)
        async with http.post(url, json={"uuid": "u", "status": 4}, headers=auth) as r:
            assert r.status == 200
        assert seen == [{"uuid": "u", "status": 1}]
        assert [c.body["status"] for c in cp.calls("modify")] == [1, 2, 3, 4]  # all recorded
