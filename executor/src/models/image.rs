//! Images for vision models: decoding PNG, JPEG and WebP to RGB, and the preprocessing HF
//! transformers' `CLIPImageProcessor` applies, from a model's `preprocessor_config.json`.
//!
//! Step by step as the processor's Pillow backend does it:
//!
//! 1. RGB conversion: an image with transparency (an alpha channel, or a PNG `tRNS` chunk)
//!    is composited onto white (Pillow's `alpha_composite`, exact), grey is replicated,
//!    palettes looked up. 16-bit PNGs keep their high byte.
//! 2. resize with Pillow's resampling (bicubic, `a = -0.5`, or bilinear), integer-exact:
//!    the same fixed-point coefficients, the same two separable passes with 8-bit rounding
//!    between them, in Pillow 13's order (vertical first when the height shrinks by more
//!    than twice what the width does). `shortest_edge` keeps the aspect ratio, the long
//!    edge truncated as transformers does.
//! 3. center crop (`(size - crop) / 2` rounded down; zero padding where the image is
//!    smaller, as the Pillow backend pads);
//! 4. rescale (f64, then f32) and normalize with the config's mean and std (f32).
//!
//! The torchvision backend (transformers' default when torchvision is installed) resizes
//! with torch's antialiased bicubic instead, which is not bit-exact with Pillow: on the
//! test images its embeddings differ from the Pillow backend's by up to 1e-4 in cosine.
//! Decoders: `png`, mozjpeg's libjpeg-turbo decoder (Pillow's, with its settings) and
//! `image-webp`; on the test images all three give Pillow's pixels exactly
//! (executor/tests/clip.rs).

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use ferry_core::images::{ImageFormat, MAX_IMAGE_PIXELS};
use ferry_core::input::OutOfBounds;
use serde_json::Value;

use super::{ModelError, load_err};

/// A decoded image: 8-bit RGB, row-major, interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Interleaved pixels with `channels` (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) per pixel,
    /// as RGB: grey replicated, alpha composited onto white.
    fn from_channels(width: usize, height: usize, channels: usize, px: &[u8]) -> Result<RgbImage, String> {
        if px.len() < width * height * channels {
            return Err("the decoder returned fewer pixels than the image has".into());
        }
        let mut data = Vec::with_capacity(width * height * 3);
        for p in px.chunks_exact(channels).take(width * height) {
            let (rgb, alpha) = match channels {
                1 => ([p[0]; 3], 255),
                2 => ([p[0]; 3], p[1]),
                3 => ([p[0], p[1], p[2]], 255),
                _ => ([p[0], p[1], p[2]], p[3]),
            };
            data.extend(rgb.map(|c| on_white(c, alpha)));
        }
        Ok(RgbImage { width, height, data })
    }
}

/// A channel of a pixel with coverage `alpha` composited onto opaque white (Pillow's
/// `alpha_composite`: the same integers for every pair).
fn on_white(c: u8, alpha: u8) -> u8 {
    let (c, a) = (c as u32, alpha as u32);
    ((c * a + 255 * (255 - a) + 127) / 255) as u8
}

/// Decodes `bytes` (PNG, JPEG or WebP) to RGB. Every problem, a decoder's panic included,
/// is an [`OutOfBounds`] naming `field`: a bad image fails its job, never the executor.
pub fn decode(bytes: &[u8], field: &str) -> Result<RgbImage, OutOfBounds> {
    let header = ferry_core::images::check(bytes).map_err(|m| OutOfBounds::new(field, m))?;
    let decoded = catch_unwind(AssertUnwindSafe(|| match header.format {
        ImageFormat::Png => decode_png(bytes),
        ImageFormat::Jpeg => decode_jpeg(bytes),
        ImageFormat::WebP => decode_webp(bytes),
    }))
    .unwrap_or_else(|_| Err("the decoder failed on this image".into()));
    let image = decoded
        .map_err(|m| OutOfBounds::new(field, format!("cannot decode the {} image: {m}", header.format.media_type())))?;
    if image.width == 0 || image.height == 0 || (image.width * image.height) as u64 > MAX_IMAGE_PIXELS {
        return Err(OutOfBounds::new(field, format!("the image decodes to {}x{} pixels", image.width, image.height)));
    }
    Ok(image)
}

