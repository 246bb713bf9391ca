//! `inferno audit --url URL [--since T] [--tenant T] [--verify] [--json]`:
//! the cluster's audit trail as one coordinator holds it.
//!
//! `--verify` reads the whole retained chain, checks every link and hash
//! from the checkpoint on ([`verify_chain`]), then asks every coordinator
//! for its hash of the last entry: an entry edited in one coordinator's
//! stored state breaks that coordinator's chain, and one edited in its
//! raft log gives it a head hash the others do not have. Either exits
//! non-zero, naming the entry or the coordinator.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use coordinator::state::audit::{verify_chain, AuditCheckpoint, AuditEntry};
use serde::Deserialize;

use crate::admin_api::{call, Target};

/// Arguments of `inferno audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    pub target: Target,
    /// Only entries since then: an RFC 3339 time (2026-12-01T08:00:00Z) or
    /// a duration ago (15m, 2h, 7d).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<u64>,
    /// Only entries of this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Check the whole chain and that every coordinator holds the same;
    /// exit non-zero on a break.
    #[arg(long, conflicts_with_all = ["since", "tenant"])]
    pub verify: bool,
    /// Print the entries as JSON.
    #[arg(long)]
    pub json: bool,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `--since`: RFC 3339, or a duration before now.
fn parse_since(text: &str) -> Result<u64, String> {
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return u64::try_from(t.unix_timestamp()).map_err(|_| format!("{text:?} is before 1970"));
    }
    let ago = crate::keys::parse_duration_s(text)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a duration like 2h"))?;
    Ok(unix_now().saturating_sub(ago))
}

