//! `libcrestengine.so`: crest as a CRaC engine library (crlib v2), for
//! `-XX:CRaCEngine=/path/to/libcrestengine.so`, or `-XX:CRaCEngine=crest` (or `crestengine`)
//! with the library in `$JAVA_HOME/lib` (the JVM tries `lib<name>.so`, then
//! `lib<name>engine.so`).
//!
//! The library runs inside the JVM and keeps to libc: the work is done by the executable
//! engine `crestengine` ([`crest::crac`]), found through `$CREST_ENGINE_BIN`, else beside this
//! library, else on `$PATH`.
//! - `checkpoint()` writes the image constraints (`tags`) and scores (`score`) into the image
//!   directory, starts `crestengine checkpoint DIR --tid=<calling thread>` (which leaves the
//!   JVM's process tree and dumps the JVM with crest) and waits, on the calling thread, for the
//!   restore signal (SIGRTMIN+2 queued to that thread). The dump ends the JVM (default), or with
//!   `keep_running` the signal comes with value 0 and the call returns 0; in the restored JVM
//!   the same wait ends with the restoring side's data and the call returns 0.
//! - `restore()` checks the required constraints against the image's `tags`, then execs
//!   `crestengine restore DIR` in place with `CRAC_NEW_ARGS_ID=<restore data>`: that process
//!   restores the JVM with its own standard fds, signals it, and stays its parent.

