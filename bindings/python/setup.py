"""Builds libwspush from this checkout (setuptools-rust runs cargo on ../../Cargo.toml) and puts
it inside the package as ``wspush/libwspush.so``, where the loader looks first after
WSPUSH_LIBRARY: the wheel then runs on a machine without the checkout.

The library is loaded with ctypes and uses no Python C API, so the wheel is tagged for any
Python 3 on this platform (``py3-none-<platform>``) rather than for one CPython version.
"""

from __future__ import annotations

import os

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools_rust import Binding, RustExtension, build_rust

HERE = os.path.dirname(os.path.abspath(__file__))
CARGO_TOML = os.path.join(HERE, "..", "..", "Cargo.toml")
LIBRARY_FILE = "libwspush.so"  # _library.LIBRARY_FILE on Linux


class build_rust_as_plain_library(build_rust):
    """setuptools-rust names a NoBinding artifact like a Python extension module
    (``libwspush.cpython-311-x86_64-linux-gnu.so``); it is a plain C library, and the loader
    looks for its usual name."""

    def get_dylib_ext_path(self, ext: RustExtension, target_fname: str) -> str:
        extension_path = super().get_dylib_ext_path(ext, target_fname)
        return os.path.join(os.path.dirname(extension_path), LIBRARY_FILE)


class bdist_wheel_any_python(bdist_wheel):
    """One wheel per platform, for every Python 3: nothing in it depends on the CPython ABI."""

    def get_tag(self) -> tuple[str, str, str]:
        _python, _abi, platform = super().get_tag()
        return "py3", "none", platform


if not os.path.isfile(CARGO_TOML):
    raise SystemExit(
        f"wspush: {CARGO_TOML} not found. Build the Python package from the wspush checkout "
        "(pip install ./bindings/python, or pip wheel ./bindings/python): it compiles the library."
    )

setup(
    rust_extensions=[
        RustExtension(
            "wspush.libwspush",
            path=CARGO_TOML,
            binding=Binding.NoBinding,
            # The same profile and crate types as `cargo build --release` (Cargo.toml's [lib]
            # crate-type, in its order): cargo then finds the library it already built in the
            # checkout's target/ current instead of compiling wspush again for a cdylib-only build.
            debug=False,
            args=["--crate-type", "cdylib,staticlib,rlib"],
        )
    ],
    cmdclass={"build_rust": build_rust_as_plain_library, "bdist_wheel": bdist_wheel_any_python},
    zip_safe=False,
)
