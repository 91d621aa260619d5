//! HotSpot's hsperfdata: the shared-memory file of performance counters a JVM maps at
//! `/tmp/hsperfdata_<user>/<nspid>` (unless run with `-XX:-UsePerfData` or
//! `-XX:+PerfDisableSharedMem`). crest reads one counter from it, `sun.rt.jvmCapabilities`, to
//! learn whether the JVM's attach mechanism is enabled before sending it SIGQUIT.
//!
//! Layout (format 2.0, written by the JVM in its own byte order): a 32-byte prologue
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic, the bytes `ca fe c0 c0` whatever the byte order |
//! | 4 | 1 | byte order: 0 big-endian, 1 little-endian |
//! | 5, 6 | 1, 1 | major, minor version |
//! | 7 | 1 | accessible: 1 once the JVM finished initializing the area |
//! | 8 | 4 | used: bytes of the area in use |
//! | 12 | 4 | overflow |
//! | 16 | 8 | mod time stamp |
//! | 24 | 4 | entry offset: where the first entry starts |
//! | 28 | 4 | entry count |
//!
//! then entries back to back, each starting with a 20-byte header
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | entry length (the next entry starts this far on) |
//! | 4 | 4 | name offset, from the entry start (a NUL-terminated name) |
//! | 8 | 4 | vector length: 0 for a scalar |
//! | 12 | 1 | data type: a JNI type letter, `J` (jlong) and `B` (jbyte) in practice |
//! | 13 | 1 | flags |
//! | 14 | 1 | data units: 5 means a string (a NUL-padded `B` vector) |
//! | 15 | 1 | variability |
//! | 16 | 4 | data offset, from the entry start |
//!
//! The file belongs to a live JVM that may be adding entries while crest reads it, and it could
//! be anything at all, so every offset and length is checked against the buffer and the entry
//! it belongs to; a bad one is an error, never a panic or an out-of-bounds read.

use std::io::Read;
use std::path::PathBuf;

use crate::proc::{MapName, Proc};

const MAGIC: [u8; 4] = [0xca, 0xfe, 0xc0, 0xc0];
const PROLOGUE_LEN: usize = 32;
const ENTRY_HEADER_LEN: usize = 20;
/// `PerfData::U_String`: the entry's byte vector holds a NUL-terminated string.
const UNITS_STRING: u8 = 5;
/// The JVM sizes the area with -XX:PerfDataMemorySize (32 KiB by default); anything beyond this
/// is not an hsperfdata file.
const MAX_FILE_LEN: u64 = 64 << 20;

/// The counter whose first character says whether the attach mechanism is enabled ('1') or
/// was turned off with -XX:+DisableAttachMechanism ('0').
pub const JVM_CAPABILITIES: &str = "sun.rt.jvmCapabilities";

/// Why a buffer is not a readable hsperfdata area.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PerfDataError {
    /// Shorter than the 32-byte prologue.
    #[error("{len} bytes is too short for the 32-byte prologue")]
    TooShort { len: usize },
    /// The first four bytes are not ca fe c0 c0.
    #[error("bad magic {found:02x?} (expected ca fe c0 c0)")]
    BadMagic { found: [u8; 4] },
    /// The byte-order byte is neither 0 nor 1.
    #[error("unknown byte order {0} (expected 0 or 1)")]
    BadByteOrder(u8),
    /// A format version crest does not know.
    #[error("format version {major}.{minor} is not supported (crest reads 2.x)")]
    UnsupportedVersion { major: u8, minor: u8 },
    /// A prologue field is out of range.
    #[error("prologue field {field} = {value} is out of range for {len} bytes")]
    BadPrologue {
        field: &'static str,
        value: i64,
        len: usize,
    },
    /// An entry's header, name or data lies outside the buffer or its entry.
    #[error("entry {index} at offset {offset}: {detail}")]
    BadEntry {
        index: usize,
        offset: usize,
        detail: String,
    },
}

/// A counter's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PerfValue {
    /// A `J` scalar.
    Long(i64),
    /// A `B` vector with string units, up to its first NUL.
    String(String),
    /// Any other type or shape (kept opaque: crest needs none of them).
    Other { data_type: u8, vector_length: u32 },
}