use std::ffi::{c_char, c_int, c_void, CStr, CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

mod constraints;

use constraints::{Bitmap, Cmp, Constraints};

/// The engine's configuration and state (opaque to the JVM).
#[derive(Default)]
pub struct Conf {
    image_location: Option<PathBuf>,
    keep_running: bool,
    direct_map: Option<bool>,
    pages: Option<&'static str>,
    pidns: bool,
    verbose: u8,
    /// Restoring side: what `set_restore_data` gave; restored side: what the signal brought.
    restore_data: Option<i32>,
    constraints: Constraints,
    scores: Vec<(String, f64)>,
}

/// The crlib v2 function table.
#[repr(C)]
pub struct Api {
    create_conf: extern "C" fn() -> *mut Conf,
    destroy_conf: unsafe extern "C" fn(*mut Conf),
    checkpoint: unsafe extern "C" fn(*mut Conf) -> c_int,
    restore: unsafe extern "C" fn(*mut Conf) -> c_int,
    can_configure: unsafe extern "C" fn(*mut Conf, *const c_char) -> bool,
    configure: unsafe extern "C" fn(*mut Conf, *const c_char, *const c_char) -> bool,
    get_extension: unsafe extern "C" fn(*const c_char, usize) -> *const ExtHeader,
}

static API: Api = Api {
    create_conf,
    destroy_conf,
    checkpoint,
    restore,
    can_configure,
    configure,
    get_extension,
};

const API_VERSION: c_int = 2;

/// The engine's entry point: the function table for crlib version 2, or null for another
/// version or a table larger than this one.
#[no_mangle]
pub extern "C" fn crlib_api(api_version: c_int, api_size: usize) -> *const Api {
    if api_version != API_VERSION || api_size > std::mem::size_of::<Api>() {
        return std::ptr::null();
    }
    &API
}

/// What every extension struct starts with.
#[repr(C)]
pub struct ExtHeader {
    name: *const c_char,
    size: usize,
}

#[repr(C)]
pub struct RestoreDataExt {
    header: ExtHeader,
    set_restore_data: unsafe extern "C" fn(*mut Conf, *const c_void, usize) -> bool,
    get_restore_data: unsafe extern "C" fn(*mut Conf, *mut c_void, usize) -> usize,
}

#[repr(C)]
pub struct ImageConstraintsExt {
    header: ExtHeader,
    set_label: unsafe extern "C" fn(*mut Conf, *const c_char, *const c_char) -> bool,
    set_bitmap: unsafe extern "C" fn(*mut Conf, *const c_char, *const u8, usize) -> bool,
    require_label: unsafe extern "C" fn(*mut Conf, *const c_char, *const c_char) -> bool,
    require_bitmap: unsafe extern "C" fn(*mut Conf, *const c_char, *const u8, usize, c_int) -> bool,
    is_failed: unsafe extern "C" fn(*mut Conf, *const c_char) -> bool,
    get_failed_bitmap: unsafe extern "C" fn(*mut Conf, *const c_char, *mut u8, usize) -> usize,
}

#[repr(C)]
pub struct ImageScoreExt {
    header: ExtHeader,
    set_score: unsafe extern "C" fn(*mut Conf, *const c_char, f64) -> bool,
}

#[repr(C)]
pub struct DescriptionExt {
    header: ExtHeader,
    identity: unsafe extern "C" fn(*mut Conf) -> *const c_char,
    description: unsafe extern "C" fn(*mut Conf) -> *const c_char,
    configuration_doc: unsafe extern "C" fn(*mut Conf) -> *const c_char,
    configurable_keys: unsafe extern "C" fn(*mut Conf) -> *const *const c_char,
    supported_extensions: unsafe extern "C" fn(*mut Conf) -> *const *const ExtHeader,
    configuration_options: unsafe extern "C" fn(*mut Conf) -> *const ConfOption,
}

/// One configuration option as the "description" extension lists them (ended by a null key).
#[repr(C)]
pub struct ConfOption {
    key: *const c_char,
    /// CHECKPOINT = 1, RESTORE = 2 (DEPRECATED = 4, OBSOLETE = 8).
    flags: std::ffi::c_uint,
    value_type: *const c_char,
    default_value: *const c_char,
    description: *const c_char,
}

const CHECKPOINT: std::ffi::c_uint = 1;
const RESTORE: std::ffi::c_uint = 2;

// SAFETY: the extension structs and pointer lists are immutable statics whose pointers all
// point at other immutable statics ('static C strings, functions, structs).
unsafe impl Sync for RestoreDataExt {}
// SAFETY: as above.
unsafe impl Sync for ImageConstraintsExt {}
// SAFETY: as above.
unsafe impl Sync for ImageScoreExt {}
// SAFETY: as above.
unsafe impl Sync for DescriptionExt {}
/// The option records, a static list.
#[repr(transparent)]
struct Options([ConfOption; 7]);
// SAFETY: as above.
unsafe impl Sync for Options {}

const fn option(
    key: &'static CStr,
    flags: std::ffi::c_uint,
    value_type: &'static CStr,
    default_value: &'static CStr,
    description: &'static CStr,
) -> ConfOption {
    ConfOption {
        key: key.as_ptr(),
        flags,
        value_type: value_type.as_ptr(),
        default_value: default_value.as_ptr(),
        description: description.as_ptr(),
    }
}

static OPTIONS: Options = Options([
    option(
        c"image_location",
        CHECKPOINT | RESTORE,
        c"path",
        c"",
        c"the image directory (set by the JVM)",
    ),
    option(
        c"keep_running",
        CHECKPOINT,
        c"bool",
        c"false",
        c"keep the JVM running after the checkpoint",
    ),
    option(
        c"direct_map",
        RESTORE,
        c"bool",
        c"true",
        c"map the image's pages copy-on-write instead of reading them (crest --pages map)",
    ),
    option(
        c"crest.pages",
        RESTORE,
        c"copy/map/lazy",
        c"map",
        c"where restored memory comes from (overrides direct_map); lazy: filled on fault while the JVM runs",
    ),
    option(
        c"crest.pidns",
        RESTORE,
        c"bool",
        c"false",
        c"restore into a new pid namespace, so that several restores of one image can run at once",
    ),
    option(
        c"crest.verbose",
        CHECKPOINT | RESTORE,
        c"0-4",
        c"0",
        c"how much crestengine says",
    ),
    ConfOption {
        key: std::ptr::null(),
        flags: 0,
        value_type: std::ptr::null(),
        default_value: std::ptr::null(),
        description: std::ptr::null(),
    },
]);

/// A null-terminated list of pointers to statics.
#[repr(transparent)]
struct PtrList<T: 'static, const N: usize>([*const T; N]);
// SAFETY: as above.
unsafe impl<T, const N: usize> Sync for PtrList<T, N> {}

static RESTORE_DATA: RestoreDataExt = RestoreDataExt {
    header: ExtHeader {
        name: c"restore data".as_ptr(),
        size: std::mem::size_of::<RestoreDataExt>(),
    },
    set_restore_data,
    get_restore_data,
};

static IMAGE_CONSTRAINTS: ImageConstraintsExt = ImageConstraintsExt {
    header: ExtHeader {
        name: c"image constraints".as_ptr(),
        size: std::mem::size_of::<ImageConstraintsExt>(),
    },
    set_label,
    set_bitmap,
    require_label,
    require_bitmap,
    is_failed,
    get_failed_bitmap,
};

static IMAGE_SCORE: ImageScoreExt = ImageScoreExt {
    header: ExtHeader {
        name: c"image score".as_ptr(),
        size: std::mem::size_of::<ImageScoreExt>(),
    },
    set_score,
};

static DESCRIPTION: DescriptionExt = DescriptionExt {
    header: ExtHeader {
        name: c"description".as_ptr(),
        size: std::mem::size_of::<DescriptionExt>(),
    },
    identity,
    description,
    configuration_doc,
    configurable_keys,
    supported_extensions,
    configuration_options,
};

static KEYS: PtrList<c_char, 7> = PtrList([
    c"image_location".as_ptr(),
    c"keep_running".as_ptr(),
    c"direct_map".as_ptr(),
    c"crest.pages".as_ptr(),
    c"crest.pidns".as_ptr(),
    c"crest.verbose".as_ptr(),
    std::ptr::null(),
]);

static EXTENSIONS: PtrList<ExtHeader, 5> = PtrList([
    &RESTORE_DATA.header,
    &IMAGE_CONSTRAINTS.header,
    &IMAGE_SCORE.header,
    &DESCRIPTION.header,
    std::ptr::null(),
]);

const CONFIGURATION_DOC: &CStr = c"\
* image_location=<path> (no default): the image directory (set by the JVM)
* keep_running=<true/false> (default false): keep the JVM running after the checkpoint
* direct_map=<true/false> (default true): on restore, map the image's pages copy-on-write
  instead of reading them (crest's --pages map)
* crest.pages=<copy/map/lazy> (default by direct_map): where restored memory comes from;
  lazy fills it on fault from a page server (userfaultfd) while the JVM runs
* crest.pidns=<true/false> (default false): restore into a new pid namespace, so several
  JVMs restored from one image can run at once
* crest.verbose=<0-4> (default 0): how much crestengine says
The engine executable is $CREST_ENGINE_BIN, else crestengine beside this library, else on $PATH.
";

extern "C" fn create_conf() -> *mut Conf {
    Box::into_raw(Box::default())
}

/// # Safety
/// `conf` is null or came from `create_conf` and is not used afterwards.
unsafe extern "C" fn destroy_conf(conf: *mut Conf) {
    if !conf.is_null() {
        // SAFETY: per the contract, the box was made by create_conf and is dropped once.
        drop(unsafe { Box::from_raw(conf) });
    }
}

/// The configuration behind `conf`, or None for null.
///
/// # Safety
/// `conf` is null or a live pointer from `create_conf`, not used elsewhere meanwhile (the JVM
/// calls the engine from one thread at a time).
unsafe fn conf_mut<'a>(conf: *mut Conf) -> Option<&'a mut Conf> {
    // SAFETY: per the contract.
    unsafe { conf.as_mut() }
}

/// A C string argument as text, or None for null or non-UTF-8.
///
/// # Safety
/// `s` is null or a valid NUL-terminated string.
unsafe fn text<'a>(s: *const c_char) -> Option<&'a str> {
    if s.is_null() {
        return None;
    }
    // SAFETY: per the contract.
    unsafe { CStr::from_ptr(s) }.to_str().ok()
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "" | "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

const KNOWN_KEYS: [&str; 6] = [
    "image_location",
    "keep_running",
    "direct_map",
    "crest.pages",
    "crest.pidns",
    "crest.verbose",
];

/// # Safety
/// `key` is null or a valid C string.
unsafe extern "C" fn can_configure(_conf: *mut Conf, key: *const c_char) -> bool {
    // SAFETY: per the contract.
    unsafe { text(key) }.is_some_and(|k| KNOWN_KEYS.contains(&k))
}

/// # Safety
/// `conf` as for [`conf_mut`]; `key` and `value` null or valid C strings.
unsafe extern "C" fn configure(conf: *mut Conf, key: *const c_char, value: *const c_char) -> bool {
    // SAFETY: per the contract.
    let (Some(c), Some(k), Some(v)) = (unsafe { conf_mut(conf) }, unsafe { text(key) }, unsafe {
        text(value)
    }) else {
        return false;
    };
    apply(c, k, v).is_some()
}

fn apply(c: &mut Conf, k: &str, v: &str) -> Option<()> {
    match k {
        "image_location" if !v.is_empty() => c.image_location = Some(PathBuf::from(v)),
        "keep_running" => c.keep_running = parse_bool(v)?,
        "direct_map" => c.direct_map = Some(parse_bool(v)?),
        "crest.pidns" => c.pidns = parse_bool(v)?,
        "crest.pages" => {
            c.pages = Some(match v {
                "copy" => "copy",
                "map" => "map",
                "lazy" => "lazy",
                _ => return None,
            })
        }
        "crest.verbose" => c.verbose = v.parse().ok().filter(|n| *n <= 4)?,
        _ => return None,
    }
    Some(())
}

/// # Safety
/// `name` is null or a valid C string.
unsafe extern "C" fn get_extension(name: *const c_char, size: usize) -> *const ExtHeader {
    // SAFETY: per the contract.
    let Some(name) = (unsafe { text(name) }) else {
        return std::ptr::null();
    };
    let header: &'static ExtHeader = match name {
        "restore data" => &RESTORE_DATA.header,
        "image constraints" => &IMAGE_CONSTRAINTS.header,
        "image score" => &IMAGE_SCORE.header,
        "description" => &DESCRIPTION.header,
        _ => return std::ptr::null(),
    };
    if size > header.size {
        return std::ptr::null();
    }
    header
}

fn say(what: &str) {
    eprintln!("libcrestengine: {what}");
}

/// The executable engine: `$CREST_ENGINE_BIN`, else `crestengine` beside this library, else
/// on `$PATH`.
fn engine_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CREST_ENGINE_BIN") {
        return Some(PathBuf::from(p));
    }
    // SAFETY: dladdr fills `info` for an address inside a loaded object; crlib_api is one.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above; info outlives the call.
    let found = unsafe { libc::dladdr(crlib_api as *const c_void, &mut info) } != 0;
    if found && !info.dli_fname.is_null() {
        // SAFETY: dli_fname is a NUL-terminated path owned by the dynamic loader.
        let lib = Path::new(std::ffi::OsStr::from_bytes(
            unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes(),
        ));
        if let Some(dir) = lib.parent() {
            let beside = dir.join("crestengine");
            if beside.is_file() {
                return Some(beside);
            }
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("crestengine"))
            .find(|p| p.is_file())
    })
}

