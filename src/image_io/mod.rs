//! Image decoding/encoding at the edges of the pipeline, and image ↔ tensor conversion.
//!
//! Everything inside raincheck works on one convention: RGB, 8 bits per channel on disk and in
//! the renderer ([`RgbImage`]), `(3, h, w)` / `(b, 3, h, w)` f32 in [0, 1] as candle tensors.
//! Decoding accepts PNG and JPEG of any bit depth, gray or with alpha, and applies the EXIF
//! orientation, so that what a camera meant is what the pipeline sees. JPEGs are decoded by
//! libjpeg-turbo with its default settings ([`jpeg`]): pixels byte-identical to PIL's, OpenCV's
//! and MATLAB's `imread` (EXIF orientation applied as OpenCV's `imread` and PIL's
//! `ImageOps.exif_transpose` do).

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
pub use image::RgbImage;
use image::{DynamicImage, ImageDecoder, ImageReader};

pub mod jpeg;

/// File extensions treated as images when a folder is listed.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

#[derive(Debug, thiserror::Error)]
pub enum ImageIoError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: the file is empty (0 bytes)", path.display())]
    Empty { path: PathBuf },
    #[error("{}: not a PNG or JPEG image", path.display())]
    UnknownFormat { path: PathBuf },
    #[error("{}: corrupt or unsupported image: {source}", path.display())]
    Decode {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("{}: corrupt or unsupported JPEG: {why}", path.display())]
    Jpeg { path: PathBuf, why: String },
    #[error("{}: truncated JPEG (no end-of-image marker)", path.display())]
    TruncatedJpeg { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("{} and {} share the stem `{stem}`; images are named by file stem", first.display(), second.display())]
    DuplicateStem {
        stem: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{}: the file name is not valid UTF-8", path.display())]
    NonUtf8Name { path: PathBuf },
    #[error("cannot list folder {}: {source}", path.display())]
    ListDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tensor has shape {shape:?}, expected {expected}")]
    TensorShape {
        shape: Vec<usize>,
        expected: &'static str,
    },
    #[error("tensor conversion failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ImageIoError>;

/// True when the path has an image extension raincheck reads (case-insensitive).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Lists the images directly inside `dir`, sorted by file name (hidden files skipped).
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| ImageIoError::ListDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ImageIoError::ListDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if !hidden && path.is_file() && is_image_path(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The file stem of `path` as UTF-8 (the id of an image in datasets, reports and outputs).
pub fn stem(path: &Path) -> Result<String> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_string)
        .ok_or_else(|| ImageIoError::NonUtf8Name {
            path: path.to_path_buf(),
        })
}

/// The images directly inside `dir`, keyed by file stem and sorted by it. Two files with one
/// stem (`a.png`, `a.jpg`) are an error: their outputs would collide.
pub fn images_by_stem(dir: &Path) -> Result<std::collections::BTreeMap<String, PathBuf>> {
    let mut out = std::collections::BTreeMap::new();
    for path in list_images(dir)? {
        let id = stem(&path)?;
        if let Some(first) = out.insert(id.clone(), path.clone()) {
            return Err(ImageIoError::DuplicateStem {
                stem: id,
                first,
                second: path,
            });
        }
    }
    Ok(out)
}

/// Decodes a PNG or JPEG file to RGB8 with its EXIF orientation applied.
///
/// Gray images are expanded to RGB, alpha is discarded, 16-bit channels are scaled to 8 bits.
pub fn load_rgb8(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|source| ImageIoError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode_rgb8(&bytes, path)
}

