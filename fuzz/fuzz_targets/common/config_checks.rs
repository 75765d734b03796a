//! Checks shared by the config targets: both daemons report errors through
//! `milter_daemon::config::ConfigError` (re-exported by each crate's `config` module).

use std::fmt::Debug;
use std::path::Path;

use milter_daemon::config::ConfigError;

/// The path the configs are parsed under, and another one to compare with.
pub const PATH: &str = "/etc/milter/fuzz.toml";
pub const OTHER: &str = "/srv/fuzz/other name.toml";

/// The error's parts without the path: (kind, line, message).
pub fn parts(e: &ConfigError) -> (&'static str, Option<usize>, String) {
    match e {
        ConfigError::Io { .. } => ("io", None, e.to_string()),
        ConfigError::Parse { line, message, .. } => ("parse", *line, message.clone()),
        ConfigError::Invalid { message, .. } => ("invalid", None, message.clone()),
    }
}

/// An error from parsing `text` as `path`: names the file, and a line within the text.
pub fn check_error(e: &ConfigError, path: &str, text: &str) {
    let shown = e.to_string();
    assert!(shown.starts_with(path), "error without its path: {shown}");
    match e {
        ConfigError::Io { .. } => panic!("parse reported an I/O error: {shown}"),
        ConfigError::Parse { path: p, line, .. } => {
            assert_eq!(p, Path::new(path));
            if let Some(line) = line {
                assert!(*line >= 1 && *line <= text.lines().count() + 1, "{shown}");
                assert!(shown.starts_with(&format!("{path}:{line}: ")), "{shown}");
            }
        }
        ConfigError::Invalid { path: p, .. } => assert_eq!(p, Path::new(path)),
    }
}

/// Parses `text` three ways and compares: as [`PATH`], as [`OTHER`] (the path is only
/// used in messages), and with a comment line in front (nothing changes but an error's
/// line, one further down). Returns the config when it parses.
pub fn parse_three_ways<C: PartialEq + Debug>(
    text: &str,
    parse: impl Fn(&str, &Path) -> Result<C, ConfigError>,
) -> Option<C> {
    let first = parse(text, Path::new(PATH));
    if let Err(e) = &first {
        check_error(e, PATH, text);
    }

    let other = parse(text, Path::new(OTHER));
    match (&first, &other) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => {
            check_error(b, OTHER, text);
            assert_eq!(parts(a), parts(b));
        }
        _ => panic!("the path changed the outcome: {first:?} / {other:?}"),
    }

    // A byte-order mark is allowed at the very start only.
    if !text.starts_with('\u{feff}') {
        let shifted = parse(&format!("# fuzz\n{text}"), Path::new(PATH));
        match (&first, &shifted) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => {
                let (ka, la, ma) = parts(a);
                let (kb, lb, mb) = parts(b);
                assert_eq!((ka, ma), (kb, mb));
                assert_eq!(la.map(|l| l + 1), lb, "{a} / {b}");
            }
            _ => panic!("a leading comment changed the outcome: {first:?} / {shifted:?}"),
        }
    }
    first.ok()
}