fn cstring(bytes: Vec<u8>) -> Option<CString> {
    CString::new(bytes).ok()
}

/// The environment for the engine: this process's, without `drop`, plus `add`.
fn environment(drop: &str, add: Option<String>) -> Option<Vec<CString>> {
    let mut env: Vec<CString> = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k.as_bytes() == drop.as_bytes() {
            continue;
        }
        let mut e: OsString = k;
        e.push("=");
        e.push(v);
        env.push(cstring(e.into_vec())?);
    }
    if let Some(a) = add {
        env.push(cstring(a.into_bytes())?);
    }
    Some(env)
}

fn pointers(v: &[CString]) -> Vec<*const c_char> {
    v.iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn restore_signal() -> c_int {
    libc::SIGRTMIN() + 2
}

/// # Safety
/// `conf` as for [`conf_mut`].
unsafe extern "C" fn checkpoint(conf: *mut Conf) -> c_int {
    // SAFETY: per the contract.
    let Some(c) = (unsafe { conf_mut(conf) }) else {
        return -1;
    };
    match checkpoint_with(c) {
        Ok(()) => 0,
        Err((code, what)) => {
            say(&what);
            code
        }
    }
}

fn checkpoint_with(c: &mut Conf) -> Result<(), (c_int, String)> {
    let dir = c
        .image_location
        .clone()
        .ok_or((1, "checkpoint: image_location is not set".to_string()))?;
    if let Err(e) = std::fs::create_dir(&dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err((1, format!("cannot create {}: {e}", dir.display())));
        }
    }
    let scores = std::mem::take(&mut c.scores);
    let score_text: String = scores
        .iter()
        .map(|(m, v)| format!("{m}={v:.6}\n"))
        .collect();
    for (name, content) in [("tags", c.constraints.render()), ("score", score_text)] {
        let path = dir.join(name);
        std::fs::write(&path, content)
            .map_err(|e| (1, format!("cannot write {}: {e}", path.display())))?;
    }
    let bin = engine_bin().ok_or((
        1,
        "cannot find the crestengine executable (set CREST_ENGINE_BIN, or put it beside \
         libcrestengine.so or on PATH)"
            .to_string(),
    ))?;
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let mut args = vec![
        cstring(bin.as_os_str().as_bytes().to_vec()),
        cstring(b"checkpoint".to_vec()),
        cstring(dir.as_os_str().as_bytes().to_vec()),
        cstring(format!("--tid={tid}").into_bytes()),
    ];
    args.extend((0..c.verbose).map(|_| cstring(b"-v".to_vec())));
    let args: Vec<CString> = args
        .into_iter()
        .collect::<Option<_>>()
        .ok_or((1, "the image path holds a NUL byte".to_string()))?;
    let leave = c
        .keep_running
        .then(|| "CRAC_CRIU_LEAVE_RUNNING=".to_string());
    let env = environment("CRAC_CRIU_LEAVE_RUNNING", leave)
        .ok_or((1, "the environment holds a NUL byte".to_string()))?;
    let (argv, envp) = (pointers(&args), pointers(&env));

    // The restore signal stays pending for this thread until it waits for it here.
    // SAFETY: sigset_t values are plain data initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t; the signal number is valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, restore_signal());
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
    }
    let result = spawn_and_wait(&argv, &envp, &set);
    // SAFETY: old holds the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    let value = result?;
    if value < 0 {
        return Err((
            2,
            format!(
                "checkpoint into {} failed (crestengine said why above)",
                dir.display()
            ),
        ));
    }
    c.restore_data = (value > 0).then_some(value);
    Ok(())
}

