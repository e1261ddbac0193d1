//! Invariant: the two-factor input parsers never panic on any input, and what they accept is
//! canonical:
//! - `parse_passcode` answers exactly six ASCII digits, only when the input is six digits with
//!   spaces or tabs around or between them, and parsing its answer gives the answer back.
//! - `parse_recovery_code` answers sixteen characters of the lower-case base32 alphabet, and
//!   parsing its answer (or the answer upper-cased) gives the answer back.
#![no_main]

use forge::service::totp::{DIGITS, RECOVERY_LEN, parse_passcode, parse_recovery_code};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(code) = parse_passcode(&text) {
        assert_eq!(code.len(), DIGITS);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        assert_eq!(digits, code);
        assert!(
            text.chars()
                .all(|c| c.is_ascii_digit() || c == ' ' || c == '\t')
        );
        assert_eq!(parse_passcode(&code).as_deref(), Some(code.as_str()));
    }
    if let Some(code) = parse_recovery_code(&text) {
        assert_eq!(code.len(), RECOVERY_LEN);
        assert!(code.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')));
        assert_eq!(parse_recovery_code(&code).as_deref(), Some(code.as_str()));
        let upper = code.to_uppercase();
        assert_eq!(parse_recovery_code(&upper).as_deref(), Some(code.as_str()));
    }
});
