//! Plain-text tables as `cilium endpoint list` prints them: left-aligned columns separated by three
//! spaces, headers that may span two lines, and cells that may hold several lines (one label per line).
//! Pure: tables are built from strings and rendered to a string.

/// A table whose cells are lists of lines.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<Vec<String>>,
    rows: Vec<Vec<Vec<String>>>,
}

const GAP: &str = "   ";

impl Table {
    /// Columns with their header lines (`&["POLICY (ingress)", "ENFORCEMENT"]` spans two lines).
    pub fn new(headers: &[&[&str]]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.iter().map(|s| (*s).to_owned()).collect()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row of single-line cells.
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        self.rows.push(cells.into_iter().map(|c| vec![c]).collect());
    }

    /// Adds a row whose cells may have several lines (an empty list is an empty cell).
    pub fn multiline_row(&mut self, cells: Vec<Vec<String>>) {
        self.rows.push(cells);
    }

    /// Renders the table, with or without its headers. Trailing spaces are trimmed from every line.
    pub fn render(&self, headers: bool) -> String {
        let columns = self.headers.len();
        let cell_lines = |cells: &[Vec<String>]| cells.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut lines: Vec<Vec<&str>> = Vec::new();
        let header_rows = if headers { Some(&self.headers) } else { None };
        for cells in header_rows.into_iter().chain(&self.rows) {
            for i in 0..cell_lines(cells) {
                lines.push(
                    (0..columns)
                        .map(|c| cells.get(c).and_then(|cell| cell.get(i)).map_or("", String::as_str))
                        .collect(),
                );
            }
        }
        let mut widths = vec![0; columns];
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (c, cell) in line.iter().enumerate() {
                if c > 0 {
                    text.push_str(GAP);
                }
                text.push_str(cell);
                if c + 1 < columns {
                    text.extend(std::iter::repeat_n(' ', widths[c] - cell.chars().count()));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_multiline_cells_span_rows() {
        let mut t = Table::new(&[&["ID"], &["POLICY", "ENFORCEMENT"], &["LABELS"]]);
        t.multiline_row(vec![vec!["1".into()], vec!["Disabled".into()], vec!["app=a".into(), "tier=web".into()]]);
        t.row(["12".to_owned(), "Enabled".to_owned(), String::new()]);
        assert_eq!(
            t.render(true),
            "ID   POLICY        LABELS\n\
             \u{20}    ENFORCEMENT\n\
             1    Disabled      app=a\n\
             \u{20}                  tier=web\n\
             12   Enabled\n"
        );
        assert_eq!(t.render(false), "1    Disabled   app=a\n                tier=web\n12   Enabled\n");
    }

    #[test]
    fn empty_table_is_just_the_headers() {
        assert_eq!(Table::new(&[&["A"], &["B"]]).render(true), "A   B\n");
        assert_eq!(Table::new(&[&["A"]]).render(false), "");
    }
}
