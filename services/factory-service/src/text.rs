//! The text the admin API accepts: names, SKUs, revocation reasons and email addresses.
//!
//! Such text is shown to people (in the admin console, the audit log, a shopper's scan result),
//! so it must show what it is. Lengths count Unicode code points, as PostgreSQL's `length()`
//! in the tables' checks does, after surrounding whitespace is trimmed. Every value:
//! - holds no control character but a tab or a line break (PostgreSQL refuses NUL; the rest
//!   garbles logs and the console);
//! - holds no bidirectional-text control or mark, which can make a value display as something
//!   it is not (an override turns "evitcefed" into "defective");
//! - holds no noncharacter (U+FDD0 to U+FDEF, U+xxFFFE, U+xxFFFF: not for interchange);
//! - shows something: a value made only of spaces and invisible characters (zero-width spaces,
//!   soft hyphens, fillers) is refused like an empty one.
//!
//! Identifiers that must be told apart by eye (a SKU, an email address) hold no format
//! character at all (zero-width, byte-order mark, soft hyphen), and are stored in Unicode
//! normalization form C: "É" typed as one code point or as "E" and a combining accent is the
//! same SKU and the same account.

use unicode_normalization::UnicodeNormalization as _;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};

use crate::error::FactoryError;

/// `value` trimmed, or a 400 `validation_failed` naming `field` when it breaks one of the rules
/// above or is not 1 to `max` code points long. Tabs and line breaks are allowed (a reason).
pub fn text<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, FactoryError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.chars().count() > max {
        return Err(FactoryError::validation(format!(
            "`{field}` must be 1 to {max} characters."
        )));
    }
    if trimmed
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(FactoryError::validation(format!(
            "`{field}` must not contain control characters."
        )));
    }
    if trimmed.chars().any(is_bidi_control) {
        return Err(FactoryError::validation(format!(
            "`{field}` must not contain bidirectional-text controls."
        )));
    }
    if trimmed.chars().any(is_noncharacter) {
        return Err(FactoryError::validation(format!(
            "`{field}` must not contain Unicode noncharacters."
        )));
    }
    if trimmed.chars().all(is_invisible) {
        return Err(FactoryError::validation(format!(
            "`{field}` must contain a visible character."
        )));
    }
    Ok(trimmed)
}

/// [`text`] for a one-line value (a name): tabs and line breaks (U+2028 and U+2029 too) are
/// refused as well.
pub fn line<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, FactoryError> {
    let trimmed = text(field, value, max)?;
    if trimmed
        .chars()
        .any(|c| matches!(c, '\t' | '\n' | '\r' | '\u{2028}' | '\u{2029}'))
    {
        return Err(FactoryError::validation(format!(
            "`{field}` must be one line of text, without tabs."
        )));
    }
    Ok(trimmed)
}

/// [`line`] for an identifier people tell apart by eye (a SKU): no format character either, and
/// the value in normalization form C (its length is counted in that form).
pub fn identifier(field: &str, value: &str, max: usize) -> Result<String, FactoryError> {
    let normalized: String = value.trim().nfc().collect();
    let checked = line(field, &normalized, max)?;
    if checked.chars().any(is_format) {
        return Err(FactoryError::validation(format!(
            "`{field}` must not contain invisible formatting characters (zero-width, byte-order mark, soft hyphen)."
        )));
    }
    Ok(checked.to_owned())
}

/// An email address as accounts are stored and found: trimmed, lower-cased, in normalization
/// form C; `None` when it cannot be one (over 254 bytes, no local part or domain around an `@`,
/// or holding whitespace, a control, format or noncharacter).
pub fn email(raw: &str) -> Option<String> {
    let email: String = raw.trim().to_lowercase().nfc().collect();
    let at = email.find('@');
    let ok = email.len() <= 254
        && at.is_some_and(|i| i > 0 && i + 1 < email.len())
        && !email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_format(c) || is_noncharacter(c));
    ok.then_some(email)
}

/// The bidirectional-text controls and marks: embeddings and overrides (U+202A to U+202E),
/// isolates (U+2066 to U+2069), and the marks U+200E, U+200F and U+061C.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// General category Cf: zero-width characters, joiners, the byte-order mark, the soft hyphen,
/// the bidirectional controls, tag characters.
fn is_format(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

/// U+FDD0 to U+FDEF and the last two code points of every plane.
fn is_noncharacter(c: char) -> bool {
    let n = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&n) || n & 0xFFFE == 0xFFFE
}

