//! The reachability truth table of the Kubernetes netpol e2e suite: rows are sources, columns
//! destinations, `.` connected, `X` blocked, `?` not probed. One type for what a probe run observed
//! (`flowgate lab probe`) and for what a test expects (the conformance suite on real traffic, the policy
//! oracle's cases), so tables are built, compared and printed one way everywhere.
//!
//! The builders follow upstream's `Reachability`: start from "all connected" or "all blocked" and add
//! exceptions, by pair ([`Reachability::expect`]) or by peer pattern ([`Reachability::expect_peer`]).

use std::fmt::Write as _;

/// Who reaches whom, over an ordered list of sources and of destinations (`ns/name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reachability {
    from: Vec<String>,
    to: Vec<String>,
    /// Row-major: `cells[i * to.len() + j]` is `from[i]` -> `to[j]`; `None` when not probed.
    cells: Vec<Option<bool>>,
}

/// Whether `host` ("ns/name") matches a peer pattern: `*` (every host), `ns/*` (every host of a
/// namespace), `*/name` (that name in every namespace) or `ns/name`.
///
/// # Panics
/// On a pattern of none of these shapes.
fn matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (pns, pname) = pattern
        .split_once('/')
        .unwrap_or_else(|| panic!("peer pattern {pattern:?}: expected *, ns/*, */name or ns/name"));
    let (ns, name) = host.split_once('/').unwrap_or((host, ""));
    (pns == "*" || pns == ns) && (pname == "*" || pname == name)
}

impl Reachability {
    /// Sources `from` and destinations `to`, no pair probed yet.
    pub fn unknown(from: Vec<String>, to: Vec<String>) -> Self {
        let cells = vec![None; from.len() * to.len()];
        Self { from, to, cells }
    }

    /// Every host to every host (itself included), all connected or all blocked.
    pub fn uniform<S: AsRef<str>>(hosts: &[S], connected: bool) -> Self {
        let hosts: Vec<String> = hosts.iter().map(|h| h.as_ref().to_owned()).collect();
        let cells = vec![Some(connected); hosts.len() * hosts.len()];
        Self { from: hosts.clone(), to: hosts, cells }
    }

    /// The sources, in row order.
    pub fn sources(&self) -> &[String] {
        &self.from
    }

    /// The destinations, in column order.
    pub fn destinations(&self) -> &[String] {
        &self.to
    }

    fn cell(&self, from: &str, to: &str) -> Option<usize> {
        let i = self.from.iter().position(|f| f == from)?;
        let j = self.to.iter().position(|t| t == to)?;
        Some(i * self.to.len() + j)
    }

    /// `from` -> `to`: `Some(connected)`, or `None` when the pair was not probed or is not in the table.
    pub fn get(&self, from: &str, to: &str) -> Option<bool> {
        self.cell(from, to).and_then(|c| self.cells[c])
    }

    /// Records `from` -> `to`; `false` when the pair is not in the table.
    pub fn set(&mut self, from: &str, to: &str, connected: bool) -> bool {
        let Some(c) = self.cell(from, to) else {
            return false;
        };
        self.cells[c] = Some(connected);
        true
    }

    /// One pair.
    ///
    /// # Panics
    /// When the pair is not in the table (a typo in a test's expectation).
    #[must_use]
    pub fn expect(mut self, from: &str, to: &str, connected: bool) -> Self {
        assert!(self.set(from, to, connected), "{from} -> {to} is not in the table ({:?} -> {:?})", self.from, self.to);
        self
    }

    /// Every pair whose source matches `from` and destination matches `to` (patterns: `*`, `ns/*`,
    /// `*/name`, `ns/name`), like upstream's `ExpectPeer(&Peer{..}, &Peer{..}, ..)`.
    ///
    /// # Panics
    /// On a malformed pattern, or one that matches no host (a typo in a test's expectation).
    #[must_use]
    pub fn expect_peer(mut self, from: &str, to: &str, connected: bool) -> Self {
        for (pattern, hosts) in [(from, &self.from), (to, &self.to)] {
            assert!(hosts.iter().any(|h| matches(pattern, h)), "peer pattern {pattern:?} matches none of {hosts:?}");
        }
        for (i, f) in self.from.iter().enumerate() {
            for (j, t) in self.to.iter().enumerate() {
                if matches(from, f) && matches(to, t) {
                    self.cells[i * self.to.len() + j] = Some(connected);
                }
            }
        }
        self
    }

