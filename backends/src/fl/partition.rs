//! Splitting a dataset among clients (IID and Dirichlet label skew), and the
//! anchor's `partitions.json` format.

use std::collections::BTreeMap;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::{FlError, Result};

/// Which split of a [`PartitionFile`] to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitKind {
    /// Equal-size random shards.
    Iid,
    /// Per-class Dirichlet(alpha) proportions.
    Dirichlet,
}

/// One split: client id (decimal string) → sorted row indices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// How the split was made (free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Dirichlet concentration, for Dirichlet splits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Rows of each client, keyed `"0"`, `"1"`, ...
    pub clients: BTreeMap<String, Vec<usize>>,
}

impl Split {
    /// Builds a split from per-client row lists (client `i` = `lists[i]`).
    pub fn from_lists(lists: Vec<Vec<usize>>, alpha: Option<f64>, method: Option<String>) -> Self {
        Split {
            method,
            alpha,
            clients: lists
                .into_iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l))
                .collect(),
        }
    }

    /// Per-client row lists ordered by client id; ids must be exactly `0..n`.
    pub fn lists(&self) -> Result<Vec<Vec<usize>>> {
        let n = self.clients.len();
        (0..n)
            .map(|i| {
                self.clients.get(&i.to_string()).cloned().ok_or_else(|| {
                    FlError::Partitions(format!("client ids are not 0..{n}: {i} missing"))
                })
            })
            .collect()
    }
}

/// The anchor's `partitions.json`: test rows plus an IID and a Dirichlet split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionFile {
    /// Description of the dataset the indices refer to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Seed the splits were made with.
    pub seed: u64,
    /// Number of clients in each split.
    pub num_clients: usize,
    /// Held-out rows for centralised evaluation.
    pub test_indices: Vec<usize>,
    /// The IID split.
    pub iid: Split,
    /// The Dirichlet split.
    pub dirichlet: Split,
}

impl PartitionFile {
    /// Parses JSON and checks that both splits have `num_clients` clients.
    pub fn from_json(text: &str) -> Result<Self> {
        let f: PartitionFile =
            serde_json::from_str(text).map_err(|e| FlError::Partitions(e.to_string()))?;
        for (name, s) in [("iid", &f.iid), ("dirichlet", &f.dirichlet)] {
            let lists = s.lists()?;
            if lists.len() != f.num_clients {
                return Err(FlError::Partitions(format!(
                    "{name} has {} clients, num_clients is {}",
                    lists.len(),
                    f.num_clients
                )));
            }
        }
        Ok(f)
    }

    /// Reads and parses a file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| FlError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Serializes to compact JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| FlError::Partitions(e.to_string()))
    }

    /// Writes the file.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json()?).map_err(|source| FlError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Per-client rows of one split.
    pub fn clients(&self, kind: SplitKind) -> Result<Vec<Vec<usize>>> {
        match kind {
            SplitKind::Iid => self.iid.lists(),
            SplitKind::Dirichlet => self.dirichlet.lists(),
        }
    }
}

/// Shuffles `indices` (seeded) and cuts them into `num_clients` contiguous
/// shards whose sizes differ by at most one (larger shards first, like
/// `np.array_split`); each shard sorted.
pub fn iid_split(indices: &[usize], num_clients: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
    if num_clients == 0 || indices.len() < num_clients {
        return Err(FlError::InvalidConfig(format!(
            "cannot split {} rows among {num_clients} clients",
            indices.len()
        )));
    }
    let mut perm = indices.to_vec();
    perm.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let (base, extra) = (perm.len() / num_clients, perm.len() % num_clients);
    let mut out = Vec::with_capacity(num_clients);
    let mut start = 0;
    for c in 0..num_clients {
        let len = base + usize::from(c < extra);
        let mut shard = perm[start..start + len].to_vec();
        shard.sort_unstable();
        out.push(shard);
        start += len;
    }
    Ok(out)
}

/// Standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Gamma(shape, 1) draw (Marsaglia–Tsang; boosted for shape < 1).
fn gamma(rng: &mut ChaCha8Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = 1.0 - rng.gen::<f64>();
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = 1.0 - rng.gen::<f64>();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Label-skewed split (Hsu et al. 2019): for every class, shuffle its rows,
/// draw client proportions from Dirichlet(alpha), cut at
/// `floor(cumsum(p) * n_class)`; redraw everything until every client has at
/// least `min_size` rows (up to 1000 attempts). `labels` is indexed by row.
pub fn dirichlet_split(
    indices: &[usize],
    labels: &[u32],
    num_clients: usize,
    alpha: f64,
    min_size: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    if num_clients == 0 || alpha.is_nan() || alpha <= 0.0 || indices.len() < num_clients * min_size
    {
        return Err(FlError::InvalidConfig(format!(
            "cannot make a Dirichlet({alpha}) split of {} rows among {num_clients} clients with at least {min_size} each",
            indices.len()
        )));
    }
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &i in indices {
        let label = *labels
            .get(i)
            .ok_or_else(|| FlError::InvalidConfig(format!("row {i} has no label")))?;
        by_class.entry(label).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..1000 {
        let mut parts = vec![Vec::new(); num_clients];
        for rows in by_class.values() {
            let mut rows = rows.clone();
            rows.shuffle(&mut rng);
            let g: Vec<f64> = (0..num_clients).map(|_| gamma(&mut rng, alpha)).collect();
            let total: f64 = g.iter().sum();
            let mut cum = 0.0;
            let mut start = 0;
            for (c, part) in parts.iter_mut().enumerate() {
                cum += g[c] / total;
                let end = if c + 1 == num_clients {
                    rows.len()
                } else {
                    ((cum * rows.len() as f64) as usize).clamp(start, rows.len())
                };
                part.extend_from_slice(&rows[start..end]);
                start = end;
            }
        }
        if parts.iter().all(|p| p.len() >= min_size) {
            for p in &mut parts {
                p.sort_unstable();
            }
            return Ok(parts);
        }
    }
    Err(FlError::InvalidConfig(format!(
        "no Dirichlet({alpha}) split with every client >= {min_size} rows in 1000 attempts"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_cover(parts: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn iid_is_a_seeded_balanced_cover() {
        let idx: Vec<usize> = (0..103).collect();
        let a = iid_split(&idx, 10, 1).unwrap();
        assert_eq!(a, iid_split(&idx, 10, 1).unwrap());
        assert_ne!(a, iid_split(&idx, 10, 2).unwrap());
        assert_eq!(
            a.iter().map(Vec::len).collect::<Vec<_>>(),
            [11, 11, 11, 10, 10, 10, 10, 10, 10, 10]
        );
        check_cover(&a, 103);
        assert!(iid_split(&idx[..3], 10, 1).is_err());
    }

    #[test]
    fn dirichlet_is_a_seeded_skewed_cover() {
        let labels: Vec<u32> = (0..2000).map(|i| (i % 10) as u32).collect();
        let idx: Vec<usize> = (0..2000).collect();
        let a = dirichlet_split(&idx, &labels, 10, 0.5, 10, 3).unwrap();
        assert_eq!(a, dirichlet_split(&idx, &labels, 10, 0.5, 10, 3).unwrap());
        check_cover(&a, 2000);
        assert!(a.iter().all(|p| p.len() >= 10));
        // skew: some client's label histogram is far from uniform
        let max_share = a
            .iter()
            .map(|p| {
                let mut h = [0usize; 10];
                p.iter().for_each(|&i| h[labels[i] as usize] += 1);
                *h.iter().max().unwrap() as f64 / p.len() as f64
            })
            .fold(0.0, f64::max);
        assert!(max_share > 0.3, "{max_share}");
    }

    #[test]
    fn gamma_mean() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for shape in [0.5, 2.0] {
            let m = (0..20_000).map(|_| gamma(&mut rng, shape)).sum::<f64>() / 20_000.0;
            assert!((m - shape).abs() < 0.05 * shape.max(1.0), "{shape}: {m}");
        }
    }

    #[test]
    fn json_roundtrip_and_validation() {
        let f = PartitionFile {
            dataset: None,
            seed: 1,
            num_clients: 2,
            test_indices: vec![9],
            iid: Split::from_lists(vec![vec![0, 1], vec![2]], None, None),
            dirichlet: Split::from_lists(vec![vec![0], vec![1, 2]], Some(0.5), None),
        };
        let back = PartitionFile::from_json(&f.to_json().unwrap()).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.clients(SplitKind::Dirichlet).unwrap()[1], vec![1, 2]);
        let bad = r#"{"seed":1,"num_clients":3,"test_indices":[],"iid":{"clients":{"0":[1]}},"dirichlet":{"clients":{"0":[1]}}}"#;
        assert!(PartitionFile::from_json(bad).is_err());
    }
}
