//! The coordinators' federated-learning admin API as the CLI uses it
//! (`/admin/v1/fl/jobs`), and how its answers are shown: job lists, round
//! tables and a PNG chart of accuracy and loss per round.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

/// Job states after which nothing changes any more.
pub const TERMINAL: [&str; 3] = ["Completed", "Failed", "Cancelled"];

/// Whether a job status is final.
pub fn is_terminal(status: &str) -> bool {
    TERMINAL.contains(&status)
}

/// A blocking client of one coordinator's admin API.
pub struct FlApi {
    base: String,
    agent: ureq::Agent,
}

impl FlApi {
    /// A client of the coordinator at `url` (e.g. `http://127.0.0.1:8080`)
    /// sending `key` (an admin key) with every request.
    pub fn new(url: &str, key: Option<String>) -> Self {
        FlApi {
            base: url.trim_end_matches('/').to_string(),
            agent: crate::api_key::with_key(
                ureq::AgentBuilder::new()
                    .timeout_connect(Duration::from_secs(5))
                    .timeout(Duration::from_secs(30)),
                key,
            )
            .build(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/admin/v1/fl/jobs{path}", self.base)
    }

    /// Turns an answer into its JSON body, or an error carrying the API's
    /// `{"error":{"message"}}`.
    fn answer(url: &str, r: Result<ureq::Response, ureq::Error>) -> anyhow::Result<Value> {
        match r {
            Ok(r) => {
                let text = r
                    .into_string()
                    .with_context(|| format!("{url}: cannot read the answer"))?;
                if text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                serde_json::from_str(&text).with_context(|| format!("{url}: not JSON: {text}"))
            }
            Err(ureq::Error::Status(code, r)) => {
                let v: Value = r.into_json().unwrap_or(Value::Null);
                let msg = v["error"]["message"].as_str().unwrap_or("no message");
                bail!("{url}: HTTP {code}: {msg}");
            }
            Err(e) => Err(e).with_context(|| format!("cannot reach {url}")),
        }
    }

    /// `POST /admin/v1/fl/jobs` with a TOML spec; returns the job id.
    pub fn submit_toml(&self, toml_text: &str) -> anyhow::Result<String> {
        let url = self.url("");
        let r = self
            .agent
            .post(&url)
            .set("Content-Type", "application/toml")
            .send_string(toml_text);
        let v = Self::answer(&url, r)?;
        v["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("{url}: the answer has no job id: {v}"))
    }

    /// `GET /admin/v1/fl/jobs`.
    pub fn list(&self) -> anyhow::Result<Value> {
        let url = self.url("");
        Self::answer(&url, self.agent.get(&url).call())
    }

    /// `GET /admin/v1/fl/jobs/{id}`.
    pub fn job(&self, id: &str) -> anyhow::Result<Value> {
        let url = self.url(&format!("/{id}"));
        Self::answer(&url, self.agent.get(&url).call())
    }

    /// `GET /admin/v1/fl/jobs/{id}/model?format=FORMAT`: the latest
    /// checkpoint's file.
    pub fn model(&self, id: &str, format: &str) -> anyhow::Result<Vec<u8>> {
        let url = self.url(&format!("/{id}/model?format={format}"));
        match self.agent.get(&url).call() {
            Ok(r) => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(r.into_reader(), 1 << 30),
                    &mut bytes,
                )
                .with_context(|| format!("{url}: the download broke off"))?;
                Ok(bytes)
            }
            Err(e) => Self::answer(&url, Err(e)).map(|_| Vec::new()),
        }
    }

    /// `POST /admin/v1/fl/jobs/{id}/stop`.
    pub fn stop(&self, id: &str) -> anyhow::Result<Value> {
        let url = self.url(&format!("/{id}/stop"));
        Self::answer(&url, self.agent.post(&url).send_string(""))
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}"))
}

/// The table for `GET /admin/v1/fl/jobs`.
pub fn render_jobs(v: &Value) -> String {
    let mut out = format!("{:<32} {:<10} {:>9}\n", "JOB", "STATUS", "ROUNDS");
    for j in v["jobs"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<32} {:<10} {:>9}",
            s(&j["id"]),
            s(&j["status"]),
            format!("{}/{}", s(&j["rounds_done"]), s(&j["rounds"]))
        );
    }
    out
}

/// The finished rounds of a `GET /admin/v1/fl/jobs/{id}` answer.
pub fn rounds(job: &Value) -> &[Value] {
    job["rounds"].as_array().map_or(&[], Vec::as_slice)
}

/// One line for a finished round (what `fl start --wait` prints).
pub fn round_line(r: &Value) -> String {
    let m = &r["metrics"];
    format!(
        "round {:>3}  accuracy {}  loss {}  fed_acc {}  participants {}  {} s",
        s(&r["round"]),
        num(&m["accuracy"], 4),
        num(&m["loss"], 4),
        num(&m["fed_accuracy"], 4),
        s(&m["participants"]),
        num(&m["seconds"], 2),
    )
}

