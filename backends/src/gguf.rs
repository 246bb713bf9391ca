//! Opening GGUF files: header parsing, validation and typed metadata access.
//!
//! Everything read from the file is untrusted: a wrong architecture, missing
//! metadata, a tensor whose data lies past the end of the file (a truncated
//! download) or an unparsable header is reported as a [`GgufError`].

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use memmap2::{Mmap, UncheckedAdvice};

/// Why a GGUF file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The header or the tensor table is not valid GGUF.
    #[error("{path} is not a valid GGUF file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The file holds a model family this build cannot run.
    #[error("{path}: unsupported architecture '{arch}' (supported: {supported})")]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// `general.architecture` as found in the file.
        arch: String,
        /// The architectures this build runs.
        supported: String,
    },
    /// A metadata key the model needs is absent or has the wrong type.
    #[error("{path}: metadata '{key}' is missing or malformed")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A tensor the model needs is absent, has the wrong shape, or its data is cut short.
    #[error("{path}: tensor '{name}': {reason}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// What was wrong.
        reason: String,
    },
}

/// The message of a candle error without the backtrace candle attaches to it
/// when `RUST_BACKTRACE` is set.
pub fn brief(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// An opened, header-validated GGUF file, memory-mapped: tensor data is
/// read straight from the mapping, never copied into an intermediate buffer.
pub struct GgufFile {
    path: PathBuf,
    /// Parsed header: metadata and tensor table.
    pub content: Content,
    map: Mmap,
}

impl GgufFile {
    /// Opens `path`, parses the header and checks that every tensor's data lies inside the file.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only and private to this process. Another
        // process truncating the file while it is mapped would fault; model
        // files are written once (pulls land by atomic rename) and not modified.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let content =
            Content::read(&mut Cursor::new(&map[..])).map_err(|e| GgufError::Corrupt {
                path: path.to_path_buf(),
                reason: brief(&e),
            })?;
        let me = Self {
            path: path.to_path_buf(),
            content,
            map,
        };
        me.check_tensor_extents()?;
        Ok(me)
    }

    /// The path this file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_tensor_extents(&self) -> Result<(), GgufError> {
        let file_len = self.map.len() as u64;
        for name in self.content.tensor_infos.keys() {
            if self
                .extent(name)
                .is_none_or(|(start, len)| start + len > file_len)
            {
                return Err(self.tensor_err(
                    name,
                    &format!(
                        "data ends past the end of the file ({file_len} bytes): the file is truncated"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Byte offset and length of a tensor's data, if its size is well formed.
    fn extent(&self, name: &str) -> Option<(u64, u64)> {
        let info = self.content.tensor_infos.get(name)?;
        let elems = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        if block == 0 || elems % block != 0 {
            return None;
        }
        let len = (elems / block) as u64 * info.ggml_dtype.type_size() as u64;
        let start = self.content.tensor_data_offset.checked_add(info.offset)?;
        start.checked_add(len)?;
        Some((start, len))
    }

    fn tensor_err(&self, name: &str, reason: &str) -> GgufError {
        GgufError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            reason: reason.to_string(),
        }
    }

    fn metadata_err(&self, key: &str) -> GgufError {
        GgufError::Metadata {
            path: self.path.clone(),
            key: key.to_string(),
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.string("general.architecture")
    }

    /// A string metadata value.
    pub fn string(&self, key: &str) -> Result<&str, GgufError> {
        match self.content.metadata.get(key) {
            Some(Value::String(s)) => Ok(s),
            _ => Err(self.metadata_err(key)),
        }
    }

    /// An integer metadata value of any integer width, as `usize`.
    pub fn usize(&self, key: &str) -> Result<usize, GgufError> {
        let v = self
            .content
            .metadata
            .get(key)
            .ok_or_else(|| self.metadata_err(key))?;
        let n: Option<u64> = match v {
            Value::U8(x) => Some(u64::from(*x)),
            Value::U16(x) => Some(u64::from(*x)),
            Value::U32(x) => Some(u64::from(*x)),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.metadata_err(key))
    }

    /// A float metadata value.
    pub fn f32(&self, key: &str) -> Result<f32, GgufError> {
        match self.content.metadata.get(key) {
            Some(Value::F32(x)) => Ok(*x),
            Some(Value::F64(x)) => Ok(*x as f32),
            _ => Err(self.metadata_err(key)),
        }
    }

    /// A tensor's type and raw (mapped) data, checking its dimensions (in
    /// candle's order: rows first).
    pub fn tensor_data(&self, name: &str, dims: &[usize]) -> Result<(GgmlDType, &[u8]), GgufError> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.tensor_err(name, "missing"))?;
        if info.shape.dims() != dims {
            return Err(self.tensor_err(
                name,
                &format!("shape {:?}, expected {:?}", info.shape.dims(), dims),
            ));
        }
        let (start, len) = self
            .extent(name)
            .ok_or_else(|| self.tensor_err(name, "malformed size"))?;
        let range = usize::try_from(start)
            .ok()
            .zip(usize::try_from(start + len).ok())
            .filter(|(_, end)| *end <= self.map.len())
            .ok_or_else(|| self.tensor_err(name, "data lies outside the file"))?;
        Ok((info.ggml_dtype, &self.map[range.0..range.1]))
    }

    /// A vector tensor (norm weights) as f32, from F32 or F16 data.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, GgufError> {
        let (dtype, bytes) = self.tensor_data(name, &[len])?;
        match dtype {
            GgmlDType::F32 => Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            GgmlDType::F16 => Ok(bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            other => {
                Err(self.tensor_err(name, &format!("unsupported type {other:?} for a vector")))
            }
        }
    }

    /// Tells the OS that the mapped pages of tensor `name` are no longer
    /// needed (its data has been copied into the kernels' layout), so they
    /// stop counting toward the process's resident memory while the rest of
    /// the model loads.
    pub fn release(&self, name: &str) {
        let Some((start, len)) = self.extent(name) else {
            return;
        };
        let (Ok(start), Ok(len)) = (usize::try_from(start), usize::try_from(len)) else {
            return;
        };
        // SAFETY: the mapping is private, read-only and backed by the file:
        // MADV_DONTNEED only drops clean pages, which the kernel reads back
        // from the file unchanged if anything touches them again, so no live
        // slice ever observes different data.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, start, len)
        };
    }

    /// Whether the file has a tensor of that name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
}