/// Starts the engine, waits for it to exit 0, then for the restore signal; its value.
fn spawn_and_wait(
    argv: &[*const c_char],
    envp: &[*const c_char],
    set: &libc::sigset_t,
) -> Result<i32, (c_int, String)> {
    // SAFETY: the attribute object is initialised by posix_spawnattr_init before use and
    // destroyed below; argv and envp are null-terminated arrays of valid C strings that
    // outlive the call.
    let pid = unsafe {
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        libc::posix_spawnattr_init(&mut attr);
        // The engine starts with no signal blocked and none ignored, whatever the JVM set.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::posix_spawnattr_setsigmask(&mut attr, &empty);
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::posix_spawnattr_setsigdefault(&mut attr, &all);
        libc::posix_spawnattr_setflags(
            &mut attr,
            (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as _,
        );
        let mut pid: libc::pid_t = 0;
        let rc = libc::posix_spawn(
            &mut pid,
            argv[0],
            std::ptr::null(),
            &attr,
            argv.as_ptr() as *const *mut c_char,
            envp.as_ptr() as *const *mut c_char,
        );
        libc::posix_spawnattr_destroy(&mut attr);
        if rc != 0 {
            return Err((
                1,
                format!(
                    "posix_spawn of crestengine failed: {}",
                    std::io::Error::from_raw_os_error(rc)
                ),
            ));
        }
        pid
    };
    let mut status: c_int = 0;
    loop {
        // SAFETY: waits for our own child; status is a valid int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // SIGCHLD ignored: the engine was reaped by the kernel, its status is lost; a
            // failure shows as the restore signal's -1.
            Some(libc::ECHILD) => {
                status = 0;
                break;
            }
            _ => return Err((1, format!("waitpid for crestengine (pid {pid}): {e}"))),
        }
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        // It may have queued -1 as well (for a JVM that cannot see its exit status): take
        // that, so that it does not answer the next checkpoint.
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: info is plain data the kernel fills; set and zero are valid.
        while unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigtimedwait(set, &mut info, &zero)
        } > 0
        {}
        return Err((
            1,
            format!("crestengine checkpoint failed (wait status {status:#x})"),
        ));
    }
    loop {
        // SAFETY: info is plain data the kernel fills; set is a valid sigset_t.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let r = unsafe { libc::sigwaitinfo(set, &mut info) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // The dump's freeze interrupts the wait; so does a restore.
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err((1, format!("sigwaitinfo for the restore signal: {e}")));
        }
        if info.si_code != libc::SI_QUEUE {
            continue; // not from an engine (kill/tgkill): not the restore data
        }
        // SAFETY: a SI_QUEUE siginfo carries si_value; its int is the low half of the
        // pointer-sized union on the little-endian 64-bit targets crest supports.
        let value = unsafe { info.si_value() }.sival_ptr as usize as u32 as i32;
        return Ok(value);
    }
}

