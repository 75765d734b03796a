//! The author address of a From header value, enough to pick a signing domain.

/// Returns the first mailbox's `local@domain` (domain lowercased) from a From header
/// value, or `None` if there is no plausible address. Handles display names, quoted
/// strings, comments and angle brackets; group syntax and odd forms give `None`.
pub fn from_address(value: &str) -> Option<String> {
    // Strip comments and note where the first unquoted '<' is, outside quotes.
    let mut clean = String::with_capacity(value.len());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                clean.push(c);
            }
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 => {
                quoted = !quoted;
                clean.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            // Unquoted commas separate mailboxes: stop at the first one unless inside <>.
            _ => clean.push(c),
        }
    }
    let addr = match unquoted_find(&clean, '<') {
        Some(lt) => {
            let rest = clean.get(lt + 1..)?;
            rest.get(..rest.find('>')?)?.to_string()
        }
        None => {
            let first = match unquoted_find(&clean, ',') {
                Some(i) => clean.get(..i)?,
                None => clean.as_str(),
            };
            first.to_string()
        }
    };
    let addr: String = addr.chars().filter(|c| !c.is_whitespace()).collect();
    let (local, domain) = addr.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if local.is_empty()
        || domain.is_empty()
        || !domain.contains('.')
        || !domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return None;
    }
    Some(format!("{local}@{domain}"))
}

fn unquoted_find(s: &str, needle: char) -> Option<usize> {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == needle && !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::from_address;

    #[test]
    fn forms() {
        let f = |s| from_address(s);
        assert_eq!(f(" joe@Example.COM").as_deref(), Some("joe@example.com"));
        assert_eq!(
            f(" Joe <joe@example.com>").as_deref(),
            Some("joe@example.com")
        );
        assert_eq!(
            f(" \"Doe, John <x@evil.org>\" <john@example.com>").as_deref(),
            Some("john@example.com")
        );
        assert_eq!(
            f(" joe@example.com (Joe <x@evil.org>)").as_deref(),
            Some("joe@example.com")
        );
        assert_eq!(
            f(" =?UTF-8?B?w4Rs?=\n\t<a@b.example.com>").as_deref(),
            Some("a@b.example.com")
        );
        assert_eq!(
            f(" a@example.com, b@other.org").as_deref(),
            Some("a@example.com")
        );
        assert_eq!(f(" undisclosed"), None);
        assert_eq!(f(" <>"), None);
        assert_eq!(f(" joe@localhost"), None);
        assert_eq!(f(" joe@exa mple.com>"), None);
        assert_eq!(f(""), None);
    }
}