/// Whether `c` shows nothing by itself: whitespace, a control, a format character, a line or
/// paragraph separator, or one of the default-ignorable code points of other categories
/// (the combining grapheme joiner, the Hangul fillers, Khmer inherent vowels, Mongolian and
/// other variation selectors).
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c.general_category(),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
        || matches!(
            c,
            '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FFA0}'
                | '\u{E0100}'..='\u{E01EF}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(result: Result<impl std::fmt::Debug, FactoryError>) -> String {
        match result {
            Err(FactoryError::BadRequest { code, detail }) => {
                assert_eq!(code, "validation_failed");
                detail
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn lengths_count_code_points_after_trimming() {
        assert_eq!(text("reason", "  stolen \n", 6).ok(), Some("stolen"));
        assert!(refused(text("reason", "stolen!", 6)).contains("1 to 6"));
        assert!(refused(text("reason", " \t\n ", 6)).contains("1 to 6"));
        // 200 emoji are 200 characters (800 bytes, 400 UTF-16 units).
        let emoji = "😀".repeat(200);
        assert_eq!(line("name", &emoji, 200).ok(), Some(emoji.as_str()));
    }

    #[test]
    fn controls_bidi_controls_and_noncharacters_are_refused_everywhere() {
        for bad in ["a\u{0}b", "a\u{7}b", "a\u{85}b"] {
            assert!(refused(text("reason", bad, 50)).contains("control characters"));
        }
        for bad in [
            "\u{202E}evitcefed\u{202C} counterfeit",
            "a\u{2066}b",
            "a\u{200F}b",
            "a\u{061C}b",
        ] {
            assert!(refused(text("reason", bad, 50)).contains("bidirectional"));
            assert!(refused(line("name", bad, 50)).contains("bidirectional"));
        }
        for bad in ["a\u{FFFE}", "a\u{FFFF}", "a\u{10FFFF}", "a\u{FDD0}"] {
            assert!(refused(line("name", bad, 50)).contains("noncharacters"));
        }
        // Line breaks and tabs: in a reason, not in a name.
        assert!(text("reason", "stolen\n\tin transit", 50).is_ok());
        for bad in ["a\nb", "a\tb", "a\u{2028}b", "a\u{2029}b"] {
            assert!(refused(line("name", bad, 50)).contains("one line"));
        }
    }

    #[test]
    fn a_value_that_shows_nothing_is_refused() {
        for bad in [
            "\u{200B}\u{200B}\u{200B}",
            "\u{AD}",
            "\u{2060}",
            "\u{FEFF}",
            "\u{3164}",
            "\u{200D}\u{FE0F}",
            "\u{E0041}\u{E0042}",
        ] {
            assert!(
                refused(line("name", bad, 50)).contains("visible"),
                "{bad:?}"
            );
        }
        // Joiners inside visible text are text: emoji sequences, Indic and Persian scripts.
        for good in [
            "👩🏽\u{200D}💻 studio",
            "क्\u{200D}ष",
            "می\u{200C}خواهم",
            "\u{301}",
        ] {
            assert!(line("name", good, 50).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn an_identifier_is_stored_composed_and_holds_no_format_character() {
        let composed = identifier("sku", " CAF\u{C9} ", 100).ok();
        let decomposed = identifier("sku", "CAFE\u{301}", 100).ok();
        assert_eq!(composed.as_deref(), Some("CAF\u{C9}"));
        assert_eq!(decomposed, composed);
        for bad in [
            "CAF\u{200B}\u{C9}",
            "\u{FEFF}CAFE",
            "CA\u{AD}FE",
            "CAFE\u{2060}",
        ] {
            assert!(
                refused(identifier("sku", bad, 100)).contains("invisible"),
                "{bad:?}"
            );
        }
        // The limit holds in the stored form: 100 decomposed "é" are 200 code points given,
        // 100 stored.
        assert!(identifier("sku", &"e\u{301}".repeat(100), 100).is_ok());
        assert!(identifier("sku", &"\u{E9}".repeat(101), 100).is_err());
    }

    #[test]
    fn an_email_is_found_in_one_form_and_shows_what_it_is() {
        assert_eq!(email(" A@B.example ").as_deref(), Some("a@b.example"));
        assert_eq!(
            email("CAFE\u{301}@example.com"),
            email("caf\u{E9}@example.com")
        );
        assert_eq!(
            email("CAFE\u{301}@example.com").as_deref(),
            Some("caf\u{E9}@example.com")
        );
        for bad in [
            "@b",
            "a@",
            "a b@c",
            "nul\u{0}@example.com",
            "\u{202E}moc.elpmaxe@nimda",
            "admin\u{200B}@example.com",
            "\u{FEFF}admin@example.com",
            "admin@example.com\u{FFFF}",
        ] {
            assert_eq!(email(bad), None, "{bad:?}");
        }
        assert_eq!(email(&format!("{}@b.example", "a".repeat(250))), None);
    }
}