/// Decodes image bytes (see [`load_rgb8`]); `path` is only used in error messages.
pub fn decode_rgb8(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(ImageIoError::Empty {
            path: path.to_path_buf(),
        });
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| ImageIoError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let format = match reader.format() {
        Some(f @ (image::ImageFormat::Png | image::ImageFormat::Jpeg)) => f,
        _ => {
            return Err(ImageIoError::UnknownFormat {
                path: path.to_path_buf(),
            })
        }
    };
    // The JPEG decoder fills a truncated scan with gray instead of failing; a missing
    // end-of-image marker is how a cut-off file shows.
    if format == image::ImageFormat::Jpeg && !jpeg_has_eoi(bytes) {
        return Err(ImageIoError::TruncatedJpeg {
            path: path.to_path_buf(),
        });
    }
    let decode_err = |source| ImageIoError::Decode {
        path: path.to_path_buf(),
        source,
    };
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let orientation = decoder.orientation().map_err(decode_err)?;
    let mut img = if format == image::ImageFormat::Jpeg {
        match jpeg::decode(bytes).map_err(|why| ImageIoError::Jpeg {
            path: path.to_path_buf(),
            why,
        })? {
            jpeg::Outcome::Decoded(d) => {
                if let Some(w) = &d.warning {
                    tracing::debug!("{}: libjpeg-turbo: {w}", path.display());
                }
                let rgb = RgbImage::from_raw(d.width, d.height, d.rgb)
                    .expect("decoder fills width x height x 3 bytes");
                DynamicImage::ImageRgb8(rgb)
            }
            // TurboJPEG has no CMYK -> RGB conversion: the `image` crate's, as before.
            jpeg::Outcome::Cmyk => DynamicImage::from_decoder(decoder).map_err(decode_err)?,
        }
    } else {
        DynamicImage::from_decoder(decoder).map_err(decode_err)?
    };
    img.apply_orientation(orientation);
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// A JPEG ends with the EOI marker `FF D9`; some writers pad or append a few bytes after it.
fn jpeg_has_eoi(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Encodes `img` as PNG into memory.
pub fn encode_png(img: &RgbImage) -> std::result::Result<Vec<u8>, image::ImageError> {
    let mut buf = Vec::with_capacity(img.as_raw().len() / 2);
    img.write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)?;
    Ok(buf)
}

/// Encodes `img` as JPEG with the given quality (1–100) into memory.
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> std::result::Result<Vec<u8>, image::ImageError> {
    let mut buf = Vec::with_capacity(img.as_raw().len() / 8);
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality.clamp(1, 100));
    img.write_with_encoder(enc)?;
    Ok(buf)
}

/// Writes `img` as PNG atomically (temporary file + rename). Returns the PNG bytes written.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<Vec<u8>> {
    let bytes = encode_png(img).map_err(|source| ImageIoError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &bytes).map_err(|source| ImageIoError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(bytes)
}

/// The temporary name used while `path` is being written: same folder, hidden, same extension
/// (encoders such as OpenCV's choose the container by extension).
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!(".{name}.{}.tmp.{ext}", std::process::id()),
        None => format!(".{name}.{}.tmp", std::process::id()),
    };
    path.with_file_name(tmp)
}

/// Removes from `dir` (not its subfolders) the temporary files a process killed mid-write left
/// behind (the [`temp_path_for`] names: `.NAME.PID.tmp[.EXT]`); a missing `dir` is fine.
pub fn remove_temp_files(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') && name.contains(".tmp") && p.is_file() {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` via a temporary file in the same folder, fsync and rename, so that
/// `path` is either absent, or complete.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path_for(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Rows of images scaled to `tile_h` pixels high (aspect kept), `gap` white pixels apart, on a
/// white canvas: the grids of reports.
pub fn grid(rows: &[Vec<RgbImage>], tile_h: u32, gap: u32) -> RgbImage {
    let scale = |img: &RgbImage| {
        let w = (img.width() as f64 * tile_h as f64 / img.height() as f64)
            .round()
            .max(1.0) as u32;
        image::imageops::resize(img, w, tile_h, image::imageops::FilterType::Triangle)
    };
    let rows: Vec<Vec<RgbImage>> = rows.iter().map(|r| r.iter().map(scale).collect()).collect();
    let width = rows
        .iter()
        .map(|r| r.iter().map(|t| t.width() + gap).sum::<u32>())
        .max()
        .unwrap_or(1);
    let height = rows.len() as u32 * (tile_h + gap);
    let mut grid = RgbImage::from_pixel(width.max(1), height.max(1), image::Rgb([255, 255, 255]));
    for (ri, row) in rows.iter().enumerate() {
        let mut x = 0;
        for t in row {
            image::imageops::replace(&mut grid, t, x as i64, (ri as u32 * (tile_h + gap)) as i64);
            x += t.width() + gap;
        }
    }
    grid
}

/// RGB8 image → `(3, h, w)` f32 tensor in [0, 1].
pub fn rgb8_to_tensor(img: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let data: Vec<f32> = img.as_raw().iter().map(|&v| v as f32 / 255.0).collect();
    let t = Tensor::from_vec(data, (h as usize, w as usize, 3), &Device::Cpu)?
        .permute((2, 0, 1))?
        .contiguous()?;
    Ok(t.to_device(device)?)
}

/// Several same-sized RGB8 images → `(b, 3, h, w)` f32 tensor in [0, 1].
pub fn batch_to_tensor(imgs: &[&RgbImage], device: &Device) -> Result<Tensor> {
    let ts = imgs
        .iter()
        .map(|img| rgb8_to_tensor(img, &Device::Cpu))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&ts, 0)?.to_device(device)?)
}

/// `(3, h, w)` (or `(1, 3, h, w)`) tensor in [0, 1] → RGB8 image (clamped, rounded).
pub fn tensor_to_rgb8(t: &Tensor) -> Result<RgbImage> {
    let t = match t.dims() {
        [1, 3, _, _] => t.squeeze(0)?,
        [3, _, _] => t.clone(),
        dims => {
            return Err(ImageIoError::TensorShape {
                shape: dims.to_vec(),
                expected: "(3, h, w) or (1, 3, h, w)",
            })
        }
    };
    let (_, h, w) = t.dims3()?;
    let hwc = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let raw: Vec<u8> = hwc
        .iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    Ok(RgbImage::from_raw(w as u32, h as u32, raw).expect("buffer length matches dimensions"))
}

