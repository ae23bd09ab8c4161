"""After all e2e tests: no log any process wrote may hold a secret, an email or a name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import SYNC_SECRET
from tests.support.fake_clerk import SECRET_KEY as CLERK_SECRET_KEY

FORBIDDEN = (
    SYNC_SECRET,
    CLERK_SECRET_KEY,
    "whsec_",
    "ada@example.com",
    "Lovelace",
    "chaos@example.com",
)


@pytest.fixture(scope="session", autouse=True)
def logs_hold_no_secrets_or_personal_data(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    yield
    found = []
    logs = list(tmp_path_factory.getbasetemp().rglob("*.log"))
    for log in logs:
        text = log.read_text(errors="replace")
        found += [(log.name, word) for word in FORBIDDEN if word in text]
    assert not found, f"secrets or personal data in logs: {found[:10]}"
