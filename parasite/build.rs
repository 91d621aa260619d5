//! Link settings of the blobs (the restorer and the parasite): each a position-independent
//! static executable laid out by its linker script as one loadable segment starting at address 0,
//! so that crest can copy the flattened segment anywhere and fix it up with the R_*_RELATIVE
//! relocations alone.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    for bin in ["restorer", "parasite"] {
        let script = format!("{dir}/{bin}.ld");
        println!("cargo:rerun-if-changed={script}");
        for arg in [
            format!("-T{script}"),
            // rustc links aarch64-unknown-none as a static non-PIE (the target does not declare
            // static-pie support); x86_64-unknown-none already gets these. Forcing them on both
            // keeps every absolute address visible as a RELATIVE dynamic relocation.
            "-pie".to_string(),
            "--no-dynamic-linker".to_string(),
            "-z".to_string(),
            "text".to_string(),
            "--gc-sections".to_string(),
            "--build-id=none".to_string(),
        ] {
            println!("cargo:rustc-link-arg-bin={bin}={arg}");
        }
    }
}
