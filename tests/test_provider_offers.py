"""Which models a provider offers, at what price: ``--models`` and ``--price-for``."""

from __future__ import annotations

import pytest

from deai.core.errors import InvalidInput
from deai.provider import __main__ as cli
from deai.provider.agent import available_models, offer_prices

CHAT, EMB = "SmolLM2-135M-Instruct", "all-MiniLM-L6-v2"


def test_every_installed_model_is_available_by_default() -> None:
    assert {EMB, CHAT} <= set(available_models())


def test_each_model_gets_its_own_price_or_the_default() -> None:
    assert offer_prices((EMB, CHAT), 900, {CHAT: 300}) == {EMB: 900, CHAT: 300}
    assert offer_prices((EMB,), 900, {}) == {EMB: 900}
    with pytest.raises(InvalidInput):
        offer_prices((EMB,), 900, {CHAT: 300})  # priced but not offered


def test_command_line_names_models_and_prices_by_catalog_name() -> None:
    args = cli.parser().parse_args([
        "--coordinator", "http://x", "--key", "k", "--models",
        f"sentence-transformers/{EMB}, {CHAT}", "--price", "900",
        "--price-for", f"{CHAT}=300", "--price-for", f"HuggingFaceTB/{CHAT}=250"])
    assert args.models == (EMB, CHAT)
    assert dict(args.price_for) == {CHAT: 250}  # the last one given wins


@pytest.mark.parametrize("argv", [
    ["--models", "nope"],
    ["--models", ","],
    ["--price-for", f"{CHAT}"],
    ["--price-for", f"{CHAT}=-5"],
    ["--price-for", "nope=5"],
])
def test_bad_models_or_prices_are_argument_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--coordinator", "http://x", "--key", "k", *argv])
    assert exc.value.code == 2


def test_a_price_for_a_model_not_offered_is_an_argument_error() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--coordinator", "http://x", "--key", "k", "--models", EMB,
                  "--price-for", f"{CHAT}=5"])
    assert exc.value.code == 2