fn decode_png(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let size = reader.output_buffer_size().ok_or("the image is too large")?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("a palette image was not expanded".into()),
    };
    let (w, h) = (info.width as usize, info.height as usize);
    // Rows are packed at `line_size` bytes: 8 bits a sample after the transformations.
    let mut px = Vec::with_capacity(w * h * channels);
    for row in buf.chunks(info.line_size).take(h) {
        px.extend_from_slice(row.get(..w * channels).ok_or("a row is short")?);
    }
    RgbImage::from_channels(w, h, channels, &px)
}

fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, String> {
    use mozjpeg::{ColorSpace, DctMethod, Decompress};
    let mut d = Decompress::new_mem(bytes).map_err(|e| e.to_string())?;
    if matches!(d.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK) {
        return Err("CMYK JPEGs are not supported: convert the image to RGB".into());
    }
    // Pillow's settings (libjpeg's defaults): the accurate integer IDCT, fancy upsampling.
    d.dct_method(DctMethod::IntegerSlow);
    d.do_fancy_upsampling(true);
    let mut started = d.rgb().map_err(|e| e.to_string())?;
    let (w, h) = (started.width(), started.height());
    let px: Vec<u8> = started.read_scanlines().map_err(|e| e.to_string())?;
    started.finish().map_err(|e| e.to_string())?;
    RgbImage::from_channels(w, h, 3, &px)
}

fn decode_webp(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut decoder = image_webp::WebPDecoder::new(Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let (w, h) = decoder.dimensions();
    let channels = if decoder.has_alpha() { 4 } else { 3 };
    let size = decoder.output_buffer_size().ok_or("the image is too large")?;
    let mut buf = vec![0; size];
    decoder.read_image(&mut buf).map_err(|e| e.to_string())?;
    RgbImage::from_channels(w as usize, h as usize, channels, &buf)
}

/// `img` as a PNG file (demos and tests make their inputs with it).
pub fn encode_png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, img.width as u32, img.height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Writing to memory fails only on sizes the caller made wrong.
    let mut writer = encoder.write_header().expect("a PNG header for an in-memory image");
    writer.write_image_data(&img.data).expect("RGB data of the image's size");
    drop(writer);
    out
}

/// Pillow's resampling filters that CLIP processors use (`resample` in the config: 2, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bilinear,
    Bicubic,
}

