//! Reading an ingest request's body: bounded in size and in time, and
//! decompressed (`Content-Encoding: gzip` or `zstd`) with the same bound on
//! what it decompresses to.
//!
//! - Size: a body over `limits.max_body_bytes` is answered 413 naming the
//!   limit, and never held: past the limit its bytes are read and discarded,
//!   up to as much again, so that a client which sends its whole body before
//!   it reads the answer still gets it; beyond twice the limit (or a
//!   `Content-Length` saying so) nothing more is read and the connection
//!   closes.
//! - Time: the whole body must arrive within `http.body_read_timeout_ms`;
//!   a slower upload is answered 408 and its connection closed, so that a
//!   trickle of bytes cannot hold a request slot.
//! - Compression: decoded in chunks on a blocking thread, stopping at the
//!   body limit (a zip bomb costs at most the limit, and is answered 413);
//!   a body that does not decode is answered 400. A zstd frame asking for a
//!   window larger than the limit (or 8 MiB, if larger) is refused before
//!   the decoder allocates it.
//!
//! Answers that leave a body unread carry `Connection: close`.

use std::io::Read;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use tokio_stream::StreamExt as _;

use crate::core::limits::Limits;
use crate::status::{Class, Classify};

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Over the body limit, as sent or decompressed (413); `read_whole`:
    /// the body was read to its end (discarded), the connection can go on.
    #[error("{message}")]
    TooLarge { message: String, read_whole: bool },
    /// Not received within `http.body_read_timeout_ms` (408).
    #[error("{0}")]
    Timeout(String),
    /// An encoding this node does not decode, or a body that does not
    /// decode (400).
    #[error("{0}")]
    Malformed(String),
}

impl Classify for BodyError {
    fn class(&self) -> Class {
        match self {
            BodyError::TooLarge { .. } => Class::TooLarge,
            BodyError::Timeout(_) => Class::Timeout,
            BodyError::Malformed(_) => Class::Invalid,
        }
    }
}

impl BodyError {
    /// Whether the body may be left partly unread: the connection must close.
    pub fn closes_connection(&self) -> bool {
        match self {
            BodyError::TooLarge { read_whole, .. } => !read_whole,
            BodyError::Timeout(_) => true,
            BodyError::Malformed(_) => false,
        }
    }
}

/// `Content-Encoding` values this node decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
    /// Snappy's block format, as Prometheus remote write sends it.
    Snappy,
}

impl Encoding {
    /// The body's encoding, from its `Content-Encoding` header.
    pub fn of(headers: &HeaderMap) -> Result<Encoding, BodyError> {
        let Some(value) = headers.get(header::CONTENT_ENCODING) else {
            return Ok(Encoding::Identity);
        };
        let value = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
        match value.as_str() {
            "" | "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "zstd" => Ok(Encoding::Zstd),
            "snappy" => Ok(Encoding::Snappy),
            other => Err(BodyError::Malformed(format!(
                "Content-Encoding {other:?} is not supported: use gzip, zstd, snappy or none"
            ))),
        }
    }
}

/// Reads the whole body, within the size and time limits, and decodes it.
pub async fn read(body: Body, headers: &HeaderMap, limits: &Limits) -> Result<Bytes, BodyError> {
    // An unknown encoding is answered once the body is read: the
    // connection can then serve the client's next request.
    let encoding = Encoding::of(headers);
    let limit = limits.max_body_bytes;
    let too_large = |read_whole| BodyError::TooLarge {
        message: format!(
            "request body is larger than {limit} bytes ({})",
            limits.max_body_key
        ),
        read_whole,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > 2 * limit as u64) {
        return Err(too_large(false));
    }
    let capacity = declared.map_or(0, |n| n as usize);
    let timeout = limits.body_read_timeout;
    let raw = tokio::time::timeout(timeout, collect(body, capacity, limit))
        .await
        .map_err(|_| {
            BodyError::Timeout(format!(
                "request body not received within {} ms (http.body_read_timeout_ms)",
                timeout.as_millis()
            ))
        })?
        .map_err(|e| match e {
            Collect::TooLarge { read_whole } => too_large(read_whole),
            Collect::Broken(e) => BodyError::Malformed(format!("reading the request body: {e}")),
        })?;
    let encoding = encoding?;
    if encoding == Encoding::Identity {
        return Ok(raw);
    }
    let key = limits.max_body_key;
    crate::api::request_id::spawn_blocking(move || decode(encoding, &raw, limit, key))
        .await
        .map_err(|e| BodyError::Malformed(format!("decoding the request body: {e}")))?
}

enum Collect {
    /// `read_whole`: the body ended within twice the limit.
    TooLarge {
        read_whole: bool,
    },
    Broken(axum::Error),
}

