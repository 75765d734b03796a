use super::*;

#[test]
fn renders_exact_text_for_a_small_registry() {
    let r = Registry::new();
    let c = r.counter("t_messages_total", "Messages seen.").unwrap();
    let g = r.gauge("t_active", "Open connections.").unwrap();
    let f = r
        .counter_family(
            "t_verdicts_total",
            "Verdicts, by kind.",
            &["verdict", "stage"],
        )
        .unwrap();
    let h = r
        .histogram("t_latency_seconds", "Latency.", &[0.25, 1.0])
        .unwrap();
    c.add(3);
    g.inc();
    g.inc();
    g.dec();
    f.inc(&["reject", "rcpt"]);
    f.with(&["accept", "eom"]).add(2);
    f.inc(&["reject", "rcpt"]);
    h.observe(0.125);
    h.observe(0.25);
    h.observe(0.5);
    h.observe(7.0);
    assert_eq!(
        r.render(),
        "# HELP t_messages_total Messages seen.\n\
         # TYPE t_messages_total counter\n\
         t_messages_total 3\n\
         # HELP t_active Open connections.\n\
         # TYPE t_active gauge\n\
         t_active 1\n\
         # HELP t_verdicts_total Verdicts, by kind.\n\
         # TYPE t_verdicts_total counter\n\
         t_verdicts_total{verdict=\"reject\",stage=\"rcpt\"} 2\n\
         t_verdicts_total{verdict=\"accept\",stage=\"eom\"} 2\n\
         # HELP t_latency_seconds Latency.\n\
         # TYPE t_latency_seconds histogram\n\
         t_latency_seconds_bucket{le=\"0.25\"} 2\n\
         t_latency_seconds_bucket{le=\"1\"} 3\n\
         t_latency_seconds_bucket{le=\"+Inf\"} 4\n\
         t_latency_seconds_sum 7.875\n\
         t_latency_seconds_count 4\n"
    );
}

#[test]
fn escapes_label_values_and_help() {
    let r = Registry::new();
    let f = r
        .counter_family("t_total", "Back\\slash and\nnewline \"kept\".", &["v"])
        .unwrap();
    f.inc(&["a\"b\\c\nd"]);
    assert_eq!(
        r.render(),
        "# HELP t_total Back\\\\slash and\\nnewline \"kept\".\n\
         # TYPE t_total counter\n\
         t_total{v=\"a\\\"b\\\\c\\nd\"} 1\n"
    );
}

#[test]
fn label_sets_beyond_the_cap_are_lumped_into_other() {
    let r = Registry::new();
    let f = r
        .counter_family_with_cap("t_total", "Capped.", &["domain"], 3)
        .unwrap();
    for i in 0..1000 {
        f.inc(&[&format!("d{i}.example")]);
    }
    f.inc(&["d1.example"]);
    let long = "x".repeat(MAX_LABEL_VALUE + 1);
    f.inc(&[&long]);
    f.inc(&["a", "too many values"]);
    assert_eq!(f.get(&["d0.example"]), 1);
    assert_eq!(f.get(&["d1.example"]), 2);
    assert_eq!(f.get(&["d3.example"]), 0);
    assert_eq!(f.get(&[OTHER]), 997 + 2);
    let text = r.render();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("t_total{")).count(),
        4,
        "{text}"
    );
    assert!(text.contains("t_total{domain=\"other\"} 999\n"), "{text}");
    assert!(!text.contains(&long));
}

#[test]
fn registration_is_get_or_create_and_refuses_conflicts_and_bad_names() {
    let r = Registry::new();
    let a = r.counter("t_total", "A.").unwrap();
    let b = r.counter("t_total", "A.").unwrap();
    a.inc();
    assert_eq!(b.get(), 1, "same series");
    assert_eq!(
        r.gauge("t_total", "A.").unwrap_err(),
        MetricsError::Conflict("t_total".into())
    );
    let f = r.counter_family("t_f", "F.", &["x"]).unwrap();
    f.inc(&["1"]);
    assert_eq!(
        r.counter_family("t_f", "F.", &["x"]).unwrap().get(&["1"]),
        1
    );
    assert!(matches!(
        r.counter_family("t_f", "F.", &["y"]),
        Err(MetricsError::Conflict(_))
    ));
    assert!(matches!(
        r.counter("1bad", "x"),
        Err(MetricsError::InvalidName(_))
    ));
    assert!(matches!(
        r.counter("bad-name", "x"),
        Err(MetricsError::InvalidName(_))
    ));
    assert!(matches!(
        r.counter_family("t_g", "x", &["le"]),
        Err(MetricsError::InvalidLabel { .. })
    ));
    assert!(matches!(
        r.counter_family("t_g", "x", &["__x"]),
        Err(MetricsError::InvalidLabel { .. })
    ));
    assert!(matches!(
        r.histogram("t_h", "x", &[1.0, 1.0]),
        Err(MetricsError::InvalidBuckets(_))
    ));
    assert!(matches!(
        r.histogram("t_h", "x", &[f64::INFINITY]),
        Err(MetricsError::InvalidBuckets(_))
    ));
    // Nothing half-registered by the refusals.
    assert_eq!(r.render().matches("# TYPE").count(), 2);
}

#[test]
fn histogram_bucket_edges_are_inclusive_and_nan_is_ignored() {
    let r = Registry::new();
    let h = r.histogram("t_h", "H.", &[1.0]).unwrap();
    h.observe(1.0);
    h.observe(f64::NAN);
    h.observe_duration(Duration::from_millis(1500));
    assert_eq!(h.count(), 2);
    assert_eq!(h.sum(), 2.5);
    let text = r.render();
    assert!(text.contains("t_h_bucket{le=\"1\"} 1\n"), "{text}");
    assert!(text.contains("t_h_bucket{le=\"+Inf\"} 2\n"), "{text}");
}
