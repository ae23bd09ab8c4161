"""The catalog: the bundled default reproduces SPEC §3, and every bad file names its problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import load_catalog
from service.domain.catalog import CatalogError, LimitValue, parse_catalog_text

pytestmark = pytest.mark.unit

PRO_FEATURES = {
    "aiInsights",
    "advancedAnalytics",
    "habitStacking",
    "identitySystem",
    "dataExport",
    "customThemes",
    "prioritySupport",
}

GOOD = """
default_plan = "free"
features = ["a", "b"]
limits = ["n"]
[plans.free]
rank = 0
clerk_slugs = ["free"]
features = ["a"]
limits = { n = 1 }
[plans.pro]
rank = 10
clerk_slugs = ["pro"]
clerk_plan_ids = ["cplan_pro"]
features = ["a", "b"]
limits = { n = "unlimited" }
"""


def test_bundled_catalog_matches_spec_table() -> None:
    catalog = load_catalog(None)
    assert catalog.default_plan_name == "free"
    assert catalog.past_due_grace_seconds == 3 * 24 * 3600
    free, pro, lifetime = (catalog.plans[n] for n in ("free", "pro", "lifetime"))
    assert (free.rank, pro.rank, lifetime.rank) == (0, 10, 20)
    assert lifetime.lifetime and not pro.lifetime and not free.lifetime
    assert free.features == {"aiInsights"}
    assert pro.features == PRO_FEATURES == lifetime.features
    assert free.limits == {
        "maxHabits": LimitValue(10),
        "maxGoals": LimitValue(3),
        "aiInsightsPerMonth": LimitValue(20),  # metered (SPEC §10.1)
    }
    assert pro.limits["aiInsightsPerMonth"] == LimitValue(500)
    assert catalog.meters == {"aiInsightsPerMonth": "billing_period"}
    assert pro.limits["maxHabits"].unlimited and lifetime.limits["maxGoals"].unlimited
    for slug in ("free_user", "free_org", "free"):
        assert catalog.match(slug, None).plan is free
    for slug in ("pro", "pro_monthly", "pro_yearly"):
        assert catalog.match(slug, None).plan is pro
    assert catalog.match("lifetime", None).plan is lifetime


def test_unknown_slug_maps_to_default_and_is_flagged() -> None:
    catalog = load_catalog(None)
    match = catalog.match("some_unknown_thing", "cplan_x")
    assert match.plan.name == "free" and not match.known


def test_plan_ids_map_when_slug_is_unknown() -> None:
    catalog = parse_catalog_text(GOOD)
    assert catalog.match(None, "cplan_pro").plan.name == "pro"
    assert catalog.match("renamed", "cplan_pro").known


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (('clerk_slugs = ["pro"]', 'clerk_slugs = ["free"]'), "'free' is mapped twice"),
        (('default_plan = "free"', 'default_plan = "gold"'), "default_plan 'gold'"),
        (("limits = { n = 1 }", 'limits = { n = "lots" }'), "limit 'n' must be"),
        (("limits = { n = 1 }", "limits = { n = -1 }"), "limit 'n' must be"),
        (("limits = { n = 1 }", "limits = { n = 1.5 }"), "limit 'n' must be"),
        (('features = ["a"]', 'features = ["a", "zzz"]'), "feature 'zzz' is not declared"),
        (("limits = { n = 1 }", "limits = { n = 1, m = 2 }"), "limit 'm' is not declared"),
        (("limits = { n = 1 }", "limits = {}"), "no value for limit(s) n"),
        (("rank = 10", "rank = 0"), "rank 0 is also plan 'free'"),
        (('default_plan = "free"', 'default_plan = "free'), "not valid TOML"),
    ],
)
def test_bad_catalog_is_refused_with_a_message_naming_the_problem(
    mutation: tuple[str, str], message: str
) -> None:
    old, new = mutation
    assert old in GOOD
    with pytest.raises(CatalogError) as err:
        parse_catalog_text(GOOD.replace(old, new, 1), "my.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("my.toml")


def test_missing_catalog_file_names_the_variable(tmp_path: object) -> None:
    with pytest.raises(CatalogError, match=r"ENTITLEMENTS_CATALOG=/nonexistent\.toml"):
        load_catalog("/nonexistent.toml")


def test_the_fingerprint_follows_what_answers_depend_on_not_the_spelling() -> None:
    bundled = load_catalog(None)
    assert bundled.fingerprint == load_catalog(None).fingerprint
    text = (Path(__file__).parents[2] / "service" / "default_catalog.toml").read_text()
    respelled = "# a comment\n" + text.replace("maxGoals = 3,", "maxGoals   = 3,")
    assert parse_catalog_text(respelled).fingerprint == bundled.fingerprint
    for changed in (
        text.replace("maxGoals = 3,", "maxGoals = 4,"),
        text.replace('reset = "billing_period"', 'reset = "month"'),
        text.replace('features = ["aiInsights"]', 'features = ["aiInsights", "dataExport"]'),
        text.replace('default_plan = "free"', 'default_plan = "pro"'),
        text.replace("past_due_grace_seconds = 259200", "past_due_grace_seconds = 1"),
        text.replace('"pro_yearly"]', '"pro_yearly", "pro_2027"]'),
    ):
        assert changed != text
        assert parse_catalog_text(changed).fingerprint != bundled.fingerprint


METERED = """
default_plan = "free"
features = []
limits = ["maxHabits", "aiInsightsPerMonth"]
[meters.aiInsightsPerMonth]
reset = "billing_period"
[plans.free]
rank = 0
limits = { maxHabits = 10, aiInsightsPerMonth = 20 }
[plans.pro]
rank = 10
clerk_slugs = ["pro"]
limits = { maxHabits = "unlimited", aiInsightsPerMonth = 500 }
"""


def test_metered_limits_are_declared_under_meters() -> None:
    from service.domain.catalog import Reset

    catalog = parse_catalog_text(METERED)
    assert catalog.meters == {"aiInsightsPerMonth": Reset.BILLING_PERIOD}
    assert catalog.plans["pro"].limits["aiInsightsPerMonth"] == LimitValue(500)
    daily = parse_catalog_text(METERED.replace('"billing_period"', '"day"'))
    assert daily.fingerprint != catalog.fingerprint


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("[meters.aiInsightsPerMonth]", "[meters.nope]"),
        ('reset = "billing_period"', 'reset = "weekly"'),
        ('reset = "billing_period"', 'reset = "day"\nresets = "day"'),
    ],
)
def test_a_bad_meter_is_refused_by_name(old: str, new: str) -> None:
    with pytest.raises(CatalogError, match="meters"):
        parse_catalog_text(METERED.replace(old, new))
