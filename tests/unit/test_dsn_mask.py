"""DATABASE_URL as the refusal lines show it: the password masked wherever it is written, and
more masked rather than less when the URL is odd."""

from __future__ import annotations

import pytest

from service.adapters.postgres.connect_errors import mask_dsn

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("postgresql://db/app?password=s3cret&sslmode=require",
         "postgresql://db/app?password=***&sslmode=require"),
        ("postgresql://app:p@ss/w?rd@db/app", "postgresql://app:***@db/app"),
        ("postgresql://app:s3cret@db:port/app", "postgresql://app:***@db:port/app"),
        ("host=db password=s3cret", "host=db password=***"),
        ("not a url", "not a url"),
    ],
)  # fmt: skip
def test_the_password_never_shows(dsn: str, shown: str) -> None:
    assert mask_dsn(dsn) == shown
    assert "s3cret" not in mask_dsn(dsn) and "rd@" not in mask_dsn(dsn)