/// # Safety
/// `conf` as for [`conf_mut`].
unsafe extern "C" fn restore(conf: *mut Conf) -> c_int {
    // SAFETY: per the contract.
    let Some(c) = (unsafe { conf_mut(conf) }) else {
        return -1;
    };
    let (code, what) = restore_with(c);
    say(&what);
    code
}

/// Only returns on failure: the code and what failed.
fn restore_with(c: &mut Conf) -> (c_int, String) {
    let Some(dir) = c.image_location.clone() else {
        return (1, "restore: image_location is not set".into());
    };
    if !dir.is_dir() {
        return (1, format!("restore: {} is not a directory", dir.display()));
    }
    let tags = std::fs::read_to_string(dir.join("tags")).unwrap_or_default();
    let failed = c.constraints.check(&tags);
    if !failed.is_empty() {
        return (
            3,
            format!(
                "the image {} does not meet the required constraints: {}",
                dir.display(),
                failed.join(", ")
            ),
        );
    }
    let Some(bin) = engine_bin() else {
        return (1, "cannot find the crestengine executable".into());
    };
    let pages = c.pages.unwrap_or(if c.direct_map == Some(false) {
        "copy"
    } else {
        "map"
    });
    let mut args = vec![
        bin.as_os_str().as_bytes().to_vec(),
        b"restore".to_vec(),
        dir.as_os_str().as_bytes().to_vec(),
        format!("--pages={pages}").into_bytes(),
    ];
    if c.pidns {
        args.push(b"--pidns".to_vec());
    }
    args.extend((0..c.verbose).map(|_| b"-v".to_vec()));
    let Some(args) = args.into_iter().map(cstring).collect::<Option<Vec<_>>>() else {
        return (1, "the image path holds a NUL byte".into());
    };
    let data = format!("CRAC_NEW_ARGS_ID={}", c.restore_data.unwrap_or(0));
    let Some(env) = environment("CRAC_NEW_ARGS_ID", Some(data)) else {
        return (1, "the environment holds a NUL byte".into());
    };
    let (argv, envp) = (pointers(&args), pointers(&env));
    // SAFETY: argv and envp are null-terminated arrays of valid C strings.
    unsafe { libc::execve(argv[0], argv.as_ptr(), envp.as_ptr()) };
    (
        4,
        format!(
            "cannot execute {}: {}",
            bin.display(),
            std::io::Error::last_os_error()
        ),
    )
}