/// One named counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerfEntry {
    pub name: String,
    pub value: PerfValue,
}

/// A parsed hsperfdata area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerfData {
    pub major: u8,
    pub minor: u8,
    /// Whether the JVM had finished setting the area up (entries may still be added later).
    pub accessible: bool,
    pub entries: Vec<PerfEntry>,
}

/// Reads integers in the area's own byte order.
struct Reader<'a> {
    buf: &'a [u8],
    little: bool,
}

impl Reader<'_> {
    /// The 4-byte signed integer at `at`; the caller has checked `at + 4 <= buf.len()`.
    fn i32_at(&self, at: usize) -> i32 {
        let b: [u8; 4] = self.buf[at..at + 4].try_into().expect("4 bytes");
        if self.little {
            i32::from_le_bytes(b)
        } else {
            i32::from_be_bytes(b)
        }
    }

    fn i64_at(&self, at: usize) -> i64 {
        let b: [u8; 8] = self.buf[at..at + 8].try_into().expect("8 bytes");
        if self.little {
            i64::from_le_bytes(b)
        } else {
            i64::from_be_bytes(b)
        }
    }
}

impl PerfData {
    /// Parses an hsperfdata area (the whole file, or at least its `used` part).
    pub fn parse(buf: &[u8]) -> Result<PerfData, PerfDataError> {
        if buf.len() < PROLOGUE_LEN {
            return Err(PerfDataError::TooShort { len: buf.len() });
        }
        let found: [u8; 4] = buf[0..4].try_into().expect("4 bytes");
        if found != MAGIC {
            return Err(PerfDataError::BadMagic { found });
        }
        let little = match buf[4] {
            0 => false,
            1 => true,
            other => return Err(PerfDataError::BadByteOrder(other)),
        };
        let (major, minor) = (buf[5], buf[6]);
        if major != 2 {
            return Err(PerfDataError::UnsupportedVersion { major, minor });
        }
        let r = Reader { buf, little };
        let len = buf.len();
        let bad = |field, value: i64| PerfDataError::BadPrologue { field, value, len };
        // Entries live below `used`; a file may be longer (the mapping is page-sized), never
        // shorter, but a truncated copy is still readable up to its end.
        let used = r.i32_at(8);
        if used < PROLOGUE_LEN as i32 {
            return Err(bad("used", used.into()));
        }
        let end = (used as usize).min(len);
        let entry_offset = r.i32_at(24);
        if entry_offset < PROLOGUE_LEN as i32 || entry_offset as usize > end {
            return Err(bad("entry_offset", entry_offset.into()));
        }
        let count = r.i32_at(28);
        // Every entry takes at least its header, which bounds the count by the space left.
        if count < 0 || count as usize > (end - entry_offset as usize) / ENTRY_HEADER_LEN {
            return Err(bad("num_entries", count.into()));
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut at = entry_offset as usize;
        for index in 0..count as usize {
            let (entry, next) = parse_entry(&r, index, at, end)?;
            entries.push(entry);
            at = next;
        }
        Ok(PerfData {
            major,
            minor,
            accessible: buf[7] != 0,
            entries,
        })
    }

    /// The value of the counter called `name`.
    pub fn get(&self, name: &str) -> Option<&PerfValue> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| &e.value)
    }

    /// The string counter called `name`.
    pub fn string(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(PerfValue::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The `J` counter called `name`.
    pub fn long(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Some(PerfValue::Long(v)) => Some(*v),
            _ => None,
        }
    }

    /// Whether the JVM says its attach mechanism is enabled; `None` when the counter is missing
    /// or empty.
    pub fn attach_supported(&self) -> Option<bool> {
        match self.string(JVM_CAPABILITIES)?.chars().next()? {
            '1' => Some(true),
            '0' => Some(false),
            _ => None,
        }
    }
}

