//! Images in job input (the `image-embeddings` task): each is a `data:image/...;base64,` URI
//! or the URL of an input object stored by Ferry (`POST /v1/inputs`), and what can be told
//! of one from its first bytes without decoding it: its format and size. The API refuses
//! what it can see is wrong there (not PNG, JPEG or WebP, zero-sized, over the pixel limit,
//! an input this tenant never stored); the executor decodes and finds the rest.
//!
//! Input objects are keyed by the tenant's digest and an id the API makes
//! ([`upload_key`]), never by user text, under `inputs/` so they expire with job inputs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// The most pixels (width x height) an image may have: a 100-megapixel image is 400 MB
/// decoded. Pillow warns at 89 million and refuses twice that.
pub const MAX_IMAGE_PIXELS: u64 = 50_000_000;

/// The most images one job may hold.
pub const MAX_IMAGES: usize = 64;

/// The most bytes one stored input object may hold (`POST /v1/inputs`): a Lambda takes a 6
/// MB request, and API Gateway hands it binary bodies base64-encoded (4/3 larger).
pub const MAX_INPUT_OBJECT_BYTES: usize = 4 << 20;

/// An image file format the executor decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    WebP,
}

impl ImageFormat {
    pub fn media_type(&self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::WebP => "image/webp",
        }
    }
}

/// What an image's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

/// Where an image of a job's input is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A `data:` URI's bytes.
    Data(Vec<u8>),
    /// An input object stored by Ferry, by its id.
    Stored(String),
}

/// Reads one `images[i]` string: a `data:image/png|jpeg|webp;base64,...` URI, or a URL whose
/// path ends in `/v1/inputs/{id}` (the `url` `POST /v1/inputs` answered). The message says
/// what is wrong, for the field named by the caller.
pub fn parse_source(s: &str) -> Result<ImageSource, String> {
    if let Some(rest) = strip_prefix_ignore_case(s, "data:") {
        let (meta, data) = rest.split_once(',').ok_or("a data: URI needs a comma before its data")?;
        let mut parts = meta.split(';');
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        if !parts.any(|p| p.eq_ignore_ascii_case("base64")) {
            return Err("a data: URI of an image must be base64 (data:image/png;base64,...)".into());
        }
        if !matches!(media.as_str(), "image/png" | "image/jpeg" | "image/jpg" | "image/webp") {
            let shown: String = media.chars().take(40).collect();
            return Err(format!("media type {shown:?} is not one of image/png, image/jpeg, image/webp"));
        }
        let bytes = STANDARD
            .decode(data.trim().as_bytes())
            .map_err(|e| format!("the data: URI's base64 does not decode ({e})"))?;
        return Ok(ImageSource::Data(bytes));
    }
    if strip_prefix_ignore_case(s, "https://").is_some() || strip_prefix_ignore_case(s, "http://").is_some() {
        let path = s.split_once("://").map(|(_, r)| r).unwrap_or_default();
        let path = path.split(['?', '#']).next().unwrap_or_default();
        if let Some((_, id)) = path.rsplit_once("/v1/inputs/")
            && is_input_id(id)
        {
            return Ok(ImageSource::Stored(id.to_string()));
        }
        return Err("only URLs of input objects stored by Ferry are read (POST /v1/inputs answers one); \
                    other URLs are never fetched"
            .into());
    }
    Err("must be a data:image/...;base64, URI or the URL of an input stored with POST /v1/inputs".into())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// Whether `id` is one the API makes for an input object (a ULID, 26 Crockford base32
/// characters): nothing else reaches a key.
pub fn is_input_id(id: &str) -> bool {
    id.len() == 26
        && id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && id.parse::<ulid::Ulid>().is_ok()
}

/// A new input object id.
pub fn new_input_id() -> String {
    ulid::Ulid::new().to_string()
}

/// The key of a tenant's input object: the tenant's digest (tenant ids are the operator's,
/// but a key never holds them as they are) and the id.
pub fn upload_key(tenant: &str, id: &str) -> String {
    let digest = Sha256::digest(tenant.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("inputs/uploads/{hex}/{id}")
}

/// The image's format and size from its first bytes, or what is wrong with them.
pub fn sniff(bytes: &[u8]) -> Result<ImageHeader, String> {
    let header = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        png_header(bytes)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        jpeg_header(bytes)
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        webp_header(bytes)
    } else if bytes.is_empty() {
        return Err("the image is empty (0 bytes)".into());
    } else {
        return Err("not a PNG, JPEG or WebP image".into());
    };
    header.ok_or_else(|| "the image's header is truncated or corrupt".to_string())
}

/// [`sniff`], and the size within bounds: the check the API applies to every image, and the
/// executor before decoding one. The message is for the image's field.
pub fn check(bytes: &[u8]) -> Result<ImageHeader, String> {
    let h = sniff(bytes)?;
    if h.width == 0 || h.height == 0 {
        return Err(format!("the image is {}x{}: it has no pixels", h.width, h.height));
    }
    let pixels = h.width as u64 * h.height as u64;
    if pixels > MAX_IMAGE_PIXELS {
        return Err(format!(
            "the image is {}x{} ({pixels} pixels), over the limit of {MAX_IMAGE_PIXELS}",
            h.width, h.height
        ));
    }
    Ok(h)
}

fn be16(b: &[u8], at: usize) -> Option<u32> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?) as u32)
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le24(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 3)?;
    Some(s[0] as u32 | (s[1] as u32) << 8 | (s[2] as u32) << 16)
}