/// # Safety
/// `conf` as for [`conf_mut`]; `data` points at `size` readable bytes.
unsafe extern "C" fn set_restore_data(conf: *mut Conf, data: *const c_void, size: usize) -> bool {
    // SAFETY: per the contract.
    let Some(c) = (unsafe { conf_mut(conf) }) else {
        return false;
    };
    // The data travels as the int of a queued signal: an int is all that fits.
    if data.is_null() || size != std::mem::size_of::<i32>() {
        return false;
    }
    // SAFETY: data points at 4 readable bytes, maybe unaligned.
    c.restore_data = Some(unsafe { (data as *const i32).read_unaligned() });
    true
}

/// # Safety
/// `conf` as for [`conf_mut`]; `buf` points at `size` writable bytes.
unsafe extern "C" fn get_restore_data(conf: *mut Conf, buf: *mut c_void, size: usize) -> usize {
    // SAFETY: per the contract.
    let Some(c) = (unsafe { conf_mut(conf) }) else {
        return 0;
    };
    let Some(v) = c.restore_data else {
        return 0;
    };
    let bytes = v.to_ne_bytes();
    if !buf.is_null() {
        // SAFETY: buf has room for `size` bytes; at most that many are written.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, size.min(bytes.len()))
        };
    }
    bytes.len()
}

/// Runs `f` on the configuration and a text argument; false for null or non-UTF-8.
///
/// # Safety
/// As for [`conf_mut`] and [`text`].
unsafe fn with_name(
    conf: *mut Conf,
    name: *const c_char,
    f: impl FnOnce(&mut Conf, &str) -> bool,
) -> bool {
    // SAFETY: per the contract.
    match (unsafe { conf_mut(conf) }, unsafe { text(name) }) {
        (Some(c), Some(n)) => f(c, n),
        _ => false,
    }
}