/// Parses the entry at `at` (which must end by `end`); returns it and where the next one starts.
fn parse_entry(
    r: &Reader,
    index: usize,
    at: usize,
    end: usize,
) -> Result<(PerfEntry, usize), PerfDataError> {
    let bad = |detail: String| PerfDataError::BadEntry {
        index,
        offset: at,
        detail,
    };
    if at + ENTRY_HEADER_LEN > end {
        return Err(bad(format!(
            "header runs past the end of the data ({end} bytes)"
        )));
    }
    let entry_length = r.i32_at(at);
    // A length below the header would make the walk stand still or go backwards.
    if entry_length < ENTRY_HEADER_LEN as i32 || at + entry_length as usize > end {
        return Err(bad(format!(
            "entry length {entry_length} does not fit between {ENTRY_HEADER_LEN} and the end of \
             the data"
        )));
    }
    let entry_length = entry_length as usize;
    let entry = &r.buf[at..at + entry_length];
    let name_offset = r.i32_at(at + 4);
    let vector_length = r.i32_at(at + 8);
    let data_type = r.buf[at + 12];
    let units = r.buf[at + 14];
    let data_offset = r.i32_at(at + 16);
    let inside = |v: i32| v >= ENTRY_HEADER_LEN as i32 && (v as usize) < entry_length;
    if !inside(name_offset) {
        return Err(bad(format!(
            "name offset {name_offset} is outside the entry ({entry_length} bytes)"
        )));
    }
    let name_bytes = &entry[name_offset as usize..];
    let name_len = name_bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| bad("name is not NUL-terminated inside the entry".into()))?;
    let name = String::from_utf8_lossy(&name_bytes[..name_len]).into_owned();
    if vector_length < 0 {
        return Err(bad(format!("negative vector length {vector_length}")));
    }
    if !inside(data_offset) {
        return Err(bad(format!(
            "data offset {data_offset} of {name} is outside the entry ({entry_length} bytes)"
        )));
    }
    let data_offset = data_offset as usize;
    let vector_length = vector_length as usize;
    let value = match (data_type, vector_length) {
        (b'J', 0) => {
            if data_offset + 8 > entry_length {
                return Err(bad(format!(
                    "the 8-byte value of {name} runs past the entry"
                )));
            }
            PerfValue::Long(r.i64_at(at + data_offset))
        }
        (b'B', n) if n > 0 && units == UNITS_STRING => {
            if data_offset + n > entry_length {
                return Err(bad(format!(
                    "the {n}-byte string {name} runs past the entry ({entry_length} bytes)"
                )));
            }
            let data = &entry[data_offset..data_offset + n];
            let len = data.iter().position(|&b| b == 0).unwrap_or(n);
            PerfValue::String(String::from_utf8_lossy(&data[..len]).into_owned())
        }
        (t, n) => PerfValue::Other {
            data_type: t,
            vector_length: n as u32,
        },
    };
    Ok((PerfEntry { name, value }, at + entry_length))
}

