//! The crest image format: the one schema of what is on disk ([`schema`]), and the only code
//! that reads or writes image files ([`format`]).

mod bytes;
mod codec;
mod error;
pub mod format;
pub mod schema;
pub mod validate;
mod workingset;
mod writer;

#[cfg(test)]
mod tests;

pub use format::{
    host_page_size, open_image, open_image_metadata, pages_file_name, process_file_name,
    validate_process, verify_pages, Image, ImageError, ImageWriter, PageFileWriter,
};
pub use schema::*;
pub use workingset::{encode_working_set, read_working_set, write_working_set, WORKING_SET_FILE};

/// Version of the on-disk format; bumped whenever [`schema`] changes.
pub const FORMAT_VERSION: u32 = 15;
/// Name of the table of contents inside an image directory.
pub const INVENTORY_FILE: &str = "inventory.img";
