//! The working-set file beside an image (`working-set.img`, [`WorkingSet`]): written by a
//! recording restore after the image was made, read by later restores to bring those pages in
//! first.
//!
//! Encoded and checksummed like every metadata file ([`crate::codec`], role `WorkingSet`), but
//! not listed in the inventory: recording it must not change any file of the image (a mapped
//! restore's page files are in use, and read-only). It is tied to its dump by the BLAKE3 of
//! `inventory.img` instead, and checked against the image's page runs, so a damaged, stale or
//! forged file is refused before anything is restored. Written atomically (a temporary file,
//! fsync, rename).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use crate::codec::{self, MetaRole};
use crate::error::ImageError;
use crate::format::Image;
use crate::schema::WorkingSet;

/// Name of the working-set file in an image directory.
pub const WORKING_SET_FILE: &str = "working-set.img";

/// Reads and checks the working set beside `image`; None when there is none.
pub fn read_working_set(image: &Image) -> Result<Option<WorkingSet>, ImageError> {
    let path = image.dir.join(WORKING_SET_FILE);
    let bad = |what: String| ImageError::WorkingSet {
        path: path.clone(),
        what,
    };
    let bytes = match codec::read_metadata_file(&path) {
        Err(ImageError::MissingFile { .. }) => return Ok(None),
        Err(ImageError::Corrupted { what, .. }) => return Err(bad(what)),
        Err(e) => return Err(bad(e.to_string())),
        Ok(b) => b,
    };
    let ws: WorkingSet =
        codec::decode(&bytes, MetaRole::WorkingSet, &path).map_err(|e| match e {
            ImageError::Corrupted { what, .. } => bad(what),
            ImageError::NotAnImage { .. } => bad("not a crest metadata file (bad magic)".into()),
            ImageError::Truncated {
                expected, actual, ..
            } => bad(format!("truncated: {actual} of {expected} bytes")),
            ImageError::Version { found, .. } => bad(format!(
                "written by another crest (format version {found}, this one reads {})",
                crate::FORMAT_VERSION
            )),
            other => bad(other.to_string()),
        })?;
    if ws.inventory_blake3 != image.inventory_blake3 {
        return Err(bad(
            "it was recorded for another dump: the image's inventory changed since".into(),
        ));
    }
    crate::validate::check_working_set(&ws, &image.processes, image.inventory.page_size)
        .map_err(bad)?;
    Ok(Some(ws))
}

/// Writes `ws` as the working set of the image in `dir`, replacing any older one atomically.
/// Checked against `image` first, as a reader would.
pub fn write_working_set(image: &Image, ws: &WorkingSet) -> Result<(), ImageError> {
    let dir = &image.dir;
    let path = dir.join(WORKING_SET_FILE);
    let write_err = |what: String| ImageError::Write {
        dir: dir.to_path_buf(),
        what,
    };
    crate::validate::check_working_set(ws, &image.processes, image.inventory.page_size)
        .map_err(|e| write_err(format!("the recorded working set is not valid: {e}")))?;
    let bytes = codec::encode(MetaRole::WorkingSet, ws)
        .map_err(|e| write_err(format!("encoding the working set: {e}")))?;
    // Not a *.img name, so that a reader never takes a half-written file for the real one.
    let tmp = dir.join(format!(".working-set.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| ImageError::io("create", &tmp, e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| ImageError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| ImageError::io("rename into place", &path, e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ImageError::io("fsync the directory", dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Encodes a working set exactly as [`write_working_set`] does, without any check (tests
/// forge files with it).
pub fn encode_working_set(ws: &WorkingSet) -> Vec<u8> {
    codec::encode(MetaRole::WorkingSet, ws).expect("a working set always encodes")
}
