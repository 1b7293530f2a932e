//! GPT-2 byte-level alphabet: every byte is shown as one printable Unicode character, so that a
//! BPE vocabulary of strings can hold arbitrary bytes (`Ġ` is the space byte, `Ċ` is `\n`).

/// `BYTE_TO_CHAR[b]` is the character that stands for byte `b`.
pub(crate) static BYTE_TO_CHAR: [char; 256] = build_byte_to_char();

/// Printable bytes stand for themselves; the other 68 bytes (controls, space, DEL, NBSP, soft
/// hyphen) are given the characters U+0100, U+0101, ... in byte order.
const fn build_byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_extra = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        let cp = if printable {
            b as u32
        } else {
            let cp = 256 + next_extra;
            next_extra += 1;
            cp
        };
        table[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0', // unreachable: all code points above are below U+0144
        };
        b += 1;
    }
    table
}

/// The byte a byte-level character stands for, or `None` for a character outside the alphabet.
#[inline]
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        let b = cp as u8;
        if BYTE_TO_CHAR[b as usize] == c {
            return Some(b);
        }
        return None;
    }
    if cp < 256 + 68 {
        // Extra characters are assigned in byte order to the non-printable bytes.
        let idx = (cp - 256) as usize;
        return NON_PRINTABLE[idx];
    }
    None
}

/// The non-printable bytes in increasing order (68 of them).
static NON_PRINTABLE: [Option<u8>; 68] = build_non_printable();

const fn build_non_printable() -> [Option<u8>; 68] {
    let mut out = [None; 68];
    let mut n = 0usize;
    let mut b = 0usize;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        if !printable {
            out[n] = Some(b as u8);
            n += 1;
        }
        b += 1;
    }
    out
}

/// Bytes of a byte-level token string, or `None` if some character is outside the alphabet.
pub(crate) fn decode_token(s: &str) -> Option<Vec<u8>> {
    s.chars().map(char_to_byte).collect()
}

/// Bytes that a token string decodes to under the Hugging Face `ByteLevel` decoder: the
/// byte-level decoding when every character is in the alphabet, else the string's own UTF-8.
pub(crate) fn token_bytes_of(s: &str) -> Vec<u8> {
    decode_token(s).unwrap_or_else(|| s.as_bytes().to_vec())
}

/// Byte-level string for raw bytes (used to print tokens).
#[cfg(test)]
pub(crate) fn encode_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| BYTE_TO_CHAR[b as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = BYTE_TO_CHAR[b as usize];
            assert!(seen.insert(c), "duplicate char for byte {b}");
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        assert_eq!(char_to_byte('a'), Some(b'a'));
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('中'), None);
        assert_eq!(char_to_byte('\u{144}'), None);
    }

    #[test]
    fn round_trip() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_token(&encode_bytes(&bytes)), Some(bytes));
        assert_eq!(token_bytes_of("<|im_end|>"), b"<|im_end|>".to_vec());
        assert_eq!(token_bytes_of("a b"), b"a b".to_vec());
    }
}
