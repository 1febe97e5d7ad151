//! Opening files: a read-only memory map, parsed in place.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::{Error, Model};

/// Why a file could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The file could not be opened or mapped.
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid .smk file.
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: Error,
    },
}

impl core::fmt::Display for OpenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            OpenError::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            OpenError::Format { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Io { source, .. } => Some(source),
            OpenError::Format { source, .. } => Some(source),
        }
    }
}

enum Bytes {
    Map(Mmap),
    /// Files shorter than the header, which parse to an error anyway (mapping an empty file
    /// fails on some systems).
    Small(Vec<u8>),
}

/// A .smk file mapped read-only and validated. [`MappedModel::model`] parses it again in place
/// (the structure only, never the weights), so the mapping can be shared freely.
pub struct MappedModel {
    bytes: Bytes,
    path: PathBuf,
}

impl core::fmt::Debug for MappedModel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MappedModel")
            .field("path", &self.path)
            .field("len", &self.bytes().len())
            .finish()
    }
}

impl MappedModel {
    /// Maps `path` and validates its structure; with `verify`, also every checksum and mask.
    pub fn open(path: impl AsRef<Path>, verify: bool) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| OpenError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let bytes = if len < crate::spec::HEADER_LEN as u64 {
            Bytes::Small(std::fs::read(&path).map_err(io)?)
        } else {
            // SAFETY: the map is read-only. memmap2 maps it shared, so a write to the file by
            // another process would show through; the format's writers never write in place
            // (they write a temporary file and rename it over the old one, leaving this mapping
            // on the old inode), and every accessor re-checks offsets before slicing, so such a
            // write gives wrong values, not out-of-bounds reads. Truncation by another program
            // can still raise SIGBUS, which no safe API can prevent (see FORMAT.md §11.4).
            Bytes::Map(unsafe { Mmap::map(&file) }.map_err(io)?)
        };
        let mapped = Self { bytes, path };
        let model = mapped.model().map_err(|source| OpenError::Format {
            path: mapped.path.clone(),
            source,
        })?;
        if verify {
            model.verify().map_err(|source| OpenError::Format {
                path: mapped.path.clone(),
                source,
            })?;
        }
        Ok(mapped)
    }

    /// The mapped bytes (page-aligned, except for files shorter than the header, which are read).
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Map(m) => m,
            Bytes::Small(v) => v,
        }
    }

    /// The parsed model, borrowing the mapping.
    pub fn model(&self) -> Result<Model<'_>, Error> {
        Model::parse(self.bytes())
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
