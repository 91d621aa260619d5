//! Builds the blobs from `parasite/` on every build and embeds them: the restorer (which turns a
//! forked task into the image's process) and the parasite (which crest runs inside a task being
//! dumped).
//!
//! 1. Runs `cargo build --release` on `parasite/Cargo.toml` for `<arch>-unknown-none`, with its
//!    own target directory under OUT_DIR (the outer build holds the lock on ours) and with the
//!    host's rust flags and wrappers removed, so only the blobs' own settings apply. One build
//!    produces both binaries.
//! 2. Parses each resulting static PIE with goblin: flattens its PT_LOAD segments into one image
//!    starting at the lowest address (`.bss` zero-filled), checks that every dynamic relocation
//!    is R_*_RELATIVE (anything else would need a symbol lookup the loader cannot do), and finds
//!    its entry symbol (`restorer_main`, `parasite_main`) and any further symbols crest needs
//!    (the restorer's `crest_syscall_gadget`).
//! 3. Writes `$OUT_DIR/<blob>.bin` (the image) and `$OUT_DIR/<blob>_meta.rs` (offsets, size,
//!    alignment and the relocation table), which `src/blob.rs` includes.

use goblin::elf::dynamic::DT_NEEDED;
use goblin::elf::header::{EM_AARCH64, EM_X86_64, ET_DYN};
use goblin::elf::program_header::{PF_X, PT_DYNAMIC, PT_INTERP, PT_LOAD, PT_TLS};
use goblin::elf::reloc::{R_AARCH64_RELATIVE, R_X86_64_RELATIVE};
use goblin::elf::section_header::SHF_ALLOC;
use goblin::elf::Elf;
use std::env;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// DT_RELR (packed relative relocations, `-z pack-relative-relocs`): not handled by the loader.
const DT_RELR: u64 = 36;

/// Where each architecture's blob comes from and what its ELF must look like.
struct ArchInfo {
    name: &'static str,
    triple: &'static str,
    machine: u16,
    relative: u32,
}

const ARCHES: [ArchInfo; 2] = [
    ArchInfo {
        name: "x86_64",
        triple: "x86_64-unknown-none",
        machine: EM_X86_64,
        relative: R_X86_64_RELATIVE,
    },
    ArchInfo {
        name: "aarch64",
        triple: "aarch64-unknown-none",
        machine: EM_AARCH64,
        relative: R_AARCH64_RELATIVE,
    },
];

/// One blob of `parasite/`: its binary name, entry symbol and the other symbols crest needs
/// (each becomes `<NAME>_OFFSET` in the generated metadata).
struct BlobInfo {
    bin: &'static str,
    entry: &'static str,
    symbols: &'static [(&'static str, &'static str)],
}

const BLOBS: [BlobInfo; 2] = [
    BlobInfo {
        bin: "restorer",
        entry: "restorer_main",
        symbols: &[("GADGET", "crest_syscall_gadget")],
    },
    BlobInfo {
        bin: "parasite",
        entry: "parasite_main",
        symbols: &[],
    },
];

/// The blob's code-generation flags. They are given here, through CARGO_ENCODED_RUSTFLAGS,
/// because that variable overrides every `rustflags` setting of cargo config files, so nothing
/// of the host's configuration reaches the blob. Link settings are in parasite/build.rs.
/// `relocation-model=pie`: aarch64-unknown-none defaults to `static`; absolute addresses must
/// show up as RELATIVE relocations that the loader can apply at the blob's load address.
const PARASITE_RUSTFLAGS: &[&str] = &["-Crelocation-model=pie"];

/// Environment variables that would leak the host build's flags, wrappers or output location
/// into the blob's build.
const SCRUBBED_ENV: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
];
/// Prefixes of per-target (`CARGO_TARGET_<TRIPLE>_RUSTFLAGS`, `_LINKER`, `_RUNNER`) and
/// per-profile (`CARGO_PROFILE_RELEASE_LTO`, ...) settings.
const SCRUBBED_PREFIXES: &[&str] = &["CARGO_TARGET_", "CARGO_PROFILE_"];