/// The header and round table for `GET /admin/v1/fl/jobs/{id}`.
pub fn render_job(job: &Value) -> String {
    let done = rounds(job).len();
    let mut out = format!(
        "job {}  status {}  rounds {}/{}  dataset {}\n\n",
        s(&job["id"]),
        s(&job["status"]),
        done,
        s(&job["spec"]["rounds"]),
        s(&job["spec"]["dataset"]),
    );
    if let Some(why) = job["reason"].as_str() {
        let _ = writeln!(out, "failed: {why}\n");
    }
    let _ = writeln!(
        out,
        "{:>5} | {:>8} | {:>8} | {:>8} | {:>12} | {:>8}",
        "round", "accuracy", "loss", "fed_acc", "participants", "seconds"
    );
    for r in rounds(job) {
        let m = &r["metrics"];
        let _ = writeln!(
            out,
            "{:>5} | {:>8} | {:>8} | {:>8} | {:>12} | {:>8}",
            s(&r["round"]),
            num(&m["accuracy"], 4),
            num(&m["loss"], 4),
            num(&m["fed_accuracy"], 4),
            s(&m["participants"]),
            num(&m["seconds"], 2),
        );
    }
    out
}

/// `(round, accuracy, loss)` of every finished round that has them.
pub fn series(job: &Value) -> Vec<(f64, f64, f64)> {
    rounds(job)
        .iter()
        .filter_map(|r| {
            Some((
                r["round"].as_f64()?,
                r["metrics"]["accuracy"].as_f64()?,
                r["metrics"]["loss"].as_f64()?,
            ))
        })
        .collect()
}

/// Draws accuracy (top panel, blue) and loss (bottom panel, red) per round
/// to a PNG of `width` x `height` pixels. Axes and grid lines carry no text
/// (no fonts are assumed on the machine); the round table has the numbers.
pub fn plot_png(job: &Value, path: &Path, width: u32, height: u32) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let pts = series(job);
    if pts.is_empty() {
        bail!("the job has no finished rounds with accuracy and loss to plot");
    }
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw {}: {e}", path.display());
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((2, 1));
    let last = pts.last().map_or(1.0, |p| p.0).max(1.0);
    let first = pts.first().map_or(0.0, |p| p.0).min(last - 1.0);
    let max_loss = pts.iter().map(|p| p.2).fold(0.0_f64, f64::max).max(1e-6) * 1.05;
    let draw = |area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
                y_max: f64,
                ys: Vec<(f64, f64)>,
                color: RGBColor|
     -> anyhow::Result<()> {
        let mut chart = ChartBuilder::on(area)
            .margin(20)
            .build_cartesian_2d(first..last, 0.0..y_max)
            .map_err(|e| err(&e))?;
        // Grid: ten steps on both axes, and a frame.
        let grid = RGBColor(220, 220, 220);
        for k in 0..=10 {
            let x = first + (last - first) * f64::from(k) / 10.0;
            let y = y_max * f64::from(k) / 10.0;
            chart
                .draw_series(LineSeries::new(vec![(x, 0.0), (x, y_max)], &grid))
                .map_err(|e| err(&e))?;
            chart
                .draw_series(LineSeries::new(vec![(first, y), (last, y)], &grid))
                .map_err(|e| err(&e))?;
        }
        chart
            .draw_series(LineSeries::new(
                vec![
                    (first, 0.0),
                    (last, 0.0),
                    (last, y_max),
                    (first, y_max),
                    (first, 0.0),
                ],
                &BLACK,
            ))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(LineSeries::new(ys, color.stroke_width(2)))
            .map_err(|e| err(&e))?;
        Ok(())
    };
    draw(
        &panels[0],
        1.0,
        pts.iter().map(|p| (p.0, p.1)).collect(),
        RGBColor(31, 119, 180),
    )?;
    draw(
        &panels[1],
        max_loss,
        pts.iter().map(|p| (p.0, p.2)).collect(),
        RGBColor(214, 39, 40),
    )?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job() -> Value {
        json!({
            "id": "mnist-mlp", "status": "Running",
            "spec": {"id": "mnist-mlp", "dataset": "mnist", "rounds": 30},
            "rounds": [
                {"round": 1, "checkpoint": "ab", "metrics": {"accuracy": 0.9012, "loss": 0.3511,
                    "fed_accuracy": 0.9, "fed_loss": 0.35, "participants": 10, "seconds": 2.345,
                    "train_loss": 0.5}},
                {"round": 2, "checkpoint": "cd", "metrics": {"accuracy": 0.9301, "loss": 0.2403,
                    "fed_accuracy": null, "participants": 9, "seconds": 2.1}},
            ]
        })
    }

    #[test]
    fn renders_the_round_table_and_the_job_list() {
        let text = render_job(&job());
        assert!(
            text.contains("job mnist-mlp  status Running  rounds 2/30"),
            "{text}"
        );
        assert!(
            text.contains("    1 |   0.9012 |   0.3511 |   0.9000 |           10 |     2.35"),
            "{text}"
        );
        assert!(
            text.contains("    2 |   0.9301 |   0.2403 |        - |            9 |     2.10"),
            "{text}"
        );
        let line = round_line(&rounds(&job())[1]);
        assert!(
            line.contains("round   2  accuracy 0.9301  loss 0.2403"),
            "{line}"
        );
        let list = render_jobs(&json!({"jobs": [
            {"id": "a", "status": "Completed", "rounds_done": 3, "rounds": 3}]}));
        assert!(list.lines().nth(1).unwrap().starts_with("a "), "{list}");
        assert!(list.contains("Completed") && list.contains("3/3"), "{list}");
        assert!(is_terminal("Failed") && !is_terminal("Running"));
    }

    #[test]
    fn plots_accuracy_and_loss_to_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.png");
        plot_png(&job(), &path, 480, 360).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // One finished round is enough; none is an error, not a panic.
        let one = json!({"rounds": [{"round": 1, "metrics": {"accuracy": 0.5, "loss": 1.0}}]});
        plot_png(&one, &path, 200, 200).unwrap();
        assert!(plot_png(&json!({"rounds": []}), &path, 200, 200).is_err());
    }
}
