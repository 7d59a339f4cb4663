"""Manifest validation: a bad manifest names the file, the key and the problem."""

from __future__ import annotations

import subprocess
import sys

import pytest

from server.config import ManifestError, load_manifest
from tests.conftest import manifest_text


def test_valid_manifest_loads(tmp_path):
    path = tmp_path / "show.toml"
    path.write_text(manifest_text("demo"))
    show = load_manifest(path, env={})
    assert show.id == "demo"
    assert show.video.width == 640
    assert show.product("MUG-01").price_cents == 1800
    assert show.product("MUG-01").per_buyer_limit == 2


@pytest.mark.parametrize(
    ("old", "new", "key", "problem"),
    [
        ('price = "18.00"', 'price = "18.001"', "products[0].price", "at most 2 decimals"),
        ('price = "18.00"', 'price = "abc"', "products[0].price", "not a decimal"),
        ('price = "18.00"', "price = 18.0", "products[0].price", "decimal string"),
        ("stock = 40", "stock = -1", "products[0].stock", "negative"),
        ('currency = "usd"', 'currency = "usd"\ncolour = "red"', "show.colour", "unknown key"),
        ('title = "Test Show demo"', "", "show.title", "missing"),
        ('sku = "TEE-02"', 'sku = "MUG-01"', "products[1].sku", "duplicate"),
        ("fps = 30", "fps = 0", "show.video.fps", "from 1 to 60"),
    ],
)
def test_bad_manifest_names_file_key_and_problem(tmp_path, old, new, key, problem):
    path = tmp_path / "bad.toml"
    text = manifest_text("demo")
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ManifestError) as err:
        load_manifest(path, env={})
    assert err.value.key == key
    assert problem in err.value.problem
    assert str(path) in str(err.value)


def test_env_overrides_secrets(tmp_path):
    path = tmp_path / "show.toml"
    path.write_text(manifest_text("demo"))
    show = load_manifest(
        path,
        env={"SHOWROOM_STREAM_KEY": "key-from-env-1", "SHOWROOM_STAFF_PASSWORD": "pw-from-env"},
    )
    assert show.stream_key == "key-from-env-1"
    assert show.staff_password == "pw-from-env"


def test_serve_refuses_bad_manifest_with_clear_message(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(manifest_text("demo").replace("stock = 40", "stock = -3"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--manifest",
            str(path),
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert (
        "bad.toml" in proc.stderr
        and "products[0].stock" in proc.stderr
        and "negative" in proc.stderr
    )
