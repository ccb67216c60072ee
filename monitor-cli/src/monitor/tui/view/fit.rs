//! Column widths that follow the terminal. A table is drawn in a [`Shape`]: how much each cell says. When the
//! full shape does not fit, the table gives way one [`Step`] at a time, in the order its view lists them
//! (the namespace drops out when every row shares it, and otherwise for the pods of the namespace most rows
//! are in, as kubectl's current namespace; labels shorten to their value, less important columns
//! go, times lose their milliseconds, long names get an ellipsis), until it fits. The last column fills
//! what is left; a cell that is still too long ends in `…`, never cut silently. The full values are in the
//! detail pane.

use std::collections::BTreeSet;

/// How much the cells of a table say; each field is one way of giving way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Pods of this namespace without it (the one every pod shown shares, or most of them are in).
    pub home_namespace: Option<String>,
    /// Labels of peers that are not pods by their value: `world` for `reserved:world`.
    pub label_values: bool,
    /// Pods without their endpoint id.
    pub no_ids: bool,
    /// `12:12:18` rather than `12:12:18.510`.
    pub short_time: bool,
    /// Policy names without their namespace, default deny without the list of isolating policies.
    pub short_policy: bool,
    /// Peers at most this wide (with an ellipsis).
    pub peer_width: Option<usize>,
    /// Columns left out, by header.
    pub dropped: BTreeSet<&'static str>,
}

/// One way a table gives way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    NoNamespace,
    LabelValues,
    NoIds,
    ShortTime,
    ShortPolicy,
    /// Peers at most this wide.
    SqueezePeers(usize),
    /// Leave out the column with this header.
    Drop(&'static str),
}

impl Shape {
    fn apply(&mut self, step: Step, home: Option<&str>) {
        match step {
            Step::NoNamespace => self.home_namespace = home.map(str::to_owned),
            Step::LabelValues => self.label_values = true,
            Step::NoIds => self.no_ids = true,
            Step::ShortTime => self.short_time = true,
            Step::ShortPolicy => self.short_policy = true,
            Step::SqueezePeers(width) => self.peer_width = Some(width),
            Step::Drop(header) => {
                self.dropped.insert(header);
            }
        }
    }

    pub fn shows(&self, header: &str) -> bool {
        !self.dropped.contains(header)
    }
}

/// A column as drawn: its header and its cells, top to bottom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub header: &'static str,
    pub cells: Vec<String>,
}

impl Column {
    /// The widest cell or the header.
    pub fn natural_width(&self) -> usize {
        self.cells.iter().map(|c| text_width(c)).chain([text_width(self.header)]).max().unwrap_or(0)
    }
}

/// Display width, one column per character (the monitor's texts are ASCII plus `…` and arrows).
pub fn text_width(text: &str) -> usize {
    text.chars().count()
}

/// `text` in at most `width` columns: as it is, or cut and ended with `…`.
pub fn ellipsize(text: &str, width: usize) -> String {
    if text_width(text) <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// A table's title in `width` columns (its border's corners and a space each side left): `head`, then as many
/// of `extras` (most important first) as fit, comma-separated; `head` ellipsized when even it does not fit.
pub fn title(head: &str, extras: &[String], width: usize) -> String {
    let room = width.saturating_sub(4);
    let mut out = head.to_owned();
    for extra in extras.iter().filter(|e| !e.is_empty()) {
        if text_width(&out) + 2 + text_width(extra) > room {
            break;
        }
        out.push_str(", ");
        out.push_str(extra);
    }
    format!(" {} ", ellipsize(&out, room))
}

/// Space between columns.
pub const SPACING: usize = 1;

/// The columns of `shape` fit in `width` with the last (filling) column at least `fill_min` wide.
fn fits(columns: &[Column], width: usize, fill_min: usize) -> bool {
    let Some((_, fixed)) = columns.split_last() else { return true };
    let fixed: usize = fixed.iter().map(|c| c.natural_width() + SPACING).sum();
    fixed + fill_min <= width
}

/// The first shape, following `steps` in order, whose columns fit in `width` (the last shape when none does),
/// with its columns and their widths: each fixed column as wide as its widest cell, the last one what is left.
/// Every cell is ellipsized to its column.
pub fn fit(
    width: usize,
    fill_min: usize,
    steps: &[Step],
    home_namespace: Option<&str>,
    columns_of: impl Fn(&Shape) -> Vec<Column>,
) -> (Shape, Vec<Column>, Vec<usize>) {
    let mut shape = Shape::default();
    let mut columns = columns_of(&shape);
    for step in steps {
        if fits(&columns, width, fill_min) {
            break;
        }
        if *step == Step::NoNamespace && home_namespace.is_none() {
            continue;
        }
        shape.apply(*step, home_namespace);
        columns = columns_of(&shape);
    }
    let mut widths: Vec<usize> = columns.iter().map(Column::natural_width).collect();
    let mut left = width;
    for w in widths.iter_mut().rev().skip(1).rev() {
        *w = (*w).min(left.saturating_sub(SPACING));
        left = left.saturating_sub(*w + SPACING);
    }
    if let Some(last) = widths.last_mut() {
        *last = left;
    }
    for (column, width) in columns.iter_mut().zip(&widths) {
        for cell in &mut column.cells {
            *cell = ellipsize(cell, *width);
        }
    }
    (shape, columns, widths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ellipsis_marks_every_cut() {
        assert_eq!(ellipsize("default/database", 16), "default/database");
        assert_eq!(ellipsize("default/database", 10), "default/d…");
        assert_eq!(ellipsize("abc", 1), "…");
        assert_eq!(ellipsize("abc", 0), "");
    }

    #[test]
    fn titles_keep_what_fits() {
        let extras = ["following".to_owned(), "pods of default by name".to_owned()];
        assert_eq!(title("flows: 2 shown", &extras, 80), " flows: 2 shown, following, pods of default by name ");
        assert_eq!(title("flows: 2 shown", &extras, 40), " flows: 2 shown, following ");
        assert_eq!(title("flows: 2 shown", &extras, 10), " flows… ");
    }

    #[test]
    fn steps_are_taken_in_order_until_it_fits() {
        let columns_of = |shape: &Shape| {
            let name = if shape.home_namespace.is_some() { "database" } else { "default/database" };
            let mut cols = vec![Column { header: "POD", cells: vec![name.into()] }];
            if shape.shows("MATCH") {
                cols.push(Column { header: "MATCH", cells: vec!["L3-L4".into()] });
            }
            cols.push(Column { header: "POLICY", cells: vec!["default/allow-db".into()] });
            cols
        };
        let steps = [Step::NoNamespace, Step::Drop("MATCH")];
        let (shape, cols, widths) = fit(40, 10, &steps, Some("default"), columns_of);
        assert_eq!((shape, widths), (Shape::default(), vec![16, 5, 17]), "everything fits");
        assert_eq!(cols[2].cells, vec!["default/allow-db"]);
        let (shape, _, widths) = fit(30, 10, &steps, Some("default"), columns_of);
        assert!(shape.home_namespace.is_some() && shape.shows("MATCH"));
        assert_eq!(widths, vec![8, 5, 15]);
        let (shape, cols, widths) = fit(30, 10, &steps, None, columns_of);
        assert!(shape.home_namespace.is_none() && !shape.shows("MATCH"), "no pods, no namespace to leave out");
        assert_eq!(widths, vec![16, 13]);
        assert_eq!(cols[1].cells, vec!["default/allo…"]);
    }
}