    /// Everything into `host`.
    ///
    /// # Panics
    /// When `host` is not a destination of the table.
    #[must_use]
    pub fn expect_all_ingress(self, host: &str, connected: bool) -> Self {
        assert!(self.to.iter().any(|t| t == host), "{host} is not a destination of the table");
        self.expect_peer("*", host, connected)
    }

    /// Everything out of `host`.
    ///
    /// # Panics
    /// When `host` is not a source of the table.
    #[must_use]
    pub fn expect_all_egress(self, host: &str, connected: bool) -> Self {
        assert!(self.from.iter().any(|f| f == host), "{host} is not a source of the table");
        self.expect_peer(host, "*", connected)
    }

    /// Every pair in row order: source, destination, outcome.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str, Option<bool>)> {
        self.from.iter().enumerate().flat_map(move |(i, f)| {
            self.to.iter().enumerate().map(move |(j, t)| (f.as_str(), t.as_str(), self.cells[i * self.to.len() + j]))
        })
    }

    /// The e2e truth table: a header of destinations, then one row per source, tab-separated, `.`
    /// connected, `X` blocked, `?` not probed.
    pub fn truth_table(&self) -> String {
        self.table_with(|from, to| self.mark(from, to))
    }

    /// The mark of one pair in the truth table: `.` connected, `X` blocked, `?` not probed.
    pub fn mark(&self, from: &str, to: &str) -> char {
        match self.get(from, to) {
            Some(true) => '.',
            Some(false) => 'X',
            None => '?',
        }
    }

    /// The same grid with the mark of each cell chosen by `mark(from, to)` (a comparison of two tables,
    /// pairs that are not checked).
    pub fn table_with(&self, mark: impl Fn(&str, &str) -> char) -> String {
        let mut out = String::new();
        for to in &self.to {
            let _ = write!(out, "\t{to}");
        }
        out.push('\n');
        for from in &self.from {
            out.push_str(from);
            for to in &self.to {
                let _ = write!(out, "\t{}", mark(from, to));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: [&str; 4] = ["x/a", "x/b", "y/a", "y/b"];

    #[test]
    fn builders_follow_upstream_semantics() {
        let r = Reachability::uniform(&PODS, true)
            .expect_all_ingress("x/a", false)
            .expect("x/b", "x/a", true)
            .expect_peer("y/*", "*/b", false);
        assert_eq!(r.get("y/a", "x/a"), Some(false));
        assert_eq!(r.get("x/b", "x/a"), Some(true));
        assert_eq!(r.get("x/a", "y/a"), Some(true));
        assert_eq!(r.get("y/a", "x/b"), Some(false));
        assert_eq!(r.get("y/b", "y/b"), Some(false));
        let e = Reachability::uniform(&PODS, true).expect_all_egress("x/a", false);
        assert_eq!((e.get("x/a", "y/b"), e.get("y/b", "x/a")), (Some(false), Some(true)));
        assert_eq!(r.get("z/a", "x/a"), None);
    }

    #[test]
    #[should_panic(expected = "matches none")]
    fn a_pattern_that_matches_nothing_is_a_mistake() {
        let _ = Reachability::uniform(&PODS, true).expect_peer("z/*", "*", false);
    }

    #[test]
    fn truth_table_has_sources_as_rows_and_destinations_as_columns() {
        let mut r = Reachability::unknown(vec!["x/a".into(), "x/b".into()], vec!["y/a".into()]);
        r.set("x/a", "y/a", true);
        assert!(!r.set("x/a", "z/z", true));
        assert_eq!(r.truth_table(), "\ty/a\nx/a\t.\nx/b\t?\n");
        let pairs: Vec<_> = r.pairs().collect();
        assert_eq!(pairs, [("x/a", "y/a", Some(true)), ("x/b", "y/a", None)]);
    }
}
