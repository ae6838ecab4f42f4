//! Plain kubectl-style tables (upper-case headers, columns padded with three spaces) and the
//! small formatting helpers every view shares.

use jiff::{SignedDuration, Timestamp};

/// Renders `rows` under `headers`, every column as wide as its widest cell.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            text.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count()) + 3;
            text.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A duration the way kubectl prints ages: `45s`, `3m12s`, `2h5m`, `3d4h`.
pub fn human_duration(d: SignedDuration) -> String {
    let s = d.as_secs().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => {
            let (m, s) = (s / 60, s % 60);
            if s == 0 || m >= 10 {
                format!("{m}m")
            } else {
                format!("{m}m{s}s")
            }
        }
        3600..86400 => {
            let (h, m) = (s / 3600, (s % 3600) / 60);
            if m == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{m}m")
            }
        }
        _ => {
            let (d, h) = (s / 86400, (s % 86400) / 3600);
            if h == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{h}h")
            }
        }
    }
}

/// Age of `t` at `now`, or `-`.
pub fn age(t: Option<Timestamp>, now: Timestamp) -> String {
    t.map_or_else(|| "-".into(), |t| human_duration(now.duration_since(t)))
}

/// An ASCII progress bar `[=======>      ]` of `width` cells for `done` of `total`.
pub fn bar(done: i64, total: i64, width: usize) -> String {
    let filled = if total <= 0 {
        0
    } else {
        let ratio = (done.clamp(0, total) as f64) / (total as f64);
        ((ratio * width as f64).round() as usize).min(width)
    };
    let mut s = String::with_capacity(width + 2);
    s.push('[');
    for i in 0..width {
        s.push(if i + 1 < filled || (i + 1 == filled && filled == width) {
            '='
        } else if i + 1 == filled {
            '>'
        } else {
            ' '
        });
    }
    s.push(']');
    s
}

/// `n%` of `done` over `total` (0 when there is nothing to do).
pub fn percent(done: i64, total: i64) -> i64 {
    if total <= 0 {
        0
    } else {
        done.clamp(0, total) * 100 / total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = render(
            &["NAME", "N"],
            &[
                vec!["a".into(), "10".into()],
                vec!["longer".into(), "2".into()],
            ],
        );
        assert_eq!(t, "NAME     N\na        10\nlonger   2\n");
    }

    #[test]
    fn durations_read_like_kubectl() {
        let d = SignedDuration::from_secs;
        assert_eq!(human_duration(d(5)), "5s");
        assert_eq!(human_duration(d(192)), "3m12s");
        assert_eq!(human_duration(d(720)), "12m");
        assert_eq!(human_duration(d(7500)), "2h5m");
        assert_eq!(human_duration(d(3 * 86400 + 4 * 3600)), "3d4h");
        assert_eq!(human_duration(d(-3)), "0s");
    }

    #[test]
    fn bars() {
        assert_eq!(bar(0, 10, 10), "[          ]");
        assert_eq!(bar(5, 10, 10), "[====>     ]");
        assert_eq!(bar(10, 10, 10), "[==========]");
        assert_eq!(bar(3, 0, 4), "[    ]");
        assert_eq!(bar(20, 10, 4), "[====]");
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(1, 0), 0);
    }
}
