"""Finding libwspush: WSPUSH_LIBRARY, next to the package, the checkout's target/release, and
the error that names every path tried."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import wspush
from wspush import _library

REPO = Path(__file__).resolve().parents[3]


def run_python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != _library.LIBRARY_ENV}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=environment, capture_output=True, text=True, timeout=60
    )


def test_wspush_library_pointing_nowhere_fails_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "libwspush.so"
    result = run_python("import wspush; wspush.version()", tmp_path, WSPUSH_LIBRARY=str(missing))
    assert result.returncode != 0
    assert "LibraryNotFoundError" in result.stderr
    assert f"WSPUSH_LIBRARY={missing} is not a file" in result.stderr
    assert "Paths tried:" in result.stderr and str(missing) in result.stderr


def test_nothing_found_lists_every_path_tried(tmp_path):
    package = tmp_path / "site" / "wspush"
    package.mkdir(parents=True)
    checkout = tmp_path / "work" / "checkout"
    (checkout / "sub").mkdir(parents=True)
    (checkout / "Cargo.toml").write_text("[package]\nname = 'wspush'\n")  # built? no: no target/
    with pytest.raises(_library.LibraryNotFoundError) as info:
        _library.find_library(None, package, checkout / "sub")
    message = str(info.value)
    expected = [package / _library.LIBRARY_FILE, checkout / "target" / "release" / _library.LIBRARY_FILE]
    assert info.value.tried == [str(path) for path in expected]
    for path in expected:
        assert str(path) in message
    assert "cargo build --release" in message and "WSPUSH_LIBRARY" in message


def test_search_order_env_then_next_to_package_then_checkout(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    checkout = tmp_path / "checkout"
    (checkout / "target" / "release").mkdir(parents=True)
    (checkout / "Cargo.toml").write_text("")
    built = checkout / "target" / "release" / _library.LIBRARY_FILE
    built.write_bytes(b"")
    # Walking up from the current directory finds the checkout's build.
    assert _library.find_library(None, package, checkout / "target") == built
    # A copy next to the package wins over the checkout.
    bundled = package / _library.LIBRARY_FILE
    bundled.write_bytes(b"")
    assert _library.find_library(None, package, checkout) == bundled
    # WSPUSH_LIBRARY wins over both.
    chosen = tmp_path / "custom.so"
    chosen.write_bytes(b"")
    assert _library.find_library(str(chosen), package, checkout) == chosen


def test_a_file_that_is_not_a_library_fails_clearly(tmp_path):
    bogus = tmp_path / "libwspush.so"
    bogus.write_text("not an ELF file")
    result = run_python("import wspush; wspush.version()", tmp_path, WSPUSH_LIBRARY=str(bogus))
    assert result.returncode != 0
    assert f"found {bogus} but could not load it" in result.stderr


def test_found_from_a_checkout_directory_without_the_variable():
    # `pip install ./bindings/python` puts a copy inside the package, which comes before the
    # checkout's build; a package without one (e.g. its source on sys.path) finds target/release.
    bundled = Path(wspush.__file__).resolve().parent / _library.LIBRARY_FILE
    expected = bundled if bundled.is_file() else REPO / "target" / "release" / _library.LIBRARY_FILE
    if not expected.is_file():
        pytest.skip("no release build in this checkout")
    result = run_python("import wspush; print(wspush.library_path()); print(wspush.version())", REPO / "src")
    assert result.returncode == 0, result.stderr
    path, version = result.stdout.split()
    assert Path(path).resolve() == expected.resolve()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version)


def test_version_and_result_descriptions():
    cargo = (REPO / "Cargo.toml").read_text()
    assert wspush.version() == re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    assert wspush.result_str(wspush.Result.STOPPED) == "server is stopped"
    assert wspush.result_str(999) == "unknown result code"
    error = wspush.StoppedError(wspush.Result.STOPPED)
    assert error.code == 12 and "server is stopped" in str(error)
    assert isinstance(wspush.WspushError(999), wspush.WspushError)


def test_stats_fields_are_the_librarys_table_in_order():
    """The counter list is written once, in the library; Stats must name the same values in the
    same order (the snapshot struct is built from it), and counters are the *_total ones."""
    from ctypes import byref, c_char_p, c_uint32
    from dataclasses import fields

    lib = _library.load()
    table = []
    for index in range(lib.wspush_stats_field_count()):
        name, help_text, kind = c_char_p(), c_char_p(), c_uint32()
        assert lib.wspush_stats_field(index, byref(name), byref(help_text), byref(kind)) == 0
        assert help_text.value
        table.append((name.value.decode(), kind.value))
    assert [name for name, _ in table] == [field.name for field in fields(wspush.Stats)]
    for name, kind in table:
        assert kind == (1 if name.endswith("_total") else 0), name
    name, help_text, kind = c_char_p(), c_char_p(), c_uint32()
    past_the_end = len(table)
    assert lib.wspush_stats_field(past_the_end, byref(name), byref(help_text), byref(kind)) != 0
