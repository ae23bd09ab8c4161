"""In-memory stand-ins for the clients, for an app's own unit tests (as `temporalio.testing`):
no service, no network. Same public methods, answers and exceptions as `EntitlementsClient`
and `AsyncEntitlementsClient` (a test in this repository holds them to it); plans, per-subject
features and limits and metered usage are set by the test.

    fake = FakeEntitlementsClient(
        plans={"free": Plan(limits={"maxHabits": 10}),
               "pro": Plan(features={"advancedAnalytics"}, limits={"maxHabits": UNLIMITED})},
        default_plan="free",
    )
    fake.set_plan("user_1", "pro")
    assert fake.can_use("user_1", "advancedAnalytics")

Limit checks use the library's own rule (the one proved equal to the service's); usage has no
periods (nothing resets). `fail_with(Unavailable("down"))` makes every call raise, to test an
app's error path.
"""

from entitlements_client._fake import UNLIMITED, FakeEntitlementsClient, Plan
from entitlements_client._fake_async import AsyncFakeEntitlementsClient

__all__ = ["UNLIMITED", "AsyncFakeEntitlementsClient", "FakeEntitlementsClient", "Plan"]
