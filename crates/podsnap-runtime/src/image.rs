//! Reader (and, for tests and fakes, writer) of the header of runsc's `checkpoint.img`.
//!
//! gVisor's state file starts with a small self-describing header (`pkg/state/statefile`):
//!
//! ```text
//! +--------------------+-------------------------+--------------------------+------------+
//! | magic "gVisorSF"   | metadata length N       | metadata: N bytes of a   | state data |
//! | 8 bytes            | 8 bytes, big endian     | JSON object string->str  | ...        |
//! +--------------------+-------------------------+--------------------------+------------+
//! ```
//!
//! Keys starting with `_` are written by runsc itself. runsc 20221219 writes exactly
//! `_timestamp`, `timestamp` and `cpu_usage` (found by experiment) and always compresses the data
//! with flate; newer releases add `compression` (`flate-best-speed` or `none`, a missing key means
//! the legacy flate format) and may follow the metadata with a 32-byte HMAC when a key is used.
//!
//! The header is untrusted input (an image may come from another node through the object
//! store): the reader reads at most [`MAX_METADATA_LEN`] bytes of metadata, never allocates
//! from the declared length before checking it, and reports short or garbled input as errors
//! that say what was wrong.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// The 8 magic bytes every gVisor state file starts with.
pub const MAGIC: &[u8; 8] = b"gVisorSF";

/// Largest metadata section this reader accepts (runsc itself allows 16 MiB, but writes a few
/// hundred bytes; anything near the limit is hostile or corrupt).
pub const MAX_METADATA_LEN: u64 = 1024 * 1024;

/// Name of the state file inside a checkpoint image directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.img";

/// Errors reading an image header.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The input ended before the header was complete.
    #[error("image header truncated: need {needed} bytes for the {part}, got {got}")]
    Truncated {
        /// Which part of the header was being read.
        part: &'static str,
        /// Bytes the part needs.
        needed: u64,
        /// Bytes that were available.
        got: u64,
    },
    /// The first 8 bytes are not `gVisorSF`.
    #[error("not a gVisor state file: bad magic {found:02x?}")]
    BadMagic {
        /// The bytes found instead.
        found: [u8; 8],
    },
    /// The declared metadata length exceeds [`MAX_METADATA_LEN`].
    #[error("image metadata length {len} exceeds the limit of {max} bytes")]
    MetadataTooLarge {
        /// Declared length.
        len: u64,
        /// Accepted maximum.
        max: u64,
    },
    /// The metadata is not a JSON object of strings.
    #[error("image metadata is not a JSON object of strings")]
    InvalidMetadata(#[source] serde_json::Error),
    /// Reading failed.
    #[error("reading image header")]
    Io(#[source] std::io::Error),
}

/// The parsed header of a state file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// The metadata map, keys sorted.
    pub metadata: BTreeMap<String, String>,
    /// Offset of the first byte after the metadata (where state data, or an HMAC, begins).
    pub data_offset: u64,
}

impl ImageHeader {
    /// The compression runsc recorded; `None` when the key is absent, which means the legacy
    /// always-flate format of releases such as 20221219.
    pub fn compression(&self) -> Option<&str> {
        self.metadata.get("compression").map(String::as_str)
    }
}

/// Fills `buf` as far as the reader allows; returns how many bytes were read.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, HeaderError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HeaderError::Io(e)),
        }
    }
    Ok(filled)
}

/// Reads and validates the header from the start of `r`, consuming exactly the header bytes.
pub fn read_header<R: Read>(mut r: R) -> Result<ImageHeader, HeaderError> {
    let mut magic = [0u8; 8];
    let got = read_up_to(&mut r, &mut magic)?;
    if got < magic.len() {
        return Err(HeaderError::Truncated {
            part: "magic",
            needed: 8,
            got: got as u64,
        });
    }
    if &magic != MAGIC {
        return Err(HeaderError::BadMagic { found: magic });
    }
    let mut len_buf = [0u8; 8];
    let got = read_up_to(&mut r, &mut len_buf)?;
    if got < len_buf.len() {
        return Err(HeaderError::Truncated {
            part: "metadata length",
            needed: 8,
            got: got as u64,
        });
    }
    let len = u64::from_be_bytes(len_buf);
    if len > MAX_METADATA_LEN {
        return Err(HeaderError::MetadataTooLarge {
            len,
            max: MAX_METADATA_LEN,
        });
    }
    // Bounded by MAX_METADATA_LEN above, so the allocation is at most 1 MiB.
    let mut meta = vec![0u8; len as usize];
    let got = read_up_to(&mut r, &mut meta)?;
    if (got as u64) < len {
        return Err(HeaderError::Truncated {
            part: "metadata",
            needed: len,
            got: got as u64,
        });
    }
    let metadata: BTreeMap<String, String> =
        serde_json::from_slice(&meta).map_err(HeaderError::InvalidMetadata)?;
    Ok(ImageHeader {
        metadata,
        data_offset: 16 + len,
    })
}

