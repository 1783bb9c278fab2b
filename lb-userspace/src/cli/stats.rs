//! `slicelb stats`: what the datapath did with every packet, by reason and by protocol, and
//! what socket-level balancing did with socket calls, summed over CPUs.

use std::fmt::Write as _;

use lb_common::{ProtoCounter, Reason, ReasonClass, SocketCounter};
use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Indexed like [`Reason::ALL`].
    pub reasons: Vec<(String, u64)>,
    /// Indexed like [`ProtoCounter::ALL`].
    pub protocols: Vec<(String, u64)>,
    /// Socket-level balancing, indexed like [`SocketCounter::ALL`].
    pub sockets: Vec<(String, u64)>,
}

impl Stats {
    /// From the kernel's counter arrays (already summed over CPUs).
    pub fn new(reasons: &[u64], protocols: &[u64], sockets: &[u64]) -> Self {
        Self {
            reasons: Reason::ALL
                .iter()
                .map(|r| {
                    (
                        r.name().to_string(),
                        reasons.get(*r as usize).copied().unwrap_or(0),
                    )
                })
                .collect(),
            protocols: ProtoCounter::ALL
                .iter()
                .map(|p| {
                    (
                        p.name().to_string(),
                        protocols.get(*p as usize).copied().unwrap_or(0),
                    )
                })
                .collect(),
            sockets: SocketCounter::ALL
                .iter()
                .map(|c| {
                    (
                        c.name().to_string(),
                        sockets.get(*c as usize).copied().unwrap_or(0),
                    )
                })
                .collect(),
        }
    }

    /// Totals per verdict class, in [`ReasonClass::ALL`] order: passed, balanced, replies,
    /// ICMP, rejected, dropped.
    pub fn by_class(&self) -> Vec<(&'static str, u64)> {
        ReasonClass::ALL
            .iter()
            .map(|class| {
                let total = Reason::ALL
                    .iter()
                    .zip(&self.reasons)
                    .filter(|(reason, _)| reason.class() == *class)
                    .map(|(_, (_, count))| count)
                    .sum();
                (heading(*class), total)
            })
            .collect()
    }

    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{:<28} {:>14}", "VERDICT", "PACKETS");
        for (class, count) in self.by_class() {
            let _ = writeln!(out, "{class:<28} {count:>14}");
        }
        let _ = writeln!(out, "\n{:<28} {:>14}", "REASON", "PACKETS");
        for (name, count) in &self.reasons {
            let _ = writeln!(out, "{name:<28} {count:>14}");
        }
        let _ = writeln!(out, "\n{:<28} {:>14}", "PROTOCOL", "PACKETS");
        for (name, count) in &self.protocols {
            let _ = writeln!(out, "{name:<28} {count:>14}");
        }
        let _ = writeln!(out, "\n{:<28} {:>14}", "SOCKET LEVEL", "CALLS");
        for (name, count) in &self.sockets {
            let _ = writeln!(out, "{name:<28} {count:>14}");
        }
        out
    }

    pub fn render_json(&self) -> String {
        let reasons: serde_json::Map<String, serde_json::Value> = self
            .reasons
            .iter()
            .map(|(n, c)| (n.clone(), (*c).into()))
            .collect();
        let protocols: serde_json::Map<String, serde_json::Value> = self
            .protocols
            .iter()
            .map(|(n, c)| (n.clone(), (*c).into()))
            .collect();
        let sockets: serde_json::Map<String, serde_json::Value> = self
            .sockets
            .iter()
            .map(|(n, c)| (n.clone(), (*c).into()))
            .collect();
        let classes: serde_json::Map<String, serde_json::Value> = self
            .by_class()
            .into_iter()
            .map(|(n, c)| (n.to_string(), c.into()))
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "verdicts": classes,
            "reasons": reasons,
            "protocols": protocols,
            "sockets": sockets,
        }))
        .expect("plain data")
            + "\n"
    }
}

/// How the CLI names a class.
fn heading(class: ReasonClass) -> &'static str {
    match class {
        ReasonClass::Pass => "passed",
        ReasonClass::Lb => "load-balanced",
        ReasonClass::Reply => "replies translated",
        ReasonClass::Icmp => "icmp errors translated",
        ReasonClass::Reject => "rejected",
        ReasonClass::Drop => "dropped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_sum_their_reasons() {
        let mut reasons = vec![0u64; Reason::COUNT as usize];
        reasons[Reason::PassNoFrontend as usize] = 10;
        reasons[Reason::PassNotIp as usize] = 2;
        reasons[Reason::LbNewFlow as usize] = 5;
        reasons[Reason::LbConntrack as usize] = 50;
        reasons[Reason::RejectTcpReset as usize] = 1;
        reasons[Reason::DropTruncated as usize] = 3;
        let mut sockets = vec![0u64; SocketCounter::COUNT as usize];
        sockets[SocketCounter::ConnectTranslated as usize] = 9;
        let stats = Stats::new(&reasons, &[7, 6, 1], &sockets);
        let classes = stats.by_class();
        let get = |name| classes.iter().find(|(c, _)| *c == name).map(|(_, n)| *n);
        assert_eq!(get("passed"), Some(12));
        assert_eq!(get("load-balanced"), Some(55));
        assert_eq!(get("rejected"), Some(1));
        assert_eq!(get("dropped"), Some(3));
        let json: serde_json::Value = serde_json::from_str(&stats.render_json()).expect("JSON");
        assert_eq!(json["reasons"]["lb_conntrack"], 50);
        assert_eq!(json["protocols"]["ipv4"], 6);
        assert_eq!(json["verdicts"]["load-balanced"], 55);
        assert_eq!(json["sockets"]["connect_translated"], 9);
        let table = stats.render_table();
        assert!(
            table.contains("lb_new_flow                               5"),
            "table:\n{table}"
        );
    }
}
