//! The Prometheus text exposition format, version 0.0.4.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::Metric;

/// Appends one metric: `# HELP`, `# TYPE`, then its samples.
pub(super) fn metric(out: &mut String, name: &str, help: &str, metric: &Metric) {
    let kind = match metric {
        Metric::Counter(_) | Metric::Family(_) => "counter",
        Metric::Gauge(_) => "gauge",
        Metric::Histogram(_) => "histogram",
    };
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    escape_help(out, help);
    out.push('\n');
    let _ = writeln!(out, "# TYPE {name} {kind}");
    match metric {
        Metric::Counter(c) => {
            let _ = writeln!(out, "{name} {}", c.get());
        }
        Metric::Gauge(g) => {
            let _ = writeln!(out, "{name} {}", g.get());
        }
        Metric::Family(f) => {
            for (values, v) in f.snapshot() {
                out.push_str(name);
                labels(
                    out,
                    f.label_names()
                        .iter()
                        .map(String::as_str)
                        .zip(values.iter().map(String::as_str)),
                );
                let _ = writeln!(out, " {v}");
            }
        }
        Metric::Histogram(h) => {
            let h = &h.0;
            // The count is the +Inf bucket, so a scrape racing an observation stays
            // self-consistent (the sum may lag or lead by that observation).
            let mut cumulative = 0u64;
            for (i, b) in h.buckets.iter().enumerate() {
                cumulative += b.load(Ordering::Relaxed);
                let le = match h.bounds.get(i) {
                    Some(bound) => format!("{bound}"),
                    None => "+Inf".to_owned(),
                };
                let _ = write!(out, "{name}_bucket");
                labels(out, std::iter::once(("le", le.as_str())));
                let _ = writeln!(out, " {cumulative}");
            }
            let sum = f64::from_bits(h.sum_bits.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}_sum {sum}");
            let _ = writeln!(out, "{name}_count {cumulative}");
        }
    }
}

/// `{a="x",b="y"}` with values escaped.
fn labels<'a>(out: &mut String, pairs: impl Iterator<Item = (&'a str, &'a str)>) {
    out.push('{');
    for (i, (name, value)) in pairs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// HELP text: backslash and line feed escaped.
fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}