/// Reads the header of the state file at `path` (a `checkpoint.img`).
pub fn read_header_file(path: &Path) -> Result<ImageHeader, HeaderError> {
    let f = std::fs::File::open(path).map_err(HeaderError::Io)?;
    read_header(std::io::BufReader::new(f))
}

/// Reads the header of `checkpoint.img` in an image directory.
pub fn read_image_dir_header(image_dir: &Path) -> Result<ImageHeader, HeaderError> {
    read_header_file(&image_dir.join(CHECKPOINT_FILE))
}

/// Encodes a header with the given metadata (used by fakes and tests to make valid images).
pub fn encode_header(metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let json = serde_json::to_vec(metadata).expect("a map of strings always serialises");
    let mut out = Vec::with_capacity(16 + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u64).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn header_round_trips_and_reports_data_offset() {
        let m = meta(&[("_timestamp", "2026-01-01"), ("cpu_usage", "1ms")]);
        let mut bytes = encode_header(&m);
        let header_len = bytes.len() as u64;
        bytes.extend_from_slice(b"state data follows");
        let h = read_header(&bytes[..]).unwrap();
        assert_eq!(h.metadata, m);
        assert_eq!(h.data_offset, header_len);
        assert_eq!(h.compression(), None);
    }

    #[test]
    fn header_reader_consumes_only_the_header() {
        let mut bytes = encode_header(&meta(&[("compression", "none")]));
        bytes.extend_from_slice(b"REST");
        let mut cursor = std::io::Cursor::new(bytes);
        let h = read_header(&mut cursor).unwrap();
        assert_eq!(h.compression(), Some("none"));
        let mut rest = String::new();
        cursor.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "REST");
    }

    #[test]
    fn empty_input_is_truncated_magic() {
        let err = read_header(&b""[..]).unwrap_err();
        assert!(
            matches!(
                err,
                HeaderError::Truncated {
                    part: "magic",
                    got: 0,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn short_magic_is_truncated_not_bad_magic() {
        let err = read_header(&b"gVis"[..]).unwrap_err();
        assert!(
            matches!(err, HeaderError::Truncated { got: 4, .. }),
            "{err}"
        );
    }

    #[test]
    fn wrong_magic_is_rejected_with_the_bytes_found() {
        let err = read_header(&b"GVISORSF\0\0\0\0\0\0\0\x02{}"[..]).unwrap_err();
        match err {
            HeaderError::BadMagic { found } => assert_eq!(&found, b"GVISORSF"),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn truncated_length_is_reported() {
        let err = read_header(&b"gVisorSF\0\0\0"[..]).unwrap_err();
        assert!(
            matches!(
                err,
                HeaderError::Truncated {
                    part: "metadata length",
                    got: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn huge_declared_length_is_refused_without_allocating() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        let err = read_header(&bytes[..]).unwrap_err();
        assert!(
            matches!(err, HeaderError::MetadataTooLarge { len: u64::MAX, .. }),
            "{err}"
        );
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&(MAX_METADATA_LEN + 1).to_be_bytes());
        assert!(matches!(
            read_header(&bytes[..]),
            Err(HeaderError::MetadataTooLarge { .. })
        ));
    }

    #[test]
    fn metadata_shorter_than_declared_is_truncated() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&100u64.to_be_bytes());
        bytes.extend_from_slice(b"{\"a\":\"b\"}");
        let err = read_header(&bytes[..]).unwrap_err();
        assert!(
            matches!(
                err,
                HeaderError::Truncated {
                    part: "metadata",
                    needed: 100,
                    got: 9
                }
            ),
            "{err}"
        );
    }

    fn with_metadata(json: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&(json.len() as u64).to_be_bytes());
        bytes.extend_from_slice(json);
        bytes
    }

    #[test]
    fn garbled_or_non_string_metadata_is_invalid() {
        for json in [
            &b"not json"[..],
            b"[\"a\"]",
            b"{\"a\":1}",
            b"{\"a\":{\"b\":\"c\"}}",
            b"{\"a\":\"b\"",
            b"\xff\xfe",
            b"",
        ] {
            let err = read_header(&with_metadata(json)[..]).unwrap_err();
            assert!(
                matches!(err, HeaderError::InvalidMetadata(_)),
                "{json:?}: {err}"
            );
        }
    }

    #[test]
    fn empty_object_is_a_valid_header() {
        let h = read_header(&with_metadata(b"{}")[..]).unwrap();
        assert!(h.metadata.is_empty());
        assert_eq!(h.data_offset, 18);
    }

    #[test]
    fn error_messages_are_lowercase_and_specific() {
        let err = read_header(&b"xx"[..]).unwrap_err().to_string();
        assert_eq!(
            err,
            "image header truncated: need 8 bytes for the magic, got 2"
        );
    }
}
