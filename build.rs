//! Regenerates include/wspush.h from src/ffi with cbindgen (see cbindgen.toml). The header is
//! committed so C hosts can use it without Rust; CI checks that a build leaves it unchanged.

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
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml is readable and valid");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .generate()
        .unwrap_or_else(|e| panic!("cbindgen could not generate include/wspush.h from src/ffi: {e}"));
    let mut header = Vec::new();
    bindings.write(&mut header);

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
