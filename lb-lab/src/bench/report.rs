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
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let in_day = secs % 86_400;
    let date = format!("{year:04}-{month:02}-{day:02}");
    let time = format!(
        "{date} {:02}:{:02}:{:02}",
        in_day / 3600,
        (in_day / 60) % 60,
        in_day % 60
    );
    (date, time)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_from_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
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
