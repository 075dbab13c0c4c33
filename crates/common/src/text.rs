//! Small text helpers shared by both services.

/// The longest start of `s` that fits in `max_bytes` and ends at a character boundary (for
/// text bounded in bytes: log fields, event fields, Pub/Sub attributes).
pub fn truncated(s: &str, max_bytes: usize) -> &str {
    let mut end = s.len().min(max_bytes);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::truncated;

    #[test]
    fn cuts_at_a_character_boundary_within_the_bound() {
        assert_eq!(truncated("abc", 10), "abc");
        assert_eq!(truncated("abc", 2), "ab");
        // "é" is two bytes: a bound inside it leaves it out.
        assert_eq!(truncated("aé", 2), "a");
        assert_eq!(truncated("aé", 3), "aé");
        assert_eq!(truncated("", 0), "");
    }
}
