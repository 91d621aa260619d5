//! Recognising all-zero pages quickly: OR-ing 64-byte blocks as u64 words lets the compiler
//! vectorise, and the first non-zero block ends the test early.

/// Whether every byte of `page` is zero.
pub fn is_zero(page: &[u8]) -> bool {
    let mut blocks = page.chunks_exact(64);
    for block in &mut blocks {
        let mut acc = 0u64;
        for word in block.chunks_exact(8) {
            acc |= u64::from_ne_bytes(word.try_into().expect("chunks_exact(8)"));
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn finds_a_single_set_byte_anywhere() {
        let mut page = vec![0u8; 4096];
        assert!(is_zero(&page));
        for pos in [0, 7, 63, 64, 2048, 4095] {
            page[pos] = 1;
            assert!(!is_zero(&page), "byte {pos}");
            page[pos] = 0;
        }
        // Lengths that are not a multiple of the block size still check every byte.
        let mut odd = vec![0u8; 100];
        assert!(is_zero(&odd));
        odd[99] = 0x80;
        assert!(!is_zero(&odd));
    }
}