/// # Safety
/// `value` null or pointing at `len` readable bytes.
unsafe fn bytes<'a>(value: *const u8, len: usize) -> Option<&'a [u8]> {
    if value.is_null() {
        return (len == 0).then_some(&[]);
    }
    // SAFETY: per the contract.
    Some(unsafe { std::slice::from_raw_parts(value, len) })
}

/// # Safety
/// As for [`conf_mut`] and [`text`].
unsafe extern "C" fn set_label(conf: *mut Conf, name: *const c_char, value: *const c_char) -> bool {
    // SAFETY: per the contract.
    let Some(v) = (unsafe { text(value) }) else {
        return false;
    };
    // SAFETY: per the contract.
    unsafe { with_name(conf, name, |c, n| c.constraints.set_label(n, v)) }
}

/// # Safety
/// As for [`conf_mut`] and [`text`]; `value` points at `len` bytes.
unsafe extern "C" fn set_bitmap(
    conf: *mut Conf,
    name: *const c_char,
    value: *const u8,
    len: usize,
) -> bool {
    // SAFETY: per the contract.
    let Some(v) = (unsafe { bytes(value, len) }) else {
        return false;
    };
    // SAFETY: per the contract.
    unsafe { with_name(conf, name, |c, n| c.constraints.set_bitmap(n, v)) }
}

/// # Safety
/// As for [`conf_mut`] and [`text`].
unsafe extern "C" fn require_label(
    conf: *mut Conf,
    name: *const c_char,
    value: *const c_char,
) -> bool {
    // SAFETY: per the contract.
    let Some(v) = (unsafe { text(value) }) else {
        return false;
    };
    // SAFETY: per the contract.
    unsafe { with_name(conf, name, |c, n| c.constraints.require_label(n, v)) }
}

/// # Safety
/// As for [`conf_mut`] and [`text`]; `value` points at `len` bytes.
unsafe extern "C" fn require_bitmap(
    conf: *mut Conf,
    name: *const c_char,
    value: *const u8,
    len: usize,
    cmp: c_int,
) -> bool {
    let Some(cmp) = Cmp::from_c(cmp) else {
        return false;
    };
    // SAFETY: per the contract.
    let Some(v) = (unsafe { bytes(value, len) }) else {
        return false;
    };
    // SAFETY: per the contract.
    unsafe { with_name(conf, name, |c, n| c.constraints.require_bitmap(n, v, cmp)) }
}

/// # Safety
/// As for [`conf_mut`] and [`text`].
unsafe extern "C" fn is_failed(conf: *mut Conf, name: *const c_char) -> bool {
    // SAFETY: per the contract.
    unsafe { with_name(conf, name, |c, n| c.constraints.is_failed(n)) }
}

/// The image's value of a bitmap whose requirement failed: copies up to `len` bytes of it into
/// `buf` and returns its size (more, equal or less than `len`); 0 when there is none.
///
/// # Safety
/// As for [`conf_mut`] and [`text`]; `buf` null or pointing at `len` writable bytes.
unsafe extern "C" fn get_failed_bitmap(
    conf: *mut Conf,
    name: *const c_char,
    buf: *mut u8,
    len: usize,
) -> usize {
    // SAFETY: per the contract.
    let (Some(c), Some(n)) = (unsafe { conf_mut(conf) }, unsafe { text(name) }) else {
        return 0;
    };
    if !c.constraints.is_failed(n) {
        return 0;
    }
    let Some(Bitmap(image)) = c.constraints.image_bitmap(n) else {
        return 0;
    };
    if !buf.is_null() {
        let k = len.min(image.len());
        // SAFETY: buf has room for len >= k bytes.
        unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), buf, k) };
    }
    image.len()
}

/// # Safety
/// As for [`conf_mut`] and [`text`].
unsafe extern "C" fn set_score(conf: *mut Conf, metric: *const c_char, value: f64) -> bool {
    // SAFETY: per the contract.
    unsafe {
        with_name(conf, metric, |c, m| {
            if m.is_empty() || m.contains(['=', '\n']) {
                return false;
            }
            match c.scores.iter_mut().find(|(k, _)| k == m) {
                Some(entry) => entry.1 = value,
                None => c.scores.push((m.to_string(), value)),
            }
            true
        })
    }
}

unsafe extern "C" fn identity(_conf: *mut Conf) -> *const c_char {
    c"crest".as_ptr()
}

