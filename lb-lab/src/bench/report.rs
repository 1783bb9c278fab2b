//! The benchmark report: one Markdown file per run with the machine, the exact command, a
//! table per section and links to the plots.

use std::{fmt::Write as _, path::Path};

/// One table of a section: a header row and data rows of the same width.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(caption: &str, header: &[&str]) -> Self {
        Self {
            caption: caption.to_string(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; a row shorter than the header is padded with empty cells.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.header.len().max(cells.len()), String::new());
        self.rows.push(cells);
    }
}

/// One section of the report (per-packet cost, throughput, ...).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Section {
    /// Short lowercase name used in plot file names and by the report check.
    pub slug: String,
    pub title: String,
    /// How it was measured, in a few sentences.
    pub method: String,
    pub tables: Vec<Table>,
    /// File names (relative to the report) of the plots, without extension; each exists
    /// as `.svg` and `.png`.
    pub plots: Vec<String>,
    /// Targets and what we measured against them, or what could not be measured and why.
    pub notes: Vec<String>,
}

/// What the report says about the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub host: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, model)| model.trim().to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "host".to_string());
        Self {
            cpu_model,
            cores,
            kernel,
            host,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub machine: Machine,
    /// The command line as typed.
    pub command: String,
    /// UTC, `YYYY-MM-DD HH:MM:SS`.
    pub started_utc: String,
    pub duration_secs: f64,
    pub quick: bool,
    pub sections: Vec<Section>,
}

impl Report {
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let kind = if self.quick { "quick" } else { "full" };
        let _ = writeln!(out, "# slicelb benchmark report ({kind} run)\n");
        let _ = writeln!(out, "- started: {} UTC", self.started_utc);
        let _ = writeln!(out, "- duration: {:.0} s", self.duration_secs);
        let _ = writeln!(out, "- command: `{}`", self.command);
        let _ = writeln!(
            out,
            "- machine: {} ({} cores), kernel {}, host `{}`",
            self.machine.cpu_model, self.machine.cores, self.machine.kernel, self.machine.host
        );
        let _ = writeln!(
            out,
            "\nEvery ratio is between numbers measured in this run, on this machine.\n"
        );
        for section in &self.sections {
            let _ = writeln!(out, "## {}\n", section.title);
            if !section.method.is_empty() {
                let _ = writeln!(out, "{}\n", section.method);
            }
            for table in &section.tables {
                out.push_str(&render_table(table));
                out.push('\n');
            }
            for plot in &section.plots {
                let _ = writeln!(out, "![{plot}]({plot}.svg) ([PNG]({plot}.png))\n");
            }
            for note in &section.notes {
                let _ = writeln!(out, "- {note}");
            }
            if !section.notes.is_empty() {
                out.push('\n');
            }
        }
        out
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_markdown())
    }
}

fn render_table(table: &Table) -> String {
    let mut out = String::new();
    if !table.caption.is_empty() {
        let _ = writeln!(out, "**{}**\n", table.caption);
    }
    let _ = writeln!(out, "| {} |", table.header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        table.header.iter().map(|_| "---|").collect::<String>()
    );
    for row in &table.rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

/// Formats a value with a sensible number of digits for a table.
pub fn num(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".to_string();
    }
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// `a / b` as `1.23x`, or `n/a` when either side is missing.
pub fn ratio(a: f64, b: f64) -> String {
    if !a.is_finite() || !b.is_finite() || b == 0.0 {
        return "n/a".to_string();
    }
    format!("{:.2}x", a / b)
}

/// UTC now as (`YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS`).
pub fn utc_now() -> (String, String) {
    utc_strings(jiff::Timestamp::now())
}

fn utc_strings(at: jiff::Timestamp) -> (String, String) {
    (
        at.strftime("%Y-%m-%d").to_string(),
        at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_and_times() {
        let at = |second| jiff::Timestamp::from_second(second).expect("in range");
        let pair = |date: &str, time: &str| (date.to_owned(), time.to_owned());
        assert_eq!(
            utc_strings(at(0)),
            pair("1970-01-01", "1970-01-01 00:00:00")
        );
        // 2024-01-01 and 2026-03-01 (after a February), plus 01:02:03.
        assert_eq!(
            utc_strings(at(19_723 * 86_400 + 3_723)),
            pair("2024-01-01", "2024-01-01 01:02:03")
        );
        assert_eq!(
            utc_strings(at(20_513 * 86_400 + 86_399)),
            pair("2026-03-01", "2026-03-01 23:59:59")
        );
    }

    #[test]
    fn markdown_has_every_section_table_and_plot() {
        let mut table = Table::new("cost", &["case", "ns/packet"]);
        table.row(vec!["floor".into(), num(12.345)]);
        let report = Report {
            machine: Machine {
                cpu_model: "Test CPU".into(),
                cores: 2,
                kernel: "6.18".into(),
                host: "h".into(),
            },
            command: "slicelb bench --quick".into(),
            started_utc: "2026-01-01 00:00:00".into(),
            duration_secs: 3.0,
            quick: true,
            sections: vec![Section {
                slug: "per-packet".into(),
                title: "Per-packet cost".into(),
                method: "BPF_PROG_TEST_RUN".into(),
                tables: vec![table],
                plots: vec!["x-per-packet".into()],
                notes: vec!["target met".into()],
            }],
        };
        let md = report.to_markdown();
        for expected in [
            "## Per-packet cost",
            "| case | ns/packet |",
            "| floor | 12.3 |",
            "![x-per-packet](x-per-packet.svg)",
            "Test CPU (2 cores), kernel 6.18",
            "`slicelb bench --quick`",
            "- target met",
        ] {
            assert!(md.contains(expected), "report lacks {expected:?}:\n{md}");
        }
    }

    #[test]
    fn ratios_and_numbers() {
        assert_eq!(ratio(3.0, 2.0), "1.50x");
        assert_eq!(ratio(1.0, 0.0), "n/a");
        assert_eq!(ratio(f64::NAN, 1.0), "n/a");
        assert_eq!(num(1234.4), "1234");
        assert_eq!(num(0.123), "0.12");
    }
}
