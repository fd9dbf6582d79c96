//! How the report's numbers are rounded (in the model) and printed (by the renderers). One place,
//! so the Markdown and HTML print exactly the JSON's numbers.

use super::Range;

/// Rounds to `digits` significant digits (the model stores numbers this way).
pub fn sig(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return if x.is_finite() { 0.0 } else { x };
    }
    let mag = x.abs().log10().floor() as i32;
    let p = 10f64.powi(digits - 1 - mag);
    (x * p).round() / p + 0.0
}

/// Rounds to `decimals` decimal places.
pub fn dec(x: f64, decimals: i32) -> f64 {
    let p = 10f64.powi(decimals);
    (x * p).round() / p + 0.0
}

/// A stored number as people read it: shortest form, thousands separated by commas.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "unbounded".to_string();
    }
    // Shortest representation that round-trips, at most 6 decimals.
    let mut s = format!("{}", dec(x, 6));
    if s.contains('e') {
        s = format!("{x:.0}");
    }
    let (sign, rest) = match s.strip_prefix('-') {
        Some(r) => ("-", r.to_string()),
        None => ("", s),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((i, f)) => (i.to_string(), Some(f.to_string())),
        None => (rest, None),
    };
    let mut grouped = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// A stored fraction as a percentage ("4.2%").
pub fn pct(f: f64) -> String {
    format!("{}%", num(dec(f * 100.0, 4)))
}

/// A change as a signed percentage ("-1.9%", "+3%", "0%").
pub fn signed_pct(f: f64) -> String {
    let p = dec(f * 100.0, 4);
    if p > 0.0 {
        format!("+{}%", num(p))
    } else {
        format!("{}%", num(p))
    }
}

/// "central (low–high)" with a unit after the central value; just "central" when exact.
pub fn range(r: &Range, unit: &str) -> String {
    let u = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    if r.low == r.high {
        format!("{}{u}", num(r.central))
    } else {
        format!("{}{u} ({}–{})", num(r.central), num(r.low), num(r.high))
    }
}

/// A range of changes as signed percentages.
pub fn pct_range(r: &Range) -> String {
    if r.low == r.high {
        signed_pct(r.central)
    } else {
        format!(
            "{} ({} to {})",
            signed_pct(r.central),
            signed_pct(r.low),
            signed_pct(r.high)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_stored() {
        assert_eq!(sig(12.3456, 3), 12.3);
        assert_eq!(sig(0.0123456, 3), 0.0123);
        assert_eq!(sig(123456.0, 3), 123000.0);
        assert_eq!(sig(-0.0004, 3), -0.0004);
        assert_eq!(num(12.3), "12.3");
        assert_eq!(num(123000.0), "123,000");
        assert_eq!(num(1234.5), "1,234.5");
        assert_eq!(num(-1500.0), "-1,500");
        assert_eq!(num(0.0123), "0.0123");
        assert_eq!(num(7.0), "7");
        assert_eq!(pct(0.019), "1.9%");
        assert_eq!(pct(0.04), "4%");
        assert_eq!(signed_pct(-0.019), "-1.9%");
        assert_eq!(signed_pct(0.25), "+25%");
        assert_eq!(signed_pct(0.0), "0%");
        let r = Range {
            low: 1.0,
            central: 2.0,
            high: 3.5,
        };
        assert_eq!(range(&r, "ms"), "2 ms (1–3.5)");
        assert_eq!(range(&Range::exact(4.0), ""), "4");
    }
}