/// The body's bytes, up to `limit`; past it, the rest is discarded up to
/// `limit` more bytes, then refused.
async fn collect(body: Body, capacity: usize, limit: usize) -> Result<Bytes, Collect> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::with_capacity(capacity.min(limit));
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Collect::Broken)?;
        total = total.saturating_add(chunk.len());
        if total <= limit {
            out.extend_from_slice(&chunk);
        } else if total > limit.saturating_mul(2) {
            return Err(Collect::TooLarge { read_whole: false });
        } else if !out.is_empty() {
            // Over the limit: nothing of it is kept.
            out = Vec::new();
        }
    }
    if total > limit {
        return Err(Collect::TooLarge { read_whole: true });
    }
    Ok(Bytes::from(out))
}

/// Decodes `raw`, stopping once the output passes `limit` (`key` names it).
pub fn decode(encoding: Encoding, raw: &[u8], limit: usize, key: &str) -> Result<Bytes, BodyError> {
    let mut out = Vec::new();
    match encoding {
        Encoding::Identity => return Ok(Bytes::copy_from_slice(raw)),
        Encoding::Gzip => {
            let mut decoder = flate2::read::MultiGzDecoder::new(raw);
            read_bounded(&mut decoder, &mut out, limit, key, "gzip")?;
        }
        Encoding::Zstd => decode_zstd(raw, &mut out, limit, key)?,
        Encoding::Snappy => return decode_snappy(raw, limit, key),
    }
    Ok(Bytes::from(out))
}

/// Decodes a snappy block, whose header states its decoded length: a body
/// stating more than `limit` is refused before anything is allocated.
fn decode_snappy(raw: &[u8], limit: usize, key: &str) -> Result<Bytes, BodyError> {
    let malformed =
        |e: snap::Error| BodyError::Malformed(format!("request body is not valid snappy: {e}"));
    let len = snap::raw::decompress_len(raw).map_err(malformed)?;
    if len > limit {
        return Err(BodyError::TooLarge {
            message: format!("request body decompresses to more than {limit} bytes ({key})"),
            read_whole: true,
        });
    }
    let mut out = vec![0u8; len];
    let n = snap::raw::Decoder::new()
        .decompress(raw, &mut out)
        .map_err(malformed)?;
    out.truncate(n);
    Ok(Bytes::from(out))
}

/// Reads `reader` to its end into `out`, refusing output past `limit`.
fn read_bounded(
    reader: &mut impl Read,
    out: &mut Vec<u8>,
    limit: usize,
    key: &str,
    what: &str,
) -> Result<(), BodyError> {
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(BodyError::Malformed(format!(
                    "request body is not valid {what}: {e}"
                )));
            }
        };
        if out.len() + n > limit {
            return Err(BodyError::TooLarge {
                message: format!("request body decompresses to more than {limit} bytes ({key})"),
                read_whole: true,
            });
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// zstd magic number, little-endian on the wire.
const ZSTD_MAGIC: u32 = 0xFD2F_B528;

/// Largest window a zstd frame may ask for, whatever the body limit.
const MIN_WINDOW_CAP: u64 = 8 << 20;

/// Decodes every frame of a zstd body (skippable frames are skipped).
fn decode_zstd(raw: &[u8], out: &mut Vec<u8>, limit: usize, key: &str) -> Result<(), BodyError> {
    let malformed =
        |e: String| BodyError::Malformed(format!("request body is not valid zstd: {e}"));
    let mut src = raw;
    if src.is_empty() {
        return Err(malformed("empty body".into()));
    }
    while !src.is_empty() {
        let magic = src
            .get(..4)
            .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]))
            .ok_or_else(|| malformed("truncated frame".into()))?;
        if magic & 0xFFFF_FFF0 == 0x184D_2A50 {
            let len = src
                .get(4..8)
                .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
                .ok_or_else(|| malformed("truncated skippable frame".into()))?;
            src = src
                .get(8 + len..)
                .ok_or_else(|| malformed("truncated skippable frame".into()))?;
            continue;
        }
        if magic != ZSTD_MAGIC {
            return Err(malformed("no zstd frame".into()));
        }
        let window = zstd_window(src).ok_or_else(|| malformed("truncated frame header".into()))?;
        let cap = (limit as u64).max(MIN_WINDOW_CAP);
        if window > cap {
            return Err(BodyError::TooLarge {
                message: format!(
                    "request body is a zstd frame with a window of {window} bytes, more than this node decodes ({cap} bytes, from {key})"
                ),
                read_whole: true,
            });
        }
        let mut decoder = ruzstd::decoding::StreamingDecoder::new(&mut src)
            .map_err(|e| malformed(e.to_string()))?;
        read_bounded(&mut decoder, out, limit, key, "zstd")?;
    }
    Ok(())
}

