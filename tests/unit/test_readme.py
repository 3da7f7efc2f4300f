"""The README's settings table is the registry's, word for word."""

from pathlib import Path

from cjs_proxy.admin.cli import with_settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_matches_registry() -> None:
    text = README.read_text(encoding="utf-8")
    assert text == with_settings_table(text), "README settings table is stale: run `make readme-table`"
