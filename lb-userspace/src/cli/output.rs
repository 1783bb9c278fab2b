//! How the read-only commands print: `-o table|wide|json|yaml` and `--no-headers`. Tables
//! are laid out by comfy-table (each column as wide as its widest cell, so a long name never
//! shifts the columns after it); JSON and YAML are serde's rendering of the same rows.

use clap::{Args, ValueEnum};
use comfy_table::{Cell, CellAlignment, ContentArrangement, Table, presets::NOTHING};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for a person.
    Table,
    /// The table with more columns (counters, details).
    Wide,
    Json,
    Yaml,
}

/// The output flags every read-only view takes.
#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArgs {
    /// Output format: `table` for people, `wide` with more columns, `json` or `yaml` for
    /// scripts (keys as the metrics name their labels).
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Leave out the header line of tables (for scripts that cut columns).
    #[arg(long)]
    pub no_headers: bool,
}

impl Default for OutputArgs {
    fn default() -> Self {
        Self {
            output: OutputFormat::Table,
            no_headers: false,
        }
    }
}

impl OutputArgs {
    /// `-o wide`.
    pub fn wide(&self) -> bool {
        self.output == OutputFormat::Wide
    }

    /// `value` as JSON or YAML, or `None` for the table formats (the caller draws those).
    pub fn serialized<T: Serialize + ?Sized>(&self, value: &T) -> Option<String> {
        match self.output {
            OutputFormat::Json => {
                Some(serde_json::to_string_pretty(value).expect("rows are plain data") + "\n")
            }
            OutputFormat::Yaml => {
                Some(serde_norway::to_string(value).expect("rows are plain data"))
            }
            OutputFormat::Table | OutputFormat::Wide => None,
        }
    }
}

/// A column of a table: its header and whether it holds numbers (aligned right, header
/// included).
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub header: &'static str,
    pub numeric: bool,
}

impl Column {
    pub const fn text(header: &'static str) -> Self {
        Self {
            header,
            numeric: false,
        }
    }

    pub const fn number(header: &'static str) -> Self {
        Self {
            header,
            numeric: true,
        }
    }
}

/// A cell listing `items` comma-separated, or `empty` when there are none (a blank cell
/// would shift what `cut`/`awk` see).
pub fn joined<T: AsRef<str>>(items: &[T], empty: &str) -> String {
    if items.is_empty() {
        return empty.to_string();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(",")
}

/// Spaces between columns, as kubectl leaves.
const COLUMN_GAP: u16 = 3;

/// `rows` under `columns` in kubectl's style: no borders, columns three spaces apart, no
/// trailing spaces; the header line only when `headers` is set.
pub fn table(
    columns: &[Column],
    rows: impl IntoIterator<Item = Vec<String>>,
    headers: bool,
) -> String {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    if headers {
        table.set_header(columns.iter().map(|c| {
            Cell::new(c.header).set_alignment(if c.numeric {
                CellAlignment::Right
            } else {
                CellAlignment::Left
            })
        }));
    }
    let mut empty = true;
    for row in rows {
        table.add_row(row);
        empty = false;
    }
    if empty && !headers {
        return String::new();
    }
    let last = columns.len().saturating_sub(1);
    for (index, (column, spec)) in table.column_iter_mut().zip(columns).enumerate() {
        column.set_padding((0, if index == last { 0 } else { COLUMN_GAP }));
        if spec.numeric {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = String::new();
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: [Column; 3] = [
        Column::text("NAME"),
        Column::number("COUNT"),
        Column::text("NOTE"),
    ];

    fn rows() -> Vec<Vec<String>> {
        vec![
            vec!["a".into(), "7".into(), "short".into()],
            vec![
                "a-name-longer-than-any-fixed-width-column-would-allow".into(),
                "1234567".into(),
                "".into(),
            ],
        ]
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_numbers_align_right() {
        let text = table(&COLUMNS, rows(), true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        // Every row's second column starts where the header's does, however long the name.
        let count_end = lines[0].find("COUNT").expect("header") + "COUNT".len();
        assert_eq!(&lines[1][count_end - 1..count_end], "7", "{text}");
        assert_eq!(&lines[2][count_end - 7..count_end], "1234567", "{text}");
        assert!(lines[0].starts_with("NAME "), "{text}");
        assert!(
            lines.iter().all(|l| !l.ends_with(' ')),
            "no trailing spaces:\n{text}"
        );
        assert_eq!(
            lines[1].find("short"),
            lines[0].find("NOTE"),
            "the last column lines up too:\n{text}"
        );
    }

    #[test]
    fn no_headers_leaves_only_the_rows() {
        let text = table(&COLUMNS, rows(), false);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.starts_with("a "), "{text}");
        assert_eq!(table(&COLUMNS, Vec::new(), false), "");
        assert_eq!(table(&COLUMNS, Vec::new(), true).lines().count(), 1);
        assert_eq!(joined::<&str>(&[], "-"), "-");
        assert_eq!(joined(&["a", "b"], "-"), "a,b");
    }

    #[test]
    fn json_and_yaml_render_the_same_keys_and_tables_render_nothing() {
        #[derive(Serialize)]
        struct Row {
            namespace: &'static str,
            flows: u64,
        }
        let rows = [Row {
            namespace: "default",
            flows: 3,
        }];
        let with = |output| OutputArgs {
            output,
            no_headers: false,
        };
        let json: serde_json::Value =
            serde_json::from_str(&with(OutputFormat::Json).serialized(&rows).expect("json"))
                .expect("valid JSON");
        let yaml: serde_json::Value =
            serde_norway::from_str(&with(OutputFormat::Yaml).serialized(&rows).expect("yaml"))
                .expect("valid YAML");
        assert_eq!(json, yaml);
        assert_eq!(json[0]["namespace"], "default");
        assert_eq!(json[0]["flows"], 3);
        assert!(with(OutputFormat::Table).serialized(&rows).is_none());
        assert!(with(OutputFormat::Wide).serialized(&rows).is_none());
    }
}
