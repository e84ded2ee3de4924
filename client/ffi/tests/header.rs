//! The committed C header `include/rally.h` is what cbindgen generates from the crate now.
//! `RALLY_FFI_BLESS=1 cargo test -p rally-ffi --test header` rewrites it.

use std::path::Path;

fn generate() -> String {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut header = Vec::new();
    bindings.write(&mut header);
    String::from_utf8(header).expect("the header is UTF-8")
}

#[test]
fn the_committed_header_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/rally.h");
    let generated = generate();
    if std::env::var_os("RALLY_FFI_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/rally.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "client/ffi/include/rally.h is not what the code generates; regenerate it with \
         RALLY_FFI_BLESS=1 cargo test -p rally-ffi --test header"
    );
}