/// Unix seconds as RFC 3339 (UTC).
fn rfc3339(t: u64) -> String {
    i64::try_from(t)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// One page of `GET /admin/v1/audit`.
#[derive(Debug, Deserialize)]
struct Page {
    checkpoint: AuditCheckpoint,
    filtered: bool,
    more: bool,
    entries: Vec<AuditEntry>,
}

/// Most pages read (the chain holds at most 10,000 entries, 1,000 a page;
/// the margin covers entries appended while reading).
const MAX_PAGES: usize = 64;

/// Reads of the whole trail started over when retention dropped entries
/// not yet read (a busy trail trimmed between two pages).
const MAX_RESTARTS: usize = 3;

/// A read of the trail: the first page's checkpoint, whether the key saw
/// only its tenant's entries, and the entries, oldest first.
type Trail = (AuditCheckpoint, bool, Vec<AuditEntry>);

/// Every entry matching `filters` (a query string, possibly empty), oldest
/// first, with the checkpoint of the first page.
fn read_all(t: &Target, filters: &str) -> anyhow::Result<Trail> {
    for _ in 0..MAX_RESTARTS {
        if let Some(read) = read_pages(t, filters)? {
            return Ok(read);
        }
    }
    bail!("retention kept dropping entries faster than they could be read; try again")
}

/// One read of the trail, page after page; `None` when retention dropped
/// entries between two pages (the unfiltered trail then skips numbers),
/// which would look like a break.
fn read_pages(t: &Target, filters: &str) -> anyhow::Result<Option<Trail>> {
    let mut after = 0;
    let mut entries: Vec<AuditEntry> = Vec::new();
    let mut first: Option<(AuditCheckpoint, bool)> = None;
    for _ in 0..MAX_PAGES {
        let v = call(
            t,
            "GET",
            &format!("/admin/v1/audit?after={after}{filters}"),
            None,
        )?;
        let page: Page = serde_json::from_value(v).context("unexpected audit page")?;
        let more = page.more;
        if !continues(entries.last(), page.entries.first(), page.filtered) {
            return Ok(None);
        }
        if let Some(last) = page.entries.last() {
            after = last.seq;
        }
        first.get_or_insert((page.checkpoint, page.filtered));
        entries.extend(page.entries);
        if !more {
            let (checkpoint, filtered) = first.unwrap_or_default();
            return Ok(Some((checkpoint, filtered, entries)));
        }
    }
    bail!("the audit trail kept growing while it was read; try again")
}

fn print_table(entries: &[AuditEntry]) {
    println!(
        "{:>6} {:<20} {:<15} {:<10} {:<18} {:<15} {:>6} {:>6}  ROUTE",
        "SEQ", "TIME", "KIND", "TENANT", "KEY", "CLIENT", "STATUS", "COUNT"
    );
    for e in entries {
        let r = &e.record;
        let kind = serde_json::to_value(r.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        println!(
            "{:>6} {:<20} {:<15} {:<10} {:<18} {:<15} {:>6} {:>6}  {} {}",
            e.seq,
            rfc3339(r.time_unix),
            kind,
            r.tenant.as_deref().unwrap_or("-"),
            r.key_id.as_deref().unwrap_or("-"),
            if r.client.is_empty() { "-" } else { &r.client },
            r.status,
            r.count,
            r.method,
            r.route
        );
    }
}

/// Runs `inferno audit`.
pub fn run(a: AuditArgs) -> anyhow::Result<()> {
    if a.verify {
        return verify(&a.target);
    }
    let mut filters = String::new();
    if let Some(t) = a.since {
        filters.push_str(&format!("&since={t}"));
    }
    if let Some(t) = &a.tenant {
        let ok = t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        anyhow::ensure!(ok, "--tenant {t:?}: letters, digits, '-', '_' and '.' only");
        filters.push_str(&format!("&tenant={t}"));
    }
    let (_, _, entries) = read_all(&a.target, &filters)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        print_table(&entries);
    }
    Ok(())
}

/// How long to wait for a lagging (or just restarted) coordinator to
/// reach the head and answer.
/// Whether a page starting with `next` continues a read that ended with
/// `prev`: the unfiltered trail numbers its entries without gaps, so a
/// skipped number means retention dropped entries not yet read.
fn continues(prev: Option<&AuditEntry>, next: Option<&AuditEntry>, filtered: bool) -> bool {
    match (prev, next) {
        (Some(prev), Some(next)) => filtered || next.seq == prev.seq + 1,
        _ => true,
    }
}

const CATCH_UP: Duration = Duration::from_secs(5);

fn verify(t: &Target) -> anyhow::Result<()> {
    let (checkpoint, filtered, entries) = read_all(t, "")?;
    if filtered {
        bail!("this key sees only its own tenant's entries; verifying the chain needs an admin key of tenant default");
    }
    let head = verify_chain(&checkpoint, &entries)
        .map_err(|b| anyhow::anyhow!("{} holds a broken audit chain: {b}", t.url))?;
    println!(
        "chain verified on {}: entries {}..{} follow checkpoint {} (head {})",
        t.url,
        checkpoint.seq + 1,
        head.seq,
        checkpoint.seq,
        &head.hash[..16.min(head.hash.len())]
    );
    let deadline = std::time::Instant::now() + CATCH_UP;
    loop {
        let v = call(
            t,
            "GET",
            &format!("/admin/v1/audit/peers?seq={}", head.seq),
            None,
        )?;
        let coordinators = v["coordinators"].as_array().cloned().unwrap_or_default();
        let mut behind = Vec::new();
        let mut unreachable = Vec::new();
        let mut agree = Vec::new();
        for c in &coordinators {
            let name = c["name"].as_str().unwrap_or("?").to_string();
            match (c["hash"].as_str(), c["head_seq"].as_u64()) {
                (Some(h), _) if h == head.hash => agree.push(name),
                (Some(_), _) => bail!(
                    "coordinator {name} holds a different entry {}: the audit chains diverge \
                     (one of them was altered)",
                    head.seq
                ),
                (None, Some(at)) if at < head.seq => behind.push(format!("{name} (at {at})")),
                (None, Some(_)) => unreachable.push(format!("{name} (no longer retains it)")),
                (None, None) => unreachable.push(format!(
                    "{name} ({})",
                    c["error"].as_str().unwrap_or("no answer")
                )),
            }
        }
        let retry = !(behind.is_empty() && unreachable.is_empty());
        if retry && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        println!("coordinators holding the same head: {}", agree.join(", "));
        for (what, list) in [
            ("behind, not compared", &behind),
            ("not compared", &unreachable),
        ] {
            if !list.is_empty() {
                eprintln!("warning: {what}: {}", list.join(", "));
            }
        }
        return Ok(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_and_durations() {
        assert_eq!(parse_since("2026-12-01T00:00:00Z"), Ok(1_796_083_200));
        let two_hours_ago = parse_since("2h").unwrap();
        assert!(unix_now() - two_hours_ago >= 7_200);
        assert!(parse_since("yesterday").is_err());
        assert_eq!(rfc3339(1_796_083_200), "2026-12-01T00:00:00Z");
    }

    /// A page that skips numbers means retention dropped entries between
    /// two pages: the read starts over instead of reporting a break. A
    /// tenant's filtered trail skips numbers by design.
    #[test]
    fn a_trimmed_gap_between_pages_is_noticed() {
        let entry = |seq| AuditEntry {
            seq,
            record: coordinator::state::audit::AuditRecord {
                time_unix: 0,
                kind: coordinator::state::audit::AuditKind::AdminWrite,
                key_id: None,
                tenant: None,
                client: String::new(),
                method: "POST".into(),
                route: "/admin/v1/keys".into(),
                status: 200,
                count: 1,
            },
            prev_hash: String::new(),
            hash: String::new(),
        };
        assert!(continues(Some(&entry(7)), Some(&entry(8)), false));
        assert!(!continues(Some(&entry(7)), Some(&entry(9)), false));
        assert!(continues(Some(&entry(7)), Some(&entry(9)), true));
        assert!(continues(None, Some(&entry(40)), false));
        assert!(continues(Some(&entry(7)), None, false));
    }
}