impl Filter {
    fn support(&self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(&self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear if x < 1.0 => 1.0 - x,
            Filter::Bilinear => 0.0,
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// How the image is resized before the crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// The shorter edge to this many pixels, keeping the aspect ratio.
    ShortestEdge(usize),
    /// To exactly this (height, width).
    Exact(usize, usize),
}

/// A `CLIPImageProcessor` as its `preprocessor_config.json` configures it.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessor {
    pub resize: Option<(Resize, Filter)>,
    /// (height, width).
    pub crop: Option<(usize, usize)>,
    pub rescale: Option<f64>,
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

/// Fixed-point bits of Pillow's 8-bit resampling coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;

impl Preprocessor {
    /// Reads `preprocessor_config.json` in `dir`. What this processor does not implement (an
    /// image processor of another model family, a resampling filter other than bilinear or
    /// bicubic, `do_convert_rgb: false`) is refused: an image preprocessed differently from
    /// the model's training gives plausible but wrong embeddings.
    pub fn load(dir: &Path) -> Result<Preprocessor, ModelError> {
        let path = dir.join("preprocessor_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| load_err(&path, e))?;
        let c: Value = serde_json::from_str(&text).map_err(|e| load_err(&path, e))?;
        let kind = c["image_processor_type"].as_str().or(c["feature_extractor_type"].as_str()).unwrap_or("");
        if !matches!(
            kind,
            "CLIPImageProcessor" | "CLIPImageProcessorFast" | "CLIPImageProcessorPil" | "CLIPFeatureExtractor"
        ) {
            return Err(load_err(&path, format!("image processor {kind:?} is not CLIPImageProcessor")));
        }
        let flag = |key: &str| c[key].as_bool().unwrap_or(true);
        if !flag("do_convert_rgb") {
            return Err(load_err(&path, "do_convert_rgb: false is not supported"));
        }
        let resize = if flag("do_resize") {
            let size = &c["size"];
            let resize = match (
                size.as_u64(),
                size["shortest_edge"].as_u64(),
                size["height"].as_u64(),
                size["width"].as_u64(),
            ) {
                (Some(n), ..) | (None, Some(n), None, None) => Resize::ShortestEdge(n as usize),
                (None, None, Some(h), Some(w)) => Resize::Exact(h as usize, w as usize),
                _ => return Err(load_err(&path, format!("size {size} is not {{shortest_edge}} or {{height, width}}"))),
            };
            let filter = match c["resample"].as_u64().unwrap_or(3) {
                2 => Filter::Bilinear,
                3 => Filter::Bicubic,
                other => return Err(load_err(&path, format!("resample {other} is not bilinear (2) or bicubic (3)"))),
            };
            Some((resize, filter))
        } else {
            None
        };
        let crop = if flag("do_center_crop") {
            let size = &c["crop_size"];
            match (size.as_u64(), size["height"].as_u64(), size["width"].as_u64()) {
                (Some(n), ..) => Some((n as usize, n as usize)),
                (None, Some(h), Some(w)) => Some((h as usize, w as usize)),
                _ => return Err(load_err(&path, format!("crop_size {size} is not {{height, width}}"))),
            }
        } else {
            None
        };
        let rescale = flag("do_rescale").then(|| c["rescale_factor"].as_f64().unwrap_or(1.0 / 255.0));
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3], ModelError> {
            match &c[key] {
                Value::Null => Ok(default),
                Value::Array(v) if v.len() == 3 && v.iter().all(Value::is_number) => {
                    Ok([0, 1, 2].map(|i| v[i].as_f64().unwrap_or_default() as f32))
                }
                other => Err(load_err(&path, format!("{key} {other} is not three numbers"))),
            }
        };
        let normalize = if flag("do_normalize") {
            let std = triple("image_std", [0.26862954, 0.2613026, 0.2757771])?;
            if std.contains(&0.0) {
                return Err(load_err(&path, "image_std holds a zero"));
            }
            Some((triple("image_mean", [0.48145466, 0.4578275, 0.40821073])?, std))
        } else {
            None
        };
        Ok(Preprocessor { resize, crop, rescale, normalize })
    }

    /// (width, height) after the resize.
    fn resized_size(&self, width: usize, height: usize) -> (usize, usize) {
        match self.resize {
            None => (width, height),
            Some((Resize::Exact(h, w), _)) => (w, h),
            Some((Resize::ShortestEdge(n), _)) => {
                let (short, long) = if width <= height { (width, height) } else { (height, width) };
                // transformers: int(size * long / short), in floating point.
                let new_long = (n as f64 * long as f64 / short as f64) as usize;
                if width <= height { (n, new_long) } else { (new_long, n) }
            }
        }
    }

    /// The model's input for `image`: channels-first f32 (3 x height x width).
    pub fn pixels(&self, image: &RgbImage) -> Vec<f32> {
        let mut img = image.clone();
        if let Some((_, filter)) = self.resize {
            let (w, h) = self.resized_size(img.width, img.height);
            img = resample(&img, w.max(1), h.max(1), filter);
        }
        if let Some((ch, cw)) = self.crop {
            img = center_crop(&img, ch, cw);
        }
        let plane = img.width * img.height;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in img.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let mut v = px[c] as f32;
                if let Some(scale) = self.rescale {
                    v = (px[c] as f64 * scale) as f32;
                }
                if let Some((mean, std)) = self.normalize {
                    v = (v - mean[c]) / std[c];
                }
                out[c * plane + i] = v;
            }
        }
        out
    }
}

/// Pillow's `Image.resize(size, filter)` of an RGB image.
pub fn resample(img: &RgbImage, width: usize, height: usize, filter: Filter) -> RgbImage {
    let (horizontal, vertical) = (width != img.width, height != img.height);
    // Pillow 13: "if height is being scaled down more than twice the amount the width is,
    // run the vertical pass first".
    let (dh, dw) = (img.height as i64 - height as i64, img.width as i64 - width as i64);
    let vertical_first = dh > 0 && dh > dw * 2;
    let mut out = img.clone();
    if vertical_first {
        if vertical {
            out = pass_vertical(&out, height, filter);
        }
        if horizontal {
            out = pass_horizontal(&out, width, filter);
        }
    } else {
        if horizontal {
            out = pass_horizontal(&out, width, filter);
        }
        if vertical {
            out = pass_vertical(&out, height, filter);
        }
    }
    out
}

