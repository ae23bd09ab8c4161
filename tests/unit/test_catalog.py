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


# ---- the strict schema (issue 21): each of these was accepted before -------------------------


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        (
            'clerk_slugs = ["pro"]',
            'clerk_slug = ["pro"]',
            12,
            "plans.pro: unknown key `clerk_slug` (did you mean `clerk_slugs`?)",
        ),
        (
            'features = ["a", "b"]\nlimits = { n = "unlimited" }',
            'feature = ["a", "b"]\nlimits = { n = "unlimited" }',
            14,
            "plans.pro: unknown key `feature` (did you mean `features`?)",
        ),
        (
            'default_plan = "free"',
            'default_plan = "free"\ndefault_plans = "free"',
            3,
            "top level: unknown key `default_plans` (did you mean `default_plan`?)",
        ),
        ("[plans.pro]", "[plan.pro]", 10, "top level: unknown key `plan` (did you mean `plans`?)"),
        ("rank = 10", 'rank = 10\n"lifetim" = true', 12, "plans.pro: unknown key `lifetim`"),
    ],
)
def test_an_unknown_key_is_refused_with_its_line_and_a_suggestion(
    old: str, new: str, line: int, message: str
) -> None:
    assert old in GOOD
    with pytest.raises(CatalogError) as err:
        parse_catalog_text(GOOD.replace(old, new, 1), "my.toml")
    assert str(err.value).startswith(f"my.toml:{line}: ")
    assert message in str(err.value)


def test_every_unknown_key_is_reported_at_once() -> None:
    text = GOOD.replace("rank = 0", "rank = 0\nfeatur = []").replace("rank = 10", "rnk = 10")
    with pytest.raises(CatalogError) as err:
        parse_catalog_text(text, "my.toml")
    assert len(err.value.problems) == 2
    assert "my.toml:7: plans.free: unknown key `featur` (did you mean `features`?)" in str(
        err.value
    )
    assert "my.toml:12: plans.pro: unknown key `rnk` (did you mean `rank`?)" in str(err.value)


def test_a_paid_plan_no_clerk_plan_reaches_is_refused() -> None:
    text = GOOD.replace('clerk_slugs = ["pro"]\nclerk_plan_ids = ["cplan_pro"]\n', "")
    with pytest.raises(CatalogError) as err:
        parse_catalog_text(text, "my.toml")
    assert str(err.value).startswith("my.toml:10: plan 'pro' can never be reached")
    # A plan given only by `entitlements grant` says so.
    granted = parse_catalog_text(text.replace("rank = 10", "rank = 10\ngrant_only = true"))
    assert granted.plans["pro"].grant_only
    # The default plan needs no slug: it is what everyone without a paid plan has.
    assert parse_catalog_text(GOOD.replace('clerk_slugs = ["free"]\n', "")).default_plan


def test_a_paid_plan_without_features_is_a_warning() -> None:
    assert parse_catalog_text(GOOD).warnings == ()
    catalog = parse_catalog_text(
        GOOD.replace('features = ["a", "b"]\nlimits = { n = "u', 'limits = { n = "u')
    )
    assert catalog.warnings == (
        "plan 'pro' has no features (it differs from others only by its limits)",
        "feature 'b' is declared but no plan has it (only an override can grant it)",
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'features = ["a"]',
            'features = ["aa"]',
            "feature 'aa' is not declared in `features` (did you mean `a`?)",
        ),
        (
            "limits = { n = 1 }",
            "limits = { n = 1, nn = 2 }",
            "limit 'nn' is not declared in `limits` (did you mean `n`?)",
        ),
        (
            'default_plan = "free"',
            'default_plan = "fre"',
            "default_plan 'fre' is not a declared plan (did you mean `free`?)",
        ),
    ],
)
def test_an_undeclared_name_gets_a_suggestion_and_a_line(old: str, new: str, message: str) -> None:
    with pytest.raises(CatalogError) as err:
        parse_catalog_text(GOOD.replace(old, new, 1), "my.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("my.toml:")


def test_key_lines_skip_multi_line_values() -> None:
    from service.domain.catalog_schema import KeyLines

    text = 'a = [\n  "x = 1",\n  "[y]",\n]\ns = """\nb = 2\n"""\n[t]\n"q.k" = 1\nd.e = 2\n'
    lines = KeyLines(text)
    assert lines.line(("a",)) == 1
    assert lines.line(("b",)) is None
    assert lines.line(("y",)) is None
    assert lines.line(("t", "q.k")) == 9
    assert lines.line(("t", "d", "e")) == 10
    assert lines.line(("t", "missing")) == 8


def test_the_bundled_catalog_has_no_warning() -> None:
    assert load_catalog(None).warnings == ()
