"""`cag routes apply | show` against a real registry: the example rule files apply as new versions, a stale
--expected-version is refused, and malformed files fail before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from cag.cli.routes_cmd import read_rules_file
from cag.errors import InvalidInputError
from tests.conftest import EXAMPLES
from tests.integration.cli.conftest import Cli

ACME = EXAMPLES / "routes" / "acme.yaml"


async def test_apply_stores_the_file_as_the_next_version_and_show_reads_it(cli: Cli) -> None:
    code, out, err = await cli("routes", "apply", str(ACME), "--registry", cli.registry, "--reason", "first")
    assert (code, out.strip()) == (0, "1"), err
    code, out, err = await cli("routes", "apply", str(ACME), "--registry", cli.registry, "--expected-version", "1")
    assert (code, out.strip()) == (0, "2"), err
    code, out, err = await cli("routes", "show", "--tenant", "acme", "--registry", cli.registry)
    assert code == 0, err
    assert "version 2" in out
    assert "billing-intent" in out and "restocking fee" in out


async def test_a_stale_expected_version_is_refused(cli: Cli) -> None:
    assert (await cli("routes", "apply", str(ACME), "--registry", cli.registry))[0] == 0
    code, _, err = await cli("routes", "apply", str(ACME), "--registry", cli.registry, "--expected-version", "7")
    assert code == 1 and "ABORTED" in err and "version 1" in err


async def test_a_rule_for_an_unlisted_route_is_refused_naming_it(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("tenant: acme\nroutes: []\nrules:\n  - {id: r1, route: billing, keywords: [refund]}\n")
    code, _, err = await cli("routes", "apply", str(bad), "--registry", cli.registry)
    assert code == 2 and "rules[0].route" in err


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[1, 2]", "expected a mapping"),
        ("routes: []\nrules: []\n", "no tenant"),
        ("tenant: acme\nrules: {id: r}\n", "`rules` must be a list"),
        ("tenant: acme\nrules:\n  - {id: r, route: b, when: x}\n", "unknown key(s) when"),
        ("tenant: acme\nroutes:\n  - {route: b, priority: high}\n", "routes[0].priority must be a whole number"),
        ("tenant: [unclosed\n", "not valid YAML"),
    ],
)
def test_malformed_files_are_refused_before_anything_is_sent(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInputError) as caught:
        read_rules_file(path)
    assert problem in str(caught.value)


def test_the_example_files_read() -> None:
    for name, tenant, routes in (("acme", "acme", {"billing", "shipping"}), ("globex", "globex", {"api"})):
        read, rules, infos = read_rules_file(EXAMPLES / "routes" / f"{name}.yaml")
        assert read == tenant and {i.route for i in infos} == routes and rules