/// The window size a zstd frame header (at the start of `frame`) asks for:
/// its window descriptor, or for a single-segment frame its content size.
fn zstd_window(frame: &[u8]) -> Option<u64> {
    let descriptor = *frame.get(4)?;
    let single_segment = descriptor & 0x20 != 0;
    if !single_segment {
        let wd = *frame.get(5)?;
        let base = 1u64 << (10 + (wd >> 3));
        return Some(base + (base / 8) * u64::from(wd & 7));
    }
    let dict_len = [0usize, 1, 2, 4][usize::from(descriptor & 3)];
    let fcs_len = [1usize, 2, 4, 8][usize::from(descriptor >> 6)];
    let at = 5 + dict_len;
    let bytes = frame.get(at..at + fcs_len)?;
    let mut le = [0u8; 8];
    le[..fcs_len].copy_from_slice(bytes);
    let size = u64::from_le_bytes(le);
    Some(if fcs_len == 2 { size + 256 } else { size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("in memory");
        e.finish().expect("in memory")
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    const KEY: &str = "limits.max_body_bytes";

    #[test]
    fn gzip_and_zstd_decode_exactly_and_in_several_frames() {
        let data = b"{\"metric\":\"a\",\"kind\":\"counter\"}\n".repeat(1000);
        for (encoding, packed) in [(Encoding::Gzip, gzip(&data)), (Encoding::Zstd, zstd(&data))] {
            let out = decode(encoding, &packed, 1 << 20, KEY).expect("decodes");
            assert_eq!(&out[..], &data[..], "{encoding:?}");
            let mut twice = packed.clone();
            twice.extend_from_slice(&packed);
            let out = decode(encoding, &twice, 1 << 20, KEY).expect("two frames decode");
            assert_eq!(out.len(), 2 * data.len(), "{encoding:?}");
        }
    }

    #[test]
    fn snappy_blocks_decode_within_the_limit_read_from_their_header() {
        let data = b"remote write ".repeat(1000);
        let packed = snap::raw::Encoder::new()
            .compress_vec(&data)
            .expect("compressing");
        let out = decode(Encoding::Snappy, &packed, 1 << 20, KEY).expect("decodes");
        assert_eq!(&out[..], &data[..]);
        // The header states 12 000 bytes: over a 1 000 byte limit, refused
        // before anything is decoded.
        let err = decode(Encoding::Snappy, &packed, 1_000, KEY).expect_err("refused");
        assert!(matches!(err, BodyError::TooLarge { .. }), "{err}");
        let err = decode(Encoding::Snappy, b"\xff\xff\xff", 1 << 20, KEY).expect_err("refused");
        assert!(matches!(err, BodyError::Malformed(_)), "{err}");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 8 << 20];
        for (encoding, packed) in [
            (Encoding::Gzip, gzip(&zeros)),
            (Encoding::Zstd, zstd(&zeros)),
        ] {
            assert!(packed.len() < 64 << 10, "{encoding:?}: {}", packed.len());
            let err = decode(encoding, &packed, 1 << 20, KEY).expect_err("over the limit");
            assert_eq!(
                err.to_string(),
                format!("request body decompresses to more than 1048576 bytes ({KEY})"),
                "{encoding:?}"
            );
            assert!(!err.closes_connection());
        }
    }

    #[test]
    fn malformed_bodies_are_400s_naming_the_encoding() {
        for (encoding, bytes, what) in [
            (Encoding::Gzip, &b"not gzip at all"[..], "gzip"),
            (Encoding::Zstd, &b"not zstd at all"[..], "zstd"),
            (Encoding::Zstd, &b""[..], "zstd"),
        ] {
            let err = decode(encoding, bytes, 1 << 20, KEY).expect_err("malformed");
            assert!(
                matches!(&err, BodyError::Malformed(m) if m.contains(what)),
                "{err}"
            );
        }
        let mut truncated = gzip(b"hello world, hello world");
        truncated.truncate(truncated.len() - 6);
        assert!(matches!(
            decode(Encoding::Gzip, &truncated, 1 << 20, KEY),
            Err(BodyError::Malformed(_))
        ));
    }

    #[test]
    fn a_zstd_frame_with_a_huge_window_is_refused_before_decoding() {
        // Magic, a descriptor without single segment, window log 10 + 17 = 128 MiB.
        let frame = [0x28, 0xB5, 0x2F, 0xFD, 0x00, 17 << 3, 0, 0, 0];
        assert_eq!(zstd_window(&frame), Some(128 << 20));
        let err = decode(Encoding::Zstd, &frame, 1 << 20, KEY).expect_err("refused");
        assert!(
            matches!(&err, BodyError::TooLarge { message, .. } if message.contains("window")),
            "{err}"
        );
        // Single segment: the content size is the window.
        let frame = [0x28, 0xB5, 0x2F, 0xFD, 0x60, 0x10, 0x00];
        assert_eq!(zstd_window(&frame), Some(0x10 + 256));
    }

    #[test]
    fn content_encodings_are_recognised() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_ENCODING, v.parse().expect("valid header"));
            Encoding::of(&h)
        };
        assert_eq!(Encoding::of(&HeaderMap::new()), Ok(Encoding::Identity));
        assert_eq!(with("GZIP"), Ok(Encoding::Gzip));
        assert_eq!(with("zstd"), Ok(Encoding::Zstd));
        assert_eq!(with("identity"), Ok(Encoding::Identity));
        assert!(matches!(with("br"), Err(BodyError::Malformed(m)) if m.contains("\"br\"")));
    }
}