fn le16(b: &[u8], at: usize) -> Option<u32> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as u32)
}

/// PNG: the IHDR chunk comes first.
fn png_header(b: &[u8]) -> Option<ImageHeader> {
    (b.get(12..16)? == b"IHDR").then_some(())?;
    Some(ImageHeader { format: ImageFormat::Png, width: be32(b, 16)?, height: be32(b, 20)? })
}

/// JPEG: walks the markers to the first start-of-frame (SOF0-SOF15 but DHT, JPG, DAC).
fn jpeg_header(b: &[u8]) -> Option<ImageHeader> {
    let mut at = 2;
    loop {
        // Markers may be padded with any number of 0xFF.
        while *b.get(at)? == 0xFF && *b.get(at + 1)? == 0xFF {
            at += 1;
        }
        (*b.get(at)? == 0xFF).then_some(())?;
        let marker = *b.get(at + 1)?;
        match marker {
            0xD8 | 0x01 | 0xD0..=0xD7 => at += 2,
            0xD9 | 0xDA => return None,
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                return Some(ImageHeader {
                    format: ImageFormat::Jpeg,
                    height: be16(b, at + 5)?,
                    width: be16(b, at + 7)?,
                });
            }
            _ => at += 2 + be16(b, at + 2)? as usize,
        }
    }
}

/// WebP: the first chunk is VP8 (lossy), VP8L (lossless) or VP8X (extended).
fn webp_header(b: &[u8]) -> Option<ImageHeader> {
    let chunk = b.get(12..16)?;
    let (width, height) = match chunk {
        b"VP8 " => {
            (b.get(23..26)? == [0x9D, 0x01, 0x2A]).then_some(())?;
            (le16(b, 26)? & 0x3FFF, le16(b, 28)? & 0x3FFF)
        }
        b"VP8L" => {
            (*b.get(20)? == 0x2F).then_some(())?;
            let bits = u32::from_le_bytes(b.get(21..25)?.try_into().ok()?);
            ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        }
        b"VP8X" => (le24(b, 24)? + 1, le24(b, 27)? + 1),
        _ => return None,
    };
    Some(ImageHeader { format: ImageFormat::WebP, width, height })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_data_uris_or_urls_of_stored_inputs() {
        let png = STANDARD.encode(b"\x89PNG");
        assert_eq!(parse_source(&format!("data:image/png;base64,{png}")), Ok(ImageSource::Data(b"\x89PNG".to_vec())));
        assert!(parse_source(&format!("DATA:image/JPEG;base64,{png}")).is_ok());
        let id = "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B";
        for url in [
            format!("https://abc.execute-api.eu-west-1.amazonaws.com/v1/inputs/{id}"),
            format!("http://127.0.0.1:8080/prod/v1/inputs/{id}?x=1"),
        ] {
            assert_eq!(parse_source(&url), Ok(ImageSource::Stored(id.into())), "{url}");
        }
        for bad in [
            "https://example.com/cat.png",
            "https://example.com/v1/inputs/../../outputs/x",
            "data:image/gif;base64,R0lG",
            "data:image/png,rawbytes",
            "data:image/png;base64,@@@",
            "cat.png",
            "",
        ] {
            assert!(parse_source(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_hold_a_digest_and_an_id_only() {
        let key = upload_key("tenant/../x", "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B");
        assert!(key.starts_with("inputs/uploads/") && key.ends_with("/01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B"), "{key}");
        assert!(!key.contains(".."));
        assert_ne!(upload_key("a", "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B"), upload_key("b", "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B"));
        assert!(!is_input_id("../../../../../../../../../x") && is_input_id(&new_input_id()));
    }

    #[test]
    fn headers_give_format_and_size() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend(300u32.to_be_bytes());
        png.extend(200u32.to_be_bytes());
        assert_eq!(sniff(&png), Ok(ImageHeader { format: ImageFormat::Png, width: 300, height: 200 }));
        assert!(sniff(&png[..20]).is_err());
        let jpeg =
            [0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 0xFF, 0xFF, 0xC0, 0, 11, 8, 0, 50, 0, 70, 3, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(sniff(&jpeg), Ok(ImageHeader { format: ImageFormat::Jpeg, width: 70, height: 50 }));
        let mut webp = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\x10\0\0\0".to_vec();
        webp.extend([99, 0, 0, 49, 0, 0]);
        assert_eq!(sniff(&webp), Ok(ImageHeader { format: ImageFormat::WebP, width: 100, height: 50 }));
        assert!(sniff(b"GIF89a").is_err() && sniff(b"").is_err());
        let mut zero = png.clone();
        zero[16..20].copy_from_slice(&0u32.to_be_bytes());
        assert!(check(&zero).unwrap_err().contains("no pixels"));
        let mut huge = png.clone();
        huge[16..24].copy_from_slice(&[0, 0, 0x40, 0, 0, 0, 0x40, 0]);
        assert!(check(&huge).unwrap_err().contains("over the limit"));
    }
}
