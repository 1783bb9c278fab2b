//! `slicelb stats`: what the datapath did with every packet, by reason and by protocol, how
//! the XDP fast path sent balanced packets, and what socket-level balancing did with socket
//! calls, summed over CPUs.

use lb_common::{FastPathCounter, ProtoCounter, Reason, ReasonClass, SocketCounter};
use serde::Serialize;

use super::output::{Column, table};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Indexed like [`Reason::ALL`].
    pub reasons: Vec<(String, u64)>,
    /// Indexed like [`ProtoCounter::ALL`].
    pub protocols: Vec<(String, u64)>,
    /// Socket-level balancing, indexed like [`SocketCounter::ALL`].
    pub sockets: Vec<(String, u64)>,
    /// The XDP fast path, indexed like [`FastPathCounter::ALL`].
    pub fast_path: Vec<(String, u64)>,
}

/// `(name, count)` for each counter of `all`, from `counts` indexed like it (0 when short).
fn named<T: Copy>(all: &[T], name: fn(T) -> &'static str, counts: &[u64]) -> Vec<(String, u64)> {
    all.iter()
        .enumerate()
        .map(|(i, c)| (name(*c).to_string(), counts.get(i).copied().unwrap_or(0)))
        .collect()
}

impl Stats {
    /// From the kernel's counter arrays (already summed over CPUs).
    pub fn new(reasons: &[u64], protocols: &[u64], sockets: &[u64], fast_path: &[u64]) -> Self {
        Self {
            reasons: named(&Reason::ALL, Reason::name, reasons),
            protocols: named(&ProtoCounter::ALL, ProtoCounter::name, protocols),
            sockets: named(&SocketCounter::ALL, SocketCounter::name, sockets),
            fast_path: named(&FastPathCounter::ALL, FastPathCounter::name, fast_path),
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

    /// Five tables (verdicts, reasons, protocols, fast path, socket-level calls), a blank
    /// line apart.
    pub fn render_table(&self, headers: bool) -> String {
        let class_counts: Vec<(String, u64)> = self
            .by_class()
            .into_iter()
            .map(|(class, count)| (class.to_string(), count))
            .collect();
        [
            ("VERDICT", "PACKETS", class_counts.as_slice()),
            ("REASON", "PACKETS", self.reasons.as_slice()),
            ("PROTOCOL", "PACKETS", self.protocols.as_slice()),
            ("FAST PATH", "PACKETS", self.fast_path.as_slice()),
            ("SOCKET LEVEL", "CALLS", self.sockets.as_slice()),
        ]
        .into_iter()
        .map(|(name, unit, counts)| {
            table(
                &[Column::text(name), Column::number(unit)],
                counts
                    .iter()
                    .map(|(name, count)| vec![name.clone(), count.to_string()]),
                headers,
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// The counters as JSON and YAML show them: each group a map from the metric label's
    /// value (`reason`, `verdict`, `protocol`, `outcome`) to its count, in the table's order.
    pub fn by_name(&self) -> impl Serialize + use<> {
        #[derive(Serialize)]
        struct ByName {
            verdicts: Counts,
            reasons: Counts,
            protocols: Counts,
            fast_path: Counts,
            sockets: Counts,
        }
        ByName {
            verdicts: Counts(
                self.by_class()
                    .into_iter()
                    .map(|(class, count)| (class.to_string(), count))
                    .collect(),
            ),
            reasons: Counts(self.reasons.iter().map(|(n, c)| (n.clone(), *c)).collect()),
            protocols: Counts(
                self.protocols
                    .iter()
                    .map(|(n, c)| (n.clone(), *c))
                    .collect(),
            ),
            fast_path: Counts(
                self.fast_path
                    .iter()
                    .map(|(n, c)| (n.clone(), *c))
                    .collect(),
            ),
            sockets: Counts(self.sockets.iter().map(|(n, c)| (n.clone(), *c)).collect()),
        }
    }
}

/// Names and counts, serialized as a map in their order.
struct Counts(Vec<(String, u64)>);

impl Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, count)| (name, count)))
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
        let mut fast_path = vec![0u64; FastPathCounter::COUNT as usize];
        fast_path[FastPathCounter::Redirected as usize] = 4;
        fast_path[FastPathCounter::StackTooBig as usize] = 2;
        let stats = Stats::new(&reasons, &[7, 6, 1], &sockets, &fast_path);
        let classes = stats.by_class();
        let get = |name| classes.iter().find(|(c, _)| *c == name).map(|(_, n)| *n);
        assert_eq!(get("passed"), Some(12));
        assert_eq!(get("load-balanced"), Some(55));
        assert_eq!(get("rejected"), Some(1));
        assert_eq!(get("dropped"), Some(3));
        let json = serde_json::to_value(stats.by_name()).expect("JSON");
        assert_eq!(json["reasons"]["lb_conntrack"], 50);
        assert_eq!(json["protocols"]["ipv4"], 6);
        assert_eq!(json["verdicts"]["load-balanced"], 55);
        assert_eq!(json["sockets"]["connect_translated"], 9);
        assert_eq!(json["fast_path"]["sent_redirect"], 4);
        assert_eq!(json["fast_path"]["stack_too_big"], 2);
        let yaml: serde_json::Value =
            serde_norway::from_str(&serde_norway::to_string(&stats.by_name()).expect("YAML"))
                .expect("valid YAML");
        assert_eq!(yaml, json);
        let table = stats.render_table(true);
        let row = table
            .lines()
            .find(|l| l.starts_with("lb_new_flow "))
            .expect("a row per reason");
        assert!(row.ends_with(" 5"), "{row}");
        assert_eq!(table.matches("PACKETS").count(), 4, "{table}");
        assert_eq!(
            table.split("\n\n").count(),
            5,
            "five tables, a blank line apart:\n{table}"
        );
        let redirected = table
            .lines()
            .find(|l| l.starts_with("sent_redirect "))
            .expect("a row per fast path outcome");
        assert!(redirected.ends_with(" 4"), "{redirected}");
        let bare = stats.render_table(false);
        assert!(
            !bare.contains("PACKETS") && !bare.contains("CALLS"),
            "{bare}"
        );
        assert_eq!(
            bare.lines().filter(|l| !l.is_empty()).count(),
            table.lines().filter(|l| !l.is_empty()).count() - 5,
            "one header line less per table"
        );
    }
}
