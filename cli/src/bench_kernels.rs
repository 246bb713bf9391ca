//! `inferno bench kernels`: GFLOP/s and weight bandwidth of each quantized
//! kernel at the default model's shapes, next to this machine's measured
//! single-thread memory read bandwidth (the bound for batch-1 decode).

use std::time::Instant;

use backends::kernels::{bench_kernels_on, detect_path, CpuPath};
use clap::Args;

/// Arguments of `inferno bench kernels`.
#[derive(Args, Debug)]
pub struct KernelBenchArgs {
    /// Threads of the compute pool.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Activation rows per call, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,128")]
    pub batch: Vec<usize>,
    /// Most calls per measurement.
    #[arg(long, default_value_t = 200)]
    pub iters: usize,
    /// CPU path: scalar, avx2 or avx512 (default: the best this CPU has).
    #[arg(long)]
    pub path: Option<String>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the kernel benchmark.
pub fn run(a: KernelBenchArgs) -> anyhow::Result<()> {
    let path = match &a.path {
        Some(p) => CpuPath::parse(p)
            .ok_or_else(|| anyhow::anyhow!("unknown CPU path '{p}' (scalar, avx2, avx512)"))?,
        None => detect_path(),
    };
    if !path.is_supported() {
        anyhow::bail!("this CPU does not support the {} path", path.name());
    }
    let bandwidth = memory_read_gb_per_s();
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "memory_read_gb_per_s": bandwidth })
        );
    } else {
        println!("single-thread memory read bandwidth: {bandwidth:.1} GB/s");
        println!("dtype  path    out_dim in_dim batch threads  working_set_mb   us/call   GFLOP/s  weight_GB/s");
    }
    for r in bench_kernels_on(path, a.threads.max(1), &a.batch, a.iters.max(1)) {
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{:<6} {:<7} {:>7} {:>6} {:>5} {:>7} {:>15.1} {:>9.1} {:>9.1} {:>12.1}",
                r.dtype,
                r.path,
                r.out_dim,
                r.in_dim,
                r.batch,
                r.threads,
                r.working_set_mb,
                r.micros_per_call,
                r.gflops,
                r.weight_gb_per_s
            );
        }
    }
    Ok(())
}

/// Sums a 256 MiB buffer a few times and returns the best read rate in GB/s.
fn memory_read_gb_per_s() -> f64 {
    let buf = vec![1u64; (256 << 20) / 8];
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let sum: u64 = buf.chunks_exact(8).fold(0u64, |acc, c| {
            acc.wrapping_add(c[0] ^ c[1] ^ c[2] ^ c[3] ^ c[4] ^ c[5] ^ c[6] ^ c[7])
        });
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        best = best.max((buf.len() * 8) as f64 / secs / 1e9);
    }
    best
}
