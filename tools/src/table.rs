//! Plain-text tables for people: left-aligned columns, two spaces apart, no borders.

use std::fmt::Write as _;

/// A table with a header row. Cells are plain text; a cell holding a newline or tab would break
/// the alignment, so those are shown escaped.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// A table without a header, for key/value listings.
    pub fn plain() -> Table {
        Table::default()
    }

    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| {
                    let c: String = c.into();
                    if c.contains(['\n', '\t', '\r']) {
                        c.escape_default().to_string()
                    } else {
                        c
                    }
                })
                .collect(),
        );
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let mut t = Table::new(&["LSN", "STATUS"]);
        t.row(["1", "created"]);
        t.row(["1000", "out\nfor"]);
        assert_eq!(t.render(), "LSN   STATUS\n1     created\n1000  out\\nfor\n");
    }
}