/// The hsperfdata file of the JVM `proc` (whose own pid is `ns_pid`): where it was found and
/// its bytes, or `None` when the JVM maps none (`-XX:-UsePerfData`, `-XX:+PerfDisableSharedMem`).
///
/// Only the JVM's own mapping counts (a path ending in `hsperfdata_<user>/<ns_pid>`): a file of
/// that name without the mapping may be left over from an earlier JVM that had the same pid.
/// The mapping is read through `/proc/PID/map_files` (which works even when the file was
/// deleted, as a /tmp cleaner may do), falling back to the path under `/proc/PID/root`.
pub fn read_mapped(
    proc: &Proc,
    ns_pid: i32,
) -> Result<Option<(PathBuf, Vec<u8>)>, crate::proc::ProcError> {
    let want = ns_pid.to_string();
    let maps = proc.maps()?;
    let Some((m, path)) = maps.iter().find_map(|m| match &m.name {
        MapName::Path { path, .. }
            if path.file_name().is_some_and(|n| *n == *want)
                && path
                    .parent()
                    .and_then(|p| p.file_name())
                    .is_some_and(|d| d.to_string_lossy().starts_with("hsperfdata_")) =>
        {
            Some((m, path))
        }
        _ => None,
    }) else {
        return Ok(None);
    };
    let read = |f: std::fs::File| -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        f.take(MAX_FILE_LEN).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    match proc.open_map_file(m.start, m.end) {
        Ok(f) => match read(f) {
            Ok(bytes) => return Ok(Some((path.clone(), bytes))),
            Err(e) => crate::info!(
                1,
                "process {}: cannot read hsperfdata {} through map_files: {e}",
                proc.pid(),
                path.display()
            ),
        },
        Err(e) => crate::info!(1, "process {}: {e}", proc.pid()),
    }
    let under_root = proc
        .root_path()
        .join(path.strip_prefix("/").unwrap_or(path));
    match std::fs::File::open(&under_root).and_then(read) {
        Ok(bytes) => Ok(Some((path.clone(), bytes))),
        Err(e) => {
            crate::info!(
                1,
                "process {}: cannot read hsperfdata {}: {e}",
                proc.pid(),
                under_root.display()
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a synthetic little- or big-endian area with the given (name, value) counters.
    pub(crate) fn synthetic(little: bool, counters: &[(&str, PerfValue)]) -> Vec<u8> {
        let put32 = |v: &mut Vec<u8>, x: i32| {
            v.extend_from_slice(&if little {
                x.to_le_bytes()
            } else {
                x.to_be_bytes()
            })
        };
        let mut entries = Vec::new();
        for (name, value) in counters {
            let mut e = Vec::new();
            let name_offset = ENTRY_HEADER_LEN;
            let mut name_bytes = name.as_bytes().to_vec();
            name_bytes.push(0);
            // Data aligned to 8 as the JVM does.
            let data_offset = (name_offset + name_bytes.len()).next_multiple_of(8);
            let (data_type, units, vector, data): (u8, u8, i32, Vec<u8>) = match value {
                PerfValue::Long(v) => (
                    b'J',
                    1,
                    0,
                    if little {
                        v.to_le_bytes().to_vec()
                    } else {
                        v.to_be_bytes().to_vec()
                    },
                ),
                PerfValue::String(s) => {
                    let mut d = s.as_bytes().to_vec();
                    d.resize(s.len() + 4, 0);
                    (b'B', UNITS_STRING, d.len() as i32, d)
                }
                PerfValue::Other { .. } => unreachable!("not built"),
            };
            let len = (data_offset + data.len()).next_multiple_of(8);
            put32(&mut e, len as i32);
            put32(&mut e, name_offset as i32);
            put32(&mut e, vector);
            e.extend_from_slice(&[data_type, 0, units, 3]);
            put32(&mut e, data_offset as i32);
            e.extend_from_slice(&name_bytes);
            e.resize(data_offset, 0);
            e.extend_from_slice(&data);
            e.resize(len, 0);
            entries.extend_from_slice(&e);
        }
        let mut buf = MAGIC.to_vec();
        buf.extend_from_slice(&[u8::from(little), 2, 0, 1]);
        put32(&mut buf, (PROLOGUE_LEN + entries.len()) as i32);
        put32(&mut buf, 0);
        buf.extend_from_slice(&[0; 8]);
        put32(&mut buf, PROLOGUE_LEN as i32);
        put32(&mut buf, counters.len() as i32);
        buf.extend_from_slice(&entries);
        // The file is a whole mapping: zero padding follows the used part.
        buf.resize(buf.len() + 100, 0);
        buf
    }

    fn sample() -> Vec<(&'static str, PerfValue)> {
        vec![
            (
                "sun.rt.createVmBeginTime",
                PerfValue::Long(1_700_000_000_123),
            ),
            (JVM_CAPABILITIES, PerfValue::String("1000000000".into())),
            (
                "java.property.java.version",
                PerfValue::String("17.0.15".into()),
            ),
        ]
    }

    #[test]
    fn parses_both_byte_orders() {
        for little in [true, false] {
            let pd = PerfData::parse(&synthetic(little, &sample())).unwrap();
            assert_eq!((pd.major, pd.minor, pd.accessible), (2, 0, true));
            assert_eq!(pd.entries.len(), 3);
            assert_eq!(pd.long("sun.rt.createVmBeginTime"), Some(1_700_000_000_123));
            assert_eq!(pd.string("java.property.java.version"), Some("17.0.15"));
            assert_eq!(pd.attach_supported(), Some(true));
            assert_eq!(pd.get("no.such.counter"), None);
        }
        let off = synthetic(
            true,
            &[(JVM_CAPABILITIES, PerfValue::String("0100".into()))],
        );
        assert_eq!(
            PerfData::parse(&off).unwrap().attach_supported(),
            Some(false)
        );
    }

    /// Byte offset of field `field_at` in entry `index` of a [`synthetic`] buffer.
    fn entry_field(buf: &[u8], index: usize, field_at: usize) -> usize {
        let mut at = PROLOGUE_LEN;
        for _ in 0..index {
            at += i32::from_le_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        }
        at + field_at
    }

    fn set32(buf: &mut [u8], at: usize, v: i32) {
        buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn bad_prologues_are_errors() {
        let good = synthetic(true, &sample());
        assert_eq!(
            PerfData::parse(&good[..31]),
            Err(PerfDataError::TooShort { len: 31 })
        );
        let mut b = good.clone();
        b[0] = 0xc0;
        assert!(matches!(
            PerfData::parse(&b),
            Err(PerfDataError::BadMagic { .. })
        ));
        let mut b = good.clone();
        b[4] = 7;
        assert_eq!(PerfData::parse(&b), Err(PerfDataError::BadByteOrder(7)));
        let mut b = good.clone();
        b[5] = 1;
        assert!(matches!(
            PerfData::parse(&b),
            Err(PerfDataError::UnsupportedVersion { major: 1, .. })
        ));
        for (field_at, value) in [
            (8, 4),         // used below the prologue
            (24, -1),       // negative entry offset
            (24, 1 << 30),  // entry offset beyond the data
            (28, -5),       // negative count
            (28, i32::MAX), // more entries than could fit
        ] {
            let mut b = good.clone();
            set32(&mut b, field_at, value);
            assert!(
                matches!(PerfData::parse(&b), Err(PerfDataError::BadPrologue { .. })),
                "field at {field_at} = {value}"
            );
        }
    }

    #[test]
    fn bad_entries_are_errors_not_panics() {
        let good = synthetic(true, &sample());
        // (entry, field offset, value)
        let cases = [
            (0, 0, 0),       // zero length: the walk would stand still
            (0, 0, 19),      // shorter than the header
            (0, 0, -8),      // negative length
            (1, 0, 1 << 20), // runs past the data
            (0, 4, 3),       // name inside the header
            (0, 4, 10_000),  // name beyond the entry
            (0, 8, -1),      // negative vector length
            (1, 16, 4000),   // data beyond the entry
            (1, 16, -100),   // negative data offset
            (1, 8, 4000),    // string longer than the entry
        ];
        for (index, field_at, value) in cases {
            let mut b = good.clone();
            set32(&mut b, entry_field(&good, index, field_at), value);
            assert!(
                matches!(PerfData::parse(&b), Err(PerfDataError::BadEntry { .. })),
                "entry {index} field {field_at} = {value}: {:?}",
                PerfData::parse(&b)
            );
        }
        // A name without its NUL inside the entry.
        let mut b = good.clone();
        let at = entry_field(&good, 0, 0);
        let len = i32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        for byte in &mut b[at + ENTRY_HEADER_LEN..at + len] {
            *byte = b'x';
        }
        assert!(matches!(
            PerfData::parse(&b),
            Err(PerfDataError::BadEntry { .. })
        ));
        // The count claims one more entry than `used` holds.
        let mut b = good.clone();
        set32(&mut b, 28, 4);
        assert!(PerfData::parse(&b).is_err());
        // Cut inside the second entry: `used` now points past the buffer.
        let cut = entry_field(&good, 1, 10);
        assert!(PerfData::parse(&good[..cut]).is_err());
    }

    #[test]
    fn every_truncation_and_byte_flip_is_handled() {
        // No input may panic: try every prefix, and every byte set to 0xff.
        let good = synthetic(true, &sample());
        for cut in 0..good.len() {
            let _ = PerfData::parse(&good[..cut]);
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] = 0xff;
            let _ = PerfData::parse(&b);
        }
    }
}