fn main() {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env_var("OUT_DIR"));
    let parasite = manifest_dir.join("parasite");

    println!("cargo:rerun-if-changed=build.rs");
    // The whole crate directory: sources, manifest, lock file, linker script, its build script.
    println!("cargo:rerun-if-changed=parasite");

    let target_arch = env_var("CARGO_CFG_TARGET_ARCH");
    let arch = ARCHES
        .iter()
        .find(|a| a.name == target_arch)
        .unwrap_or_else(|| {
            fail(&format!(
                "crest supports x86_64 and aarch64, not {target_arch}: there are no \
                 blobs for this architecture"
            ))
        });

    ensure_target_installed(arch.triple);
    let release_dir = build_parasite(&parasite, &out_dir, arch.triple);
    for info in &BLOBS {
        let elf_path = release_dir.join(info.bin);
        let bytes = fs::read(&elf_path)
            .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", elf_path.display())));
        let blob = flatten(&bytes, arch, info).unwrap_or_else(|e| {
            fail(&format!(
                "the {} blob {} is unusable: {e}",
                info.bin,
                elf_path.display()
            ))
        });
        write(&out_dir.join(format!("{}.bin", info.bin)), &blob.image);
        write(
            &out_dir.join(format!("{}_meta.rs", info.bin)),
            blob.meta_rs(arch).as_bytes(),
        );
    }
}

fn env_var(name: &str) -> String {
    env::var(name).unwrap_or_else(|_| fail(&format!("cargo did not set {name}")))
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}

fn write(path: &Path, data: &[u8]) {
    fs::write(path, data)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", path.display())));
}

fn rustc() -> OsString {
    env::var_os("RUSTC").unwrap_or_else(|| "rustc".into())
}

/// Whether the standard library (`libcore`) of `triple` is installed for the rustc in use.
fn target_installed(triple: &str) -> bool {
    let out = Command::new(rustc())
        .args(["--print", "target-libdir", "--target", triple])
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run rustc: {e}")));
    let libdir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status.success()
        && fs::read_dir(&libdir)
            .map(|entries| {
                entries.flatten().any(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("libcore-") && name.ends_with(".rlib")
                })
            })
            .unwrap_or(false)
}

/// Makes sure the blobs' bare-metal target is installed. A fresh machine with rustup has only
/// the host target, so when cargo runs under rustup (which sets RUSTUP_TOOLCHAIN) the missing
/// target is added to that toolchain, as `rustup target add` would; otherwise, or if that
/// fails, the build stops saying what to run (a missing target would show up as a confusing
/// "can't find crate for `core`" deep inside the nested build).
fn ensure_target_installed(triple: &str) {
    if target_installed(triple) {
        return;
    }
    let how = format!("rustup target add {triple}");
    let Some(toolchain) = env::var_os("RUSTUP_TOOLCHAIN") else {
        fail(&format!(
            "the Rust target {triple} is not installed (crest's parasite and restorer blobs \
             are built for it). Install it with: {how}"
        ));
    };
    println!(
        "cargo:warning=installing the Rust target {triple} (crest's parasite and restorer \
         blobs are built for it): {how}"
    );
    let added = Command::new("rustup")
        .args(["target", "add", "--toolchain"])
        .arg(&toolchain)
        .arg(triple)
        .status();
    if !matches!(added, Ok(s) if s.success()) || !target_installed(triple) {
        fail(&format!(
            "the Rust target {triple} is not installed (crest's parasite and restorer blobs \
             are built for it) and `{how}` did not install it ({}). Run it yourself, then \
             build again.",
            match added {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            }
        ));
    }
}

