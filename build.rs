//! Regenerates include/wspush.h from src/ffi with cbindgen (see cbindgen.toml). The header is
//! committed so C hosts can use it without Rust; CI checks that a build leaves it unchanged.
//! Also writes `wspush-uninstalled.pc` beside the built library, so pkg-config users (the Go
//! binding's `#cgo pkg-config: wspush`) can link a checkout's build without installing it.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=build.rs");
    // Also when the header is deleted or edited by hand: it is restored. (Writing it below makes
    // cargo run this script once more on the next build, which then finds it current.)
    println!("cargo:rerun-if-changed=include/wspush.h");

    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let mut config =
        cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml is readable and valid");
    // The version macros come from Cargo.toml's version, the same one wspush_version() returns,
    // so the two cannot drift (tests/install.sh compares them at run time).
    config.after_includes = Some(version_macros());
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .generate()
        .unwrap_or_else(|e| panic!("cbindgen could not generate include/wspush.h from src/ffi: {e}"));
    let mut header = Vec::new();
    bindings.write(&mut header);
    write_uninstalled_pkg_config(&root);

    // Write only when the text changes, so an unchanged header keeps its timestamp (no rebuilds
    // of C code depending on it). A read-only source tree (e.g. a vendored copy) only warns.
    let path = root.join("include/wspush.h");
    if fs::read(&path).ok().as_deref() == Some(header.as_slice()) {
        return;
    }
    // Written to a temporary file and renamed, so a concurrent build (debug and release at once)
    // or a C compiler reading the header never sees it half-written.
    let temporary = root.join(format!("include/.wspush.h.{}.tmp", std::process::id()));
    let written = fs::create_dir_all(root.join("include"))
        .and_then(|()| fs::write(&temporary, &header))
        .and_then(|()| fs::rename(&temporary, &path));
    match written {
        Ok(()) => println!("cargo:warning=include/wspush.h was regenerated from src/ffi: commit it"),
        Err(e) => {
            let _ = fs::remove_file(&temporary);
            println!("cargo:warning=cannot write {}: {e}", path.display());
        }
    }
}

/// `WSPUSH_VERSION_MAJOR/MINOR/PATCH` for the header, from Cargo.toml's version.
fn version_macros() -> String {
    let part = |name: &str| env::var(name).unwrap_or_else(|_| panic!("cargo sets {name}"));
    format!(
        "\n/** This header's library version (as wspush_version() returns it: \"MAJOR.MINOR.PATCH\"). */\n\
         #define WSPUSH_VERSION_MAJOR {}\n\
         #define WSPUSH_VERSION_MINOR {}\n\
         #define WSPUSH_VERSION_PATCH {}",
        part("CARGO_PKG_VERSION_MAJOR"),
        part("CARGO_PKG_VERSION_MINOR"),
        part("CARGO_PKG_VERSION_PATCH"),
    )
}

/// Writes `<profile dir>/pkgconfig/wspush-uninstalled.pc` (e.g. target/release/pkgconfig), which
/// points at this build's library and the checkout's include/. pkg-config prefers a package's
/// `-uninstalled` file when one is on PKG_CONFIG_PATH, so
/// `PKG_CONFIG_PATH=$checkout/target/release/pkgconfig` makes `pkg-config wspush` (and the Go
/// binding) use the checkout's build instead of an installed copy. An installed prefix gets its
/// own wspush.pc from `cargo cinstall`. Failing to write it only warns: the library still builds.
fn write_uninstalled_pkg_config(root: &std::path::Path) {
    // Cargo documents no variable for the profile directory; OUT_DIR is
    // <profile dir>/build/<package>-<hash>/out in every cargo layout so far (also under
    // --target, where the profile dir is target/<triple>/<profile>).
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let build_dir = out_dir.ancestors().nth(2);
    let Some(profile_dir) = build_dir.filter(|dir| dir.ends_with("build")).and_then(|dir| dir.parent()) else {
        println!("cargo:warning=unexpected OUT_DIR layout {}: no wspush-uninstalled.pc written", out_dir.display());
        return;
    };
    let pkg_config_dir = profile_dir.join("pkgconfig");
    let text = format!(
        "# Written by build.rs: this build of wspush, uninstalled (see README, Install).\n\
         libdir={}\n\
         includedir={}\n\
         \n\
         Name: wspush\n\
         Description: {} (uninstalled build)\n\
         Version: {}\n\
         Libs: -L${{libdir}} -lwspush -Wl,-rpath,${{libdir}}\n\
         Cflags: -I${{includedir}}\n",
        profile_dir.display(),
        root.join("include").display(),
        env::var("CARGO_PKG_DESCRIPTION").unwrap_or_default(),
        env::var("CARGO_PKG_VERSION").unwrap_or_default(),
    );
    let path = pkg_config_dir.join("wspush-uninstalled.pc");
    if fs::read(&path).ok().as_deref() == Some(text.as_bytes()) {
        return;
    }
    let written = fs::create_dir_all(&pkg_config_dir).and_then(|()| fs::write(&path, text));
    if let Err(e) = written {
        println!("cargo:warning=cannot write {}: {e}", path.display());
    }
}
