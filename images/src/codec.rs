//! Encoding of one metadata file (`inventory.img`, `process-<pid>.img`):
//!
//! ```text
//! MAGIC b"CRESTIMG" (8) | format version u32 LE | role u32 LE | payload length u64 LE
//! postcard payload (payload length bytes)
//! BLAKE3 of header + payload (32)
//! ```
//!
//! The header is fixed across versions so that any crest can tell "another version" from
//! "not an image" and "corrupted", and the trailing hash makes every flipped bit visible.

use std::io::Read;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ImageError;
use crate::FORMAT_VERSION;

pub(crate) const MAGIC: [u8; 8] = *b"CRESTIMG";
pub(crate) const HEADER_LEN: usize = 24;
pub(crate) const TRAILER_LEN: usize = 32;
/// Upper bound on a metadata file. A process with a million VMAs and page runs stays far
/// below it; anything bigger is hostile or corrupted and is not read into memory.
pub(crate) const MAX_METADATA_LEN: u64 = 1 << 30;

/// What a metadata file holds; stored in the header so a file cannot stand in for another kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaRole {
    Inventory = 1,
    Process = 2,
    WorkingSet = 3,
}

impl MetaRole {
    fn name(self) -> &'static str {
        match self {
            MetaRole::Inventory => "an inventory",
            MetaRole::Process => "a process record",
            MetaRole::WorkingSet => "a working set",
        }
    }
}

/// Encodes `value` as a complete metadata file of the current format version.
pub(crate) fn encode<T: Serialize>(role: MetaRole, value: &T) -> Result<Vec<u8>, postcard::Error> {
    encode_with_version(role, value, FORMAT_VERSION)
}

/// [`encode`] with an explicit version; only tests write other versions.
pub(crate) fn encode_with_version<T: Serialize>(
    role: MetaRole,
    value: &T,
    version: u32,
) -> Result<Vec<u8>, postcard::Error> {
    let payload = postcard::to_stdvec(value)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TRAILER_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(role as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    Ok(out)
}

/// Reads a whole metadata file, refusing anything larger than [`MAX_METADATA_LEN`].
pub(crate) fn read_metadata_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ImageError::MissingFile {
                path: path.to_path_buf(),
            }
        } else {
            ImageError::io("open", path, e)
        }
    })?;
    let len = file
        .metadata()
        .map_err(|e| ImageError::io("stat", path, e))?
        .len();
    if len > MAX_METADATA_LEN {
        return Err(ImageError::Corrupted {
            path: path.to_path_buf(),
            what: format!("{len} bytes is far larger than any metadata file"),
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    huge_pages_for(&mut bytes);
    file.take(MAX_METADATA_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ImageError::io("read", path, e))?;
    Ok(bytes)
}

/// Asks for transparent huge pages under a large buffer about to be filled: a process record of
/// a thousand threads is megabytes, and faulting it in 4 KiB at a time took milliseconds.
/// Only the 2 MiB-aligned part qualifies; on a kernel without THP nothing changes.
fn huge_pages_for(buf: &mut Vec<u8>) {
    const HUGE: usize = 2 << 20;
    let start = (buf.as_mut_ptr() as usize).next_multiple_of(HUGE);
    let end = (buf.as_mut_ptr() as usize + buf.capacity()) & !(HUGE - 1);
    if end > start {
        // SAFETY: [start, end) lies inside the Vec's own allocation, not yet written;
        // MADV_HUGEPAGE only changes how the kernel backs it, never its contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

/// Checks header, length and checksum of a metadata file and decodes its payload.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    role: MetaRole,
    path: &Path,
) -> Result<T, ImageError> {
    let corrupted = |what: String| ImageError::Corrupted {
        path: path.to_path_buf(),
        what,
    };
    if bytes.len() < MAGIC.len() {
        if MAGIC.starts_with(bytes) && !bytes.is_empty() {
            return Err(ImageError::Truncated {
                path: path.to_path_buf(),
                expected: (HEADER_LEN + TRAILER_LEN) as u64,
                actual: bytes.len() as u64,
            });
        }
        return Err(ImageError::NotAnImage {
            path: path.to_path_buf(),
        });
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(ImageError::NotAnImage {
            path: path.to_path_buf(),
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(ImageError::Truncated {
            path: path.to_path_buf(),
            expected: (HEADER_LEN + TRAILER_LEN) as u64,
            actual: bytes.len() as u64,
        });
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4-byte slice"));
    let file_role = u32::from_le_bytes(bytes[12..16].try_into().expect("4-byte slice"));
    let payload_len = u64::from_le_bytes(bytes[16..24].try_into().expect("8-byte slice"));

    // Where the file ends if the header's length is right; None when the length is absurd.
    let expected_total = payload_len
        .checked_add((HEADER_LEN + TRAILER_LEN) as u64)
        .filter(|&t| t <= MAX_METADATA_LEN);
    let checksum_ok = expected_total
        .filter(|&t| t == bytes.len() as u64)
        .map(|t| {
            let body = t as usize - TRAILER_LEN;
            blake3::hash(&bytes[..body]).as_bytes()[..] == bytes[body..]
        })
        .unwrap_or(false);

    if version != FORMAT_VERSION {
        return Err(ImageError::Version {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
            checksum_ok,
        });
    }
    let Some(expected_total) = expected_total else {
        return Err(corrupted(format!(
            "header claims a payload of {payload_len} bytes"
        )));
    };
    let actual = bytes.len() as u64;
    if actual < expected_total {
        return Err(ImageError::Truncated {
            path: path.to_path_buf(),
            expected: expected_total,
            actual,
        });
    }
    if actual > expected_total {
        return Err(corrupted(format!(
            "{} bytes after the end of the record",
            actual - expected_total
        )));
    }
    if !checksum_ok {
        return Err(corrupted("checksum mismatch".to_string()));
    }
    if file_role != role as u32 {
        return Err(corrupted(format!(
            "the file holds record kind {file_role}, expected {}",
            role.name()
        )));
    }
    let payload = &bytes[HEADER_LEN..bytes.len() - TRAILER_LEN];
    let (value, rest) = postcard::take_from_bytes::<T>(payload)
        .map_err(|e| corrupted(format!("cannot decode the record: {e}")))?;
    if !rest.is_empty() {
        return Err(corrupted(format!(
            "{} undecoded bytes after the record",
            rest.len()
        )));
    }
    Ok(value)
}