unsafe extern "C" fn description(_conf: *mut Conf) -> *const c_char {
    c"crest: checkpoint/restore for Linux processes (an alternative to CRIU). Checkpoints the \
whole JVM with crest's dump through the crestengine executable; restores it under the restoring \
java process, which stays its parent (forwarding signals, exiting with its status), with \
copy, mapped or lazy pages, optionally in a new pid namespace so that several restores of one \
image can run at once."
        .as_ptr()
}

unsafe extern "C" fn configuration_doc(_conf: *mut Conf) -> *const c_char {
    CONFIGURATION_DOC.as_ptr()
}

unsafe extern "C" fn configurable_keys(_conf: *mut Conf) -> *const *const c_char {
    KEYS.0.as_ptr()
}

unsafe extern "C" fn supported_extensions(_conf: *mut Conf) -> *const *const ExtHeader {
    EXTENSIONS.0.as_ptr()
}

unsafe extern "C" fn configuration_options(_conf: *mut Conf) -> *const ConfOption {
    OPTIONS.0.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_answers_version_2_only() {
        let table = std::mem::size_of::<Api>();
        assert_eq!(table, 56);
        assert!(!crlib_api(2, table).is_null());
        assert!(!crlib_api(2, 48).is_null());
        assert!(crlib_api(1, table).is_null());
        assert!(crlib_api(2, table + 8).is_null());
    }

    #[test]
    fn configure_accepts_known_keys_only() {
        let c = create_conf();
        // SAFETY: c is a live conf; the strings are valid C strings.
        unsafe {
            assert!(can_configure(c, c"keep_running".as_ptr()));
            assert!(!can_configure(c, c"unknown".as_ptr()));
            assert!(!can_configure(c, c"exec_location".as_ptr()));
            assert!(configure(c, c"keep_running".as_ptr(), c"".as_ptr()));
            assert!((*c).keep_running);
            assert!(configure(c, c"crest.pages".as_ptr(), c"lazy".as_ptr()));
            assert!(!configure(c, c"crest.pages".as_ptr(), c"mmap".as_ptr()));
            assert!(!configure(c, c"unknown".as_ptr(), c"1".as_ptr()));
            assert!(!configure(c, c"direct_map".as_ptr(), c"maybe".as_ptr()));
            destroy_conf(c);
            destroy_conf(std::ptr::null_mut());
        }
    }

    #[test]
    fn extensions_by_name_and_size() {
        // SAFETY: valid C strings.
        unsafe {
            let rd = get_extension(
                c"restore data".as_ptr(),
                std::mem::size_of::<RestoreDataExt>(),
            );
            assert!(!rd.is_null());
            assert_eq!(CStr::from_ptr((*rd).name), c"restore data");
            assert!(get_extension(c"restore data".as_ptr(), 1000).is_null());
            assert!(get_extension(c"user data".as_ptr(), 16).is_null());
            for name in [c"image constraints", c"image score", c"description"] {
                assert!(!get_extension(name.as_ptr(), 16).is_null(), "{name:?}");
            }
            // The newest "description" (with configuration_options): 16 + 6 pointers.
            assert!(!get_extension(c"description".as_ptr(), 64).is_null());
            let keys: Vec<&CStr> = (0..)
                .map(|i| *configurable_keys(std::ptr::null_mut()).add(i))
                .take_while(|p| !p.is_null())
                .map(|p| CStr::from_ptr(p))
                .collect();
            let options: Vec<&CStr> = (0..)
                .map(|i| &*configuration_options(std::ptr::null_mut()).add(i))
                .take_while(|o| !o.key.is_null())
                .map(|o| CStr::from_ptr(o.key))
                .collect();
            assert_eq!(keys, options);
            assert_eq!(keys.len(), KNOWN_KEYS.len());
        }
    }

    #[test]
    fn restore_data_is_one_int() {
        let c = create_conf();
        let v: i32 = 4242;
        let mut out = [0u8; 8];
        // SAFETY: c is live; the buffers have the sizes passed.
        unsafe {
            assert_eq!(get_restore_data(c, out.as_mut_ptr().cast(), 8), 0);
            assert!(!set_restore_data(c, (&v as *const i32).cast(), 8));
            assert!(set_restore_data(c, (&v as *const i32).cast(), 4));
            assert_eq!(get_restore_data(c, out.as_mut_ptr().cast(), 8), 4);
            destroy_conf(c);
        }
        assert_eq!(i32::from_ne_bytes(out[..4].try_into().unwrap()), 4242);
    }
}
