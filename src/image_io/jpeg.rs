//! JPEG decoding by libjpeg-turbo (its TurboJPEG API; the crate `turbojpeg-sys` builds the
//! library from source and links it statically), with the library's defaults: the accurate
//! integer IDCT and "fancy" (triangular) chroma upsampling. Those are the settings behind PIL's
//! `Image.open`, OpenCV's `imread` and MATLAB's `imread`, so the pixels — and every metric on
//! them — are byte-identical to what the de-raining literature's scripts see
//! (eval/reference/jpeg_reference.py makes the test corpus).
//!
//! Like libjpeg's own callers, a warning (corrupt but decodable data, e.g. extraneous bytes
//! before a marker) keeps the decoded image; a fatal error is an error. CMYK/YCCK JPEGs, which
//! TurboJPEG cannot turn into RGB, are left to the caller's fallback.

use std::ffi::CStr;

use turbojpeg_sys as tj;

/// Largest image decoded (width × height): a header cannot make us allocate more than
/// 3 × this many bytes (~400 MB), and libjpeg-turbo refuses larger images itself.
pub const MAX_PIXELS: u64 = 1 << 27;

/// A decoded JPEG: RGB8 rows, and the warning libjpeg-turbo gave, if any.
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    pub warning: Option<String>,
}

pub enum Outcome {
    Decoded(Decoded),
    /// CMYK or YCCK: not convertible to RGB by TurboJPEG.
    Cmyk,
}

/// One TurboJPEG decompressor, destroyed on drop.
struct Handle(tj::tjhandle);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init, is non-null, and is destroyed exactly once.
        unsafe { tj::tj3Destroy(self.0) }
    }
}

impl Handle {
    fn new() -> Result<Self, String> {
        // SAFETY: tj3Init has no preconditions; a null result is checked.
        let h = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as CInt) };
        if h.is_null() {
            return Err("libjpeg-turbo could not be initialised".into());
        }
        Ok(Handle(h))
    }

    fn get(&self, param: tj::TJPARAM) -> CInt {
        // SAFETY: valid handle; tj3Get only reads a parameter (-1 if unknown).
        unsafe { tj::tj3Get(self.0, param as CInt) }
    }

    fn error(&self) -> String {
        // SAFETY: valid handle; tj3GetErrorStr returns a NUL-terminated string owned by the
        // handle, copied here before the handle can change it.
        unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.0)) }
            .to_string_lossy()
            .into_owned()
    }

    fn is_warning(&self) -> bool {
        // SAFETY: valid handle.
        unsafe { tj::tj3GetErrorCode(self.0) == tj::TJERR_TJERR_WARNING as CInt }
    }
}

type CInt = std::ffi::c_int;

/// Decodes a JPEG to RGB8 (grayscale replicated to the three channels, as PIL's
/// `convert("RGB")` does). The EXIF orientation is not applied here.
pub fn decode(bytes: &[u8]) -> Result<Outcome, String> {
    let h = Handle::new()?;
    let len = bytes.len() as tj::size_t;
    // SAFETY: valid handle; the buffer pointer and length describe `bytes`, which outlives the
    // call; TurboJPEG only reads it.
    if unsafe { tj::tj3DecompressHeader(h.0, bytes.as_ptr(), len) } != 0 {
        return Err(h.error());
    }
    let colorspace = h.get(tj::TJPARAM_TJPARAM_COLORSPACE);
    if colorspace == tj::TJCS_TJCS_CMYK as CInt || colorspace == tj::TJCS_TJCS_YCCK as CInt {
        return Ok(Outcome::Cmyk);
    }
    let (w, ht) = (
        h.get(tj::TJPARAM_TJPARAM_JPEGWIDTH),
        h.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT),
    );
    if w <= 0 || ht <= 0 {
        return Err(format!("invalid image size {w}x{ht}"));
    }
    let (w, ht) = (w as usize, ht as usize);
    if (w as u64) * (ht as u64) > MAX_PIXELS {
        return Err(format!(
            "{w}x{ht} pixels is larger than raincheck decodes ({MAX_PIXELS} pixels)"
        ));
    }
    // SAFETY: valid handle; setting a documented parameter.
    unsafe {
        tj::tj3Set(
            h.0,
            tj::TJPARAM_TJPARAM_MAXPIXELS as CInt,
            MAX_PIXELS as CInt,
        )
    };
    let pitch = w * 3;
    let mut rgb = vec![0u8; pitch * ht];
    // SAFETY: valid handle; `bytes` as above; `rgb` holds exactly `pitch × height` bytes for
    // the header's width and height, which is what tj3Decompress8 writes for TJPF_RGB at
    // scaling factor 1 (the default); both buffers outlive the call.
    let r = unsafe {
        tj::tj3Decompress8(
            h.0,
            bytes.as_ptr(),
            len,
            rgb.as_mut_ptr(),
            pitch as CInt,
            tj::TJPF_TJPF_RGB as CInt,
        )
    };
    let warning = if r != 0 {
        if !h.is_warning() {
            return Err(h.error());
        }
        Some(h.error())
    } else {
        None
    };
    Ok(Outcome::Decoded(Decoded {
        width: w as u32,
        height: ht as u32,
        rgb,
        warning,
    }))
}
