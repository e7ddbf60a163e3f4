//! Where a stream's frames come from: a video file, a camera or stream URL (through OpenCV, with
//! the `video` feature), or a folder of images (sorted by name; always available).

use std::path::{Path, PathBuf};

use super::stats::SourceInfo;
use super::{Result, StreamError};
use crate::image_io::{self, RgbImage};
#[cfg(feature = "video")]
use crate::video::{VideoReader, VideoSource};

/// Frame rate given to an image folder (it has none of its own).
pub const FOLDER_FPS: f64 = 25.0;

#[cfg(feature = "video")]
/// Consecutive failed reads after which a file is taken to have ended (truncated or corrupt).
const MAX_FAILED_READS: u32 = 3;

/// What one read gave.
pub enum Read {
    /// A frame, after `skipped_before` frames that could not be decoded.
    Frame {
        img: RgbImage,
        skipped_before: u32,
    },
    /// A frame that could not be decoded: skipped with this reason.
    Skipped(String),
    End,
}

pub enum Source {
    #[cfg(feature = "video")]
    Video {
        reader: VideoReader,
        live: bool,
        failed: u32,
    },
    Folder {
        dir: PathBuf,
        paths: Vec<PathBuf>,
        next: usize,
        size: (u32, u32),
    },
}

impl Source {
    /// Opens `input`: `camera:N`, a URL, an image folder, or a video file.
    pub fn open(input: &str) -> Result<Self> {
        let path = Path::new(input);
        if path.is_dir() {
            let paths = image_io::list_images(path)?;
            let first = paths.first().ok_or_else(|| StreamError::Input {
                name: input.to_string(),
                why: "contains no PNG or JPEG images".into(),
            })?;
            let img = image_io::load_rgb8(first)?;
            return Ok(Source::Folder {
                dir: path.to_path_buf(),
                paths,
                next: 0,
                size: img.dimensions(),
            });
        }
        if image_io::is_image_path(path) {
            return Err(StreamError::Input {
                name: input.to_string(),
                why:
                    "is a single image; stream takes a video, a folder of images, camera:N or a URL"
                        .into(),
            });
        }
        Self::open_video(input)
    }

    #[cfg(feature = "video")]
    fn open_video(input: &str) -> Result<Self> {
        let source = VideoSource::parse(input);
        Ok(Source::Video {
            live: !matches!(source, VideoSource::File(_)),
            reader: VideoReader::open(&source)?,
            failed: 0,
        })
    }

    #[cfg(not(feature = "video"))]
    fn open_video(input: &str) -> Result<Self> {
        let why = if Path::new(input).exists() {
            "is not a folder of images; videos, cameras and URLs need the `video` feature (OpenCV)"
        } else {
            "no such folder (and videos, cameras and URLs need the `video` feature)"
        };
        Err(StreamError::Input {
            name: input.to_string(),
            why: why.into(),
        })
    }

    pub fn info(&self) -> SourceInfo {
        match self {
            #[cfg(feature = "video")]
            Source::Video { reader, live, .. } => SourceInfo {
                name: reader.name().to_string(),
                width: reader.width,
                height: reader.height,
                fps: reader.fps,
                frame_count: (reader.frame_count > 0 && !live).then_some(reader.frame_count),
                live: *live,
            },
            Source::Folder {
                dir, paths, size, ..
            } => SourceInfo {
                name: dir.display().to_string(),
                width: size.0,
                height: size.1,
                fps: FOLDER_FPS,
                frame_count: Some(paths.len() as u64),
                live: false,
            },
        }
    }

    /// The next frame. Undecodable frames are reported as skipped; a file whose reads keep
    /// failing, or a camera that stops delivering, has ended.
    pub fn read(&mut self) -> Result<Read> {
        match self {
            Source::Folder {
                paths, next, size, ..
            } => {
                let Some(path) = paths.get(*next) else {
                    return Ok(Read::End);
                };
                *next += 1;
                Ok(match image_io::load_rgb8(path) {
                    Ok(img) if img.dimensions() == *size => Read::Frame {
                        img,
                        skipped_before: 0,
                    },
                    Ok(img) => Read::Skipped(format!(
                        "{} is {}x{}, the stream is {}x{}",
                        path.display(),
                        img.width(),
                        img.height(),
                        size.0,
                        size.1
                    )),
                    Err(e) => Read::Skipped(e.to_string()),
                })
            }
            #[cfg(feature = "video")]
            Source::Video {
                reader,
                live,
                failed,
            } => loop {
                match reader.next_frame() {
                    Ok(Some(frame)) => {
                        // A camera's failed reads were waits, not lost frames.
                        let skipped = std::mem::take(failed);
                        return Ok(Read::Frame {
                            img: frame,
                            skipped_before: if *live { 0 } else { skipped },
                        });
                    }
                    Ok(None) => {
                        // The end of a file, a camera unplugged, or an undecodable frame: a few
                        // more reads tell them apart (a camera gets a moment to come back). Only
                        // failures followed by a good frame count as skipped frames.
                        let more = *live
                            || (reader.frame_count > 0 && reader.position() < reader.frame_count);
                        if more && *failed < MAX_FAILED_READS {
                            *failed += 1;
                            if *live {
                                std::thread::sleep(std::time::Duration::from_millis(100));
                            }
                            continue;
                        }
                        return Ok(Read::End);
                    }
                    Err(e @ crate::video::VideoError::FrameSize { .. }) => {
                        return Ok(Read::Skipped(e.to_string()))
                    }
                    Err(e) => return Err(e.into()),
                }
            },
        }
    }
}