/// Runs the nested cargo build and returns the directory holding the linked blobs.
fn build_parasite(parasite: &Path, out_dir: &Path, triple: &str) -> PathBuf {
    let target_dir = out_dir.join("parasite-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--offline")
        .arg("--manifest-path")
        .arg(parasite.join("Cargo.toml"))
        .arg("--target")
        .arg(triple)
        .arg("--target-dir")
        .arg(&target_dir)
        // Config files are looked up from the working directory: start from the blob's own
        // directory, not wherever the outer cargo was started.
        .current_dir(parasite);
    for (key, _) in env::vars_os() {
        let key_str = key.to_string_lossy();
        if SCRUBBED_ENV.contains(&key_str.as_ref())
            || SCRUBBED_PREFIXES.iter().any(|p| key_str.starts_with(p))
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", PARASITE_RUSTFLAGS.join("\x1f"));

    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo to build the blobs: {e}")));
    let stderr = String::from_utf8_lossy(&stderr);
    if !status.success() {
        fail(&format!(
            "building the blobs (parasite/, target {triple}) failed ({status}):\n{}\n{}",
            String::from_utf8_lossy(&stdout),
            stderr
        ));
    }
    // Our stdout is cargo's instruction channel: pass the nested build's warnings on as warnings.
    for line in stderr.lines().filter(|l| l.starts_with("warning")) {
        println!("cargo:warning=parasite/ blobs: {line}");
    }
    target_dir.join(triple).join("release")
}

/// The blob as crest embeds it.
struct Flat {
    /// Memory image from the lowest PT_LOAD address, `.bss` included (zeros).
    image: Vec<u8>,
    entry: u64,
    /// (metadata name, offset) of the extra symbols.
    symbols: Vec<(&'static str, u64)>,
    /// Largest alignment any allocated section asks for; the load address must honour it.
    align: u64,
    /// (offset in the image, addend relative to the image start) of each RELATIVE relocation.
    relocations: Vec<(u64, i64)>,
}

impl Flat {
    fn meta_rs(&self, arch: &ArchInfo) -> String {
        let mut s = String::new();
        s.push_str("// @generated by build.rs from parasite/; do not edit.\n");
        let _ = writeln!(s, "pub const ARCH: &str = {:?};", arch.name);
        let _ = writeln!(s, "pub const ENTRY_OFFSET: u64 = {:#x};", self.entry);
        for (name, offset) in &self.symbols {
            let _ = writeln!(s, "pub const {name}_OFFSET: u64 = {offset:#x};");
        }
        let _ = writeln!(s, "pub const MEM_SIZE: usize = {:#x};", self.image.len());
        let _ = writeln!(s, "pub const LOAD_ALIGN: u64 = {:#x};", self.align);
        s.push_str("pub const RELOCATIONS: &[(u64, i64)] = &[\n");
        for (off, addend) in &self.relocations {
            let _ = writeln!(s, "    ({off:#x}, {addend}),");
        }
        s.push_str("];\n");
        s
    }
}

fn flatten(bytes: &[u8], arch: &ArchInfo, info: &BlobInfo) -> Result<Flat, String> {
    let elf = Elf::parse(bytes).map_err(|e| format!("not a valid ELF file: {e}"))?;
    if elf.header.e_machine != arch.machine {
        return Err(format!(
            "built for ELF machine {}, expected {} ({})",
            elf.header.e_machine, arch.machine, arch.name
        ));
    }
    if elf.header.e_type != ET_DYN {
        return Err("not a position-independent executable (ELF type is not ET_DYN)".into());
    }
    for ph in &elf.program_headers {
        match ph.p_type {
            PT_INTERP => return Err("it asks for a dynamic loader (PT_INTERP)".into()),
            PT_TLS => return Err("it uses thread-local storage (PT_TLS)".into()),
            _ => {}
        }
    }
    if let Some(dynamic) = &elf.dynamic {
        for d in &dynamic.dyns {
            if d.d_tag == DT_NEEDED {
                return Err("it needs shared libraries (DT_NEEDED)".into());
            }
            if d.d_tag == DT_RELR {
                return Err(
                    "it has packed (DT_RELR) relocations, which the loader does not apply".into(),
                );
            }
        }
    } else if elf.program_headers.iter().any(|p| p.p_type == PT_DYNAMIC) {
        return Err("its PT_DYNAMIC segment could not be parsed".into());
    }

    let loads: Vec<_> = elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_memsz > 0)
        .collect();
    let lo = loads
        .iter()
        .map(|p| p.p_vaddr)
        .min()
        .ok_or("it has no PT_LOAD segment")?;
    let hi = loads
        .iter()
        .map(|p| {
            p.p_vaddr
                .checked_add(p.p_memsz)
                .ok_or("segment end overflows")
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(lo);
    let size = usize::try_from(hi - lo).map_err(|_| "image too large")?;
    if size > 16 << 20 {
        return Err(format!(
            "the image is {size} bytes, far more than a blob needs"
        ));
    }
    let mut image = vec![0u8; size];
    for p in &loads {
        if p.p_filesz > p.p_memsz {
            return Err(format!("segment at {:#x} has filesz > memsz", p.p_vaddr));
        }
        let src = bytes
            .get(p.p_offset as usize..(p.p_offset + p.p_filesz) as usize)
            .ok_or_else(|| format!("segment at {:#x} lies outside the file", p.p_vaddr))?;
        let at = (p.p_vaddr - lo) as usize;
        image[at..at + src.len()].copy_from_slice(src);
    }

    if !elf.dynrels.is_empty() {
        return Err("it has REL (addend-in-place) relocations; only RELA is handled".into());
    }
    if !elf.pltrelocs.is_empty() {
        return Err(format!(
            "it has {} PLT relocations (calls through a PLT need a dynamic linker)",
            elf.pltrelocs.len()
        ));
    }
    let mut relocations = Vec::new();
    for r in elf.dynrelas.iter() {
        if r.r_type != arch.relative {
            return Err(format!(
                "it has a relocation of type {} at {:#x}; only {} (R_*_RELATIVE) can be applied \
                 by crest's loader. Avoid whatever needs it (e.g. references to undefined or \
                 preemptible symbols) in parasite/",
                r.r_type, r.r_offset, arch.relative
            ));
        }
        if r.r_offset < lo || r.r_offset.saturating_add(8) > hi {
            return Err(format!(
                "relocation at {:#x} lies outside the loaded image",
                r.r_offset
            ));
        }
        let addend = r.r_addend.unwrap_or(0);
        relocations.push((r.r_offset - lo, addend - lo as i64));
    }

    let find = |name: &str| -> Result<u64, String> {
        let sym = elf
            .syms
            .iter()
            .find(|s| elf.strtab.get_at(s.st_name) == Some(name))
            .ok_or_else(|| format!("symbol {name} not found"))?;
        let exec = loads.iter().any(|p| {
            p.p_flags & PF_X != 0
                && sym.st_value >= p.p_vaddr
                && sym.st_value < p.p_vaddr + p.p_memsz
        });
        if !exec {
            return Err(format!("symbol {name} is not in an executable segment"));
        }
        Ok(sym.st_value - lo)
    };
    let entry = find(info.entry)?;
    let symbols = info
        .symbols
        .iter()
        .map(|&(name, sym)| Ok((name, find(sym)?)))
        .collect::<Result<Vec<_>, String>>()?;
    if elf.header.e_entry - lo != entry {
        return Err(format!(
            "the ELF entry point is not {} (check {}.ld)",
            info.entry, info.bin
        ));
    }

    let align = elf
        .section_headers
        .iter()
        .filter(|s| s.sh_flags & u64::from(SHF_ALLOC) != 0)
        .map(|s| s.sh_addralign)
        .max()
        .unwrap_or(1)
        .max(16);

    Ok(Flat {
        image,
        entry,
        symbols,
        align,
        relocations,
    })
}