/// For each output position along an axis of `in_size` resampled to `out_size`: the first
/// input index and the fixed-point weights of the inputs from there (Pillow's
/// `precompute_coeffs` and `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let weights: Vec<f64> =
                (xmin..xmax.max(xmin)).map(|x| filter.weight((x as f64 - center + 0.5) * ss)).collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let v = w * (1i64 << PRECISION_BITS) as f64;
                    (if w < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

fn pass_horizontal(img: &RgbImage, width: usize, filter: Filter) -> RgbImage {
    let coeffs = coefficients(img.width, width, filter);
    let mut data = Vec::with_capacity(width * img.height * 3);
    for row in img.data.chunks_exact(img.width * 3) {
        for (xmin, k) in &coeffs {
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (j, &w) in k.iter().enumerate() {
                let p = &row[(xmin + j) * 3..][..3];
                for c in 0..3 {
                    acc[c] += p[c] as i64 * w as i64;
                }
            }
            data.extend(acc.map(clip8));
        }
    }
    RgbImage { width, height: img.height, data }
}

fn pass_vertical(img: &RgbImage, height: usize, filter: Filter) -> RgbImage {
    let coeffs = coefficients(img.height, height, filter);
    let stride = img.width * 3;
    let mut data = Vec::with_capacity(stride * height);
    for (ymin, k) in &coeffs {
        for x in 0..stride {
            let mut acc = 1i64 << (PRECISION_BITS - 1);
            for (j, &w) in k.iter().enumerate() {
                acc += img.data[(ymin + j) * stride + x] as i64 * w as i64;
            }
            data.push(clip8(acc));
        }
    }
    RgbImage { width: img.width, height, data }
}

/// transformers' `center_crop`: the window at `(size - crop) / 2`, rounded down; where the
/// image is smaller than the crop it is first centered on zeros (the padding rounded up
/// before the image, as the Pillow backend does).
pub fn center_crop(img: &RgbImage, height: usize, width: usize) -> RgbImage {
    let (new_h, new_w) = (height.max(img.height), width.max(img.width));
    let (top_pad, left_pad) = ((new_h - img.height).div_ceil(2), (new_w - img.width).div_ceil(2));
    // The window in the padded image.
    let top = (img.height as i64 - height as i64).div_euclid(2) + top_pad as i64;
    let left = (img.width as i64 - width as i64).div_euclid(2) + left_pad as i64;
    let mut data = vec![0u8; height * width * 3];
    for y in 0..height {
        for x in 0..width {
            let (py, px) = (top + y as i64 - top_pad as i64, left + x as i64 - left_pad as i64);
            if py >= 0 && px >= 0 && (py as usize) < img.height && (px as usize) < img.width {
                let src = (py as usize * img.width + px as usize) * 3;
                data[(y * width + x) * 3..][..3].copy_from_slice(&img.data[src..src + 3]);
            }
        }
    }
    RgbImage { width, height, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compositing_onto_white_is_pillows() {
        assert_eq!(on_white(0, 0), 255);
        assert_eq!(on_white(0, 255), 0);
        assert_eq!(on_white(100, 128), 177);
        assert_eq!(on_white(200, 255), 200);
    }

    #[test]
    fn shortest_edge_keeps_the_aspect_ratio_truncating_the_long_edge() {
        let p = Preprocessor {
            resize: Some((Resize::ShortestEdge(224), Filter::Bicubic)),
            crop: None,
            rescale: None,
            normalize: None,
        };
        assert_eq!(p.resized_size(640, 480), (298, 224));
        assert_eq!(p.resized_size(480, 640), (224, 298));
        assert_eq!(p.resized_size(100, 100), (224, 224));
    }

    #[test]
    fn an_image_of_the_target_size_is_not_resampled_and_crops_are_centered() {
        let img = RgbImage { width: 4, height: 3, data: (0..36).collect() };
        assert_eq!(resample(&img, 4, 3, Filter::Bicubic), img);
        let crop = center_crop(&img, 1, 2);
        assert_eq!(crop.data, vec![15, 16, 17, 18, 19, 20]);
        // Larger than the image: centered on zeros.
        let padded = center_crop(&RgbImage { width: 1, height: 1, data: vec![9, 9, 9] }, 2, 2);
        assert_eq!(padded.data, vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9]);
    }
}