/// `(b, 3, h, w)` tensor in [0, 1] → one RGB8 image per batch item.
pub fn tensor_to_batch(t: &Tensor) -> Result<Vec<RgbImage>> {
    let b = match t.dims() {
        [b, 3, _, _] => *b,
        dims => {
            return Err(ImageIoError::TensorShape {
                shape: dims.to_vec(),
                expected: "(b, 3, h, w)",
            })
        }
    };
    (0..b).map(|i| tensor_to_rgb8(&t.get(i)?)).collect()
}

/// Resizes to cover `width`x`height` keeping the aspect ratio, then crops the centre.
pub fn resize_cover(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == (width, height) {
        return img.clone();
    }
    let scale = f64::max(width as f64 / w as f64, height as f64 / h as f64);
    let sw = ((w as f64 * scale).round() as u32).max(width);
    let sh = ((h as f64 * scale).round() as u32).max(height);
    let resized = image::imageops::resize(img, sw, sh, image::imageops::FilterType::Triangle);
    let x = (sw - width) / 2;
    let y = (sh - height) / 2;
    image::imageops::crop_imm(&resized, x, y, width, height).to_image()
}

/// Loads a depth map stored as a 16-bit (or 8-bit) grayscale PNG; metres = value / `scale`
/// (KITTI's convention is `scale = 256`). Zero means unknown.
pub fn load_depth_png(path: &Path, scale: f32) -> Result<(u32, u32, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|source| ImageIoError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(ImageIoError::Empty {
            path: path.to_path_buf(),
        });
    }
    let img =
        image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).map_err(|source| {
            ImageIoError::Decode {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let gray = img.to_luma16();
    let (w, h) = gray.dimensions();
    let metres = gray
        .as_raw()
        .iter()
        .map(|&v| if v == 0 { f32::NAN } else { v as f32 / scale })
        .collect();
    Ok((w, h, metres))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leftovers of a killed `write_atomic` go; everything else (also hidden files and folders)
    /// stays; a missing folder is not an error.
    #[test]
    fn remove_temp_files_removes_only_temporary_files() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("model.safetensors");
        let leftover = temp_path_for(&target);
        for p in [
            &leftover,
            &target,
            &t.path().join(".hidden"),
            &t.path().join("a.tmp.txt"),
        ] {
            std::fs::write(p, b"x").unwrap();
        }
        std::fs::create_dir(t.path().join(".dir.tmp")).unwrap();
        remove_temp_files(t.path()).unwrap();
        assert!(!leftover.exists());
        assert!(target.exists() && t.path().join(".hidden").exists());
        assert!(t.path().join("a.tmp.txt").exists() && t.path().join(".dir.tmp").is_dir());
        remove_temp_files(&t.path().join("missing")).unwrap();
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 40) as u8, (y * 60) as u8, 7]))
    }

    #[test]
    fn tensor_roundtrip_is_exact() {
        let img = gradient(5, 3);
        let t = rgb8_to_tensor(&img, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[3, 3, 5]);
        // Channel 0 at (y=0, x=1) is 40/255.
        let v = t.get(0).unwrap().get(0).unwrap().get(1).unwrap();
        assert!((v.to_scalar::<f32>().unwrap() - 40.0 / 255.0).abs() < 1e-7);
        assert_eq!(tensor_to_rgb8(&t).unwrap(), img);
        let b = batch_to_tensor(&[&img, &img], &Device::Cpu).unwrap();
        assert_eq!(b.dims(), &[2, 3, 3, 5]);
        assert_eq!(tensor_to_batch(&b).unwrap(), vec![img.clone(), img]);
    }

    #[test]
    fn tensor_to_image_clamps_and_rejects_bad_shapes() {
        let t = Tensor::new(
            &[[[-0.5f32, 2.0]], [[0.5, 0.5]], [[0.0, 1.0]]],
            &Device::Cpu,
        )
        .unwrap();
        let img = tensor_to_rgb8(&t).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 128, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 128, 255]);
        let bad = Tensor::zeros((2, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            tensor_to_rgb8(&bad),
            Err(ImageIoError::TensorShape { .. })
        ));
    }

    #[test]
    fn decodes_gray16_and_rgba_png() {
        let g16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(4, 2, |x, _| {
            image::Luma([(x * 20000) as u16])
        });
        let mut bytes = Vec::new();
        DynamicImage::ImageLuma16(g16)
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        let img = decode_rgb8(&bytes, Path::new("g16.png")).unwrap();
        assert_eq!(img.dimensions(), (4, 2));
        let p = img.get_pixel(1, 0).0;
        assert_eq!(p[0], p[1]);
        assert_eq!(p[0], (20000.0f64 / 65535.0 * 255.0).round() as u8);

        let rgba =
            image::RgbaImage::from_fn(3, 3, |x, y| image::Rgba([x as u8 * 50, y as u8, 9, 10]));
        let mut bytes = Vec::new();
        DynamicImage::ImageRgba8(rgba)
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        let img = decode_rgb8(&bytes, Path::new("a.png")).unwrap();
        assert_eq!(img.get_pixel(2, 1).0, [100, 1, 9]);
    }

    /// A JPEG with an EXIF APP1 segment saying "rotate 90° clockwise" (orientation 6).
    fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
        let jpeg = encode_jpeg(img, 95).unwrap();
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"MM\x00\x2a\x00\x00\x00\x08"); // big-endian TIFF, IFD at 8
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // count
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        let mut app1 = b"Exif\x00\x00".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec(); // SOI
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn applies_exif_orientation() {
        // 16x8 image: left half dark, right half bright.
        let img = RgbImage::from_fn(16, 8, |x, _| {
            if x < 8 {
                image::Rgb([10, 10, 10])
            } else {
                image::Rgb([240, 240, 240])
            }
        });
        let bytes = jpeg_with_orientation(&img, 6);
        let out = decode_rgb8(&bytes, Path::new("rot.jpg")).unwrap();
        // Rotated 90° clockwise: now 8 wide, 16 tall, the former left half on top.
        assert_eq!(out.dimensions(), (8, 16));
        assert!(out.get_pixel(4, 2).0[0] < 60);
        assert!(out.get_pixel(4, 13).0[0] > 190);
    }

    #[test]
    fn rejects_empty_truncated_and_garbage() {
        let p = Path::new("x.jpg");
        assert!(matches!(
            decode_rgb8(&[], p),
            Err(ImageIoError::Empty { .. })
        ));
        assert!(matches!(
            decode_rgb8(b"hello, not an image", p),
            Err(ImageIoError::UnknownFormat { .. })
        ));
        let jpeg = encode_jpeg(&gradient(64, 64), 90).unwrap();
        let cut = &jpeg[..jpeg.len() / 2];
        let err = decode_rgb8(cut, p).unwrap_err();
        assert!(err.to_string().contains("x.jpg"), "{err}");
        let png = encode_png(&gradient(64, 64)).unwrap();
        let err = decode_rgb8(&png[..png.len() - 30], Path::new("y.png")).unwrap_err();
        assert!(err.to_string().contains("y.png"), "{err}");
    }

    #[test]
    fn resize_cover_keeps_aspect() {
        let img = gradient(20, 10);
        let out = resize_cover(&img, 8, 8);
        assert_eq!(out.dimensions(), (8, 8));
        assert_eq!(resize_cover(&img, 20, 10), img);
    }
}

