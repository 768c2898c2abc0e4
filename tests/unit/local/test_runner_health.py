"""The runner's health URL: well while its loop goes round, not once the loop has stopped coming round."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from kubeforge.local.runner.health import STALE, Health


def test_the_health_url_answers_200_while_the_loop_goes_round_and_503_with_why_after() -> None:
    health = Health()
    server = health.serve("127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
            assert resp.status == 200
        health.beat = time.monotonic() - STALE - 5  # a loop that last came round over STALE seconds ago
        with pytest.raises(urllib.error.HTTPError) as hung:
            urllib.request.urlopen(f"{url}/healthz", timeout=5)
        assert hung.value.code == 503
        assert f"the runner's loop has not come round for {STALE + 5:.0f} s" in hung.value.read().decode()
        with pytest.raises(urllib.error.HTTPError) as elsewhere:
            urllib.request.urlopen(f"{url}/metrics", timeout=5)
        assert elsewhere.value.code == 404
    finally:
        server.shutdown()
