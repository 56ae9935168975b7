//! Plain aligned text tables for stdout: a header row and left-aligned columns separated
//! by two spaces, so `column`/`awk` users and people both read them.

/// Renders `rows` under `headers`; every row must have as many cells as there are headers.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let t = render(
            &["NAME", "RG"],
            &[
                vec!["web-01".into(), "rg".into()],
                vec!["a".into(), "longer-rg".into()],
            ],
        );
        assert_eq!(t, "NAME    RG\nweb-01  rg\na       longer-rg\n");
    }

    #[test]
    fn header_only() {
        assert_eq!(render(&["A", "B"], &[]), "A  B\n");
    }
}