/// Against PIL (eval/reference/jpeg_reference.py, libjpeg-turbo 3.2 inside Pillow 13).
#[cfg(test)]
mod jpeg_vs_pil {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
    }

    /// 4:2:0, 4:2:2, 4:4:4, progressive, grayscale, odd sizes, restart markers and an EXIF
    /// rotation decode to exactly PIL's pixels.
    #[test]
    fn corpus_is_byte_identical_to_pil() {
        let dir = root().join("eval/reference/fixtures/jpeg");
        let mut n = 0;
        for jpg in list_images(&dir).unwrap() {
            if jpg.extension().and_then(|e| e.to_str()) != Some("jpg") {
                continue;
            }
            let got = load_rgb8(&jpg).unwrap();
            let want = load_rgb8(&jpg.with_extension("png")).unwrap();
            assert_eq!(got.dimensions(), want.dimensions(), "{}", jpg.display());
            let diff = got
                .as_raw()
                .iter()
                .zip(want.as_raw())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(diff, 0, "{}: {diff} bytes differ from PIL", jpg.display());
            n += 1;
        }
        assert_eq!(n, 9);
    }

    /// The bundled camera frames (other encoders, 1280x720 and 960x540) too.
    #[test]
    fn bundled_frames_are_byte_identical_to_pil() {
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root().join("eval/reference/fixtures/jpeg/MANIFEST.json"))
                .unwrap(),
        )
        .unwrap();
        let frames = manifest["frames_rgb_sha256"].as_object().unwrap();
        assert_eq!(frames.len(), 10);
        for (name, want) in frames {
            let img = load_rgb8(&root().join("datasets/samples/frames").join(name)).unwrap();
            assert_eq!(
                crate::ids::sha256_hex(img.as_raw()),
                want.as_str().unwrap(),
                "{name}"
            );
        }
    }
}
