"""README.md's configuration table is the one scripts/settings_table.py generates from
service/settings.py: a setting added, renamed or given a new default without the README fails here."""

from __future__ import annotations

import importlib.util
import re

from api_tests.harness import REPO
from kdserve.service.settings import Settings

spec = importlib.util.spec_from_file_location("settings_table", REPO / "scripts" / "settings_table.py")
settings_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(settings_table)


def test_every_setting_is_in_the_readme_table():
    documented = readme_rows()
    missing = [f"KDSERVE_{name.upper()}" for name in Settings.model_fields
               if f"KDSERVE_{name.upper()}" not in documented]
    assert not missing, f"README.md lacks {missing}: run .venv/bin/python scripts/settings_table.py --write"
    stale = set(documented) - {f"KDSERVE_{name.upper()}" for name in Settings.model_fields}
    assert not stale, f"README.md documents settings that do not exist: {sorted(stale)}"


def test_the_table_is_the_generated_one():
    assert settings_table.readme_table((REPO / "README.md").read_text()) == settings_table.table(), (
        "README.md's configuration table is out of date: run .venv/bin/python scripts/settings_table.py --write")


def readme_rows() -> list[str]:
    table = settings_table.readme_table((REPO / "README.md").read_text())
    return re.findall(r"^\| `(KDSERVE_[A-Z0-9_]+)` \|", table, flags=re.M)
