//! `#[serde(with = "crate::bytes")]` for a `Vec<u8>` field: the same bytes on disk as the
//! default (postcard writes a byte string and a sequence of u8 alike: a varint length, then the
//! raw bytes), but decoded in one copy instead of one visitor call per byte. Register areas of
//! every thread (a 2-11 KiB XSAVE area each) made a 1000-thread image take tens of
//! milliseconds to decode that way. serde_json (`crest show --json`) still shows and reads a
//! list of numbers.

use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // The size hint comes from the input: capped so a corrupted length cannot make it
        // allocate more than the bytes that follow.
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element()? {
            v.push(b);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain {
        a: u32,
        data: Vec<u8>,
        b: u64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Fast {
        a: u32,
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
        b: u64,
    }

    #[test]
    fn same_bytes_on_disk_as_a_plain_vec() {
        for len in [0usize, 1, 127, 128, 300, 11008] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let plain = Plain {
                a: 5,
                data: data.clone(),
                b: u64::MAX,
            };
            let fast = Fast {
                a: 5,
                data,
                b: u64::MAX,
            };
            let plain_bytes = postcard::to_stdvec(&plain).unwrap();
            let fast_bytes = postcard::to_stdvec(&fast).unwrap();
            assert_eq!(plain_bytes, fast_bytes, "len {len}");
            let back: Fast = postcard::from_bytes(&plain_bytes).unwrap();
            assert_eq!(back, fast);
            let back: Plain = postcard::from_bytes(&fast_bytes).unwrap();
            assert_eq!(back, plain);
        }
    }

    #[test]
    fn json_is_a_list_of_numbers_both_ways() {
        let fast = Fast {
            a: 1,
            data: vec![0, 255, 7],
            b: 2,
        };
        let text = serde_json::to_string(&fast).unwrap();
        assert_eq!(text, r#"{"a":1,"data":[0,255,7],"b":2}"#);
        assert_eq!(serde_json::from_str::<Fast>(&text).unwrap(), fast);
    }

    #[test]
    fn a_length_past_the_end_is_an_error() {
        // varint length 200, then only 3 bytes.
        let bytes = [1u8, 200, 1, 1, 2, 3];
        assert!(postcard::from_bytes::<Fast>(&bytes).is_err());
    }
}
