//! The Qwen2 pre-tokenizer: a hand-written splitter equivalent to the regex
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! as Oniguruma (the engine behind Hugging Face `tokenizers`) runs it: at each position the first
//! alternative that matches wins, each quantifier greedy with backtracking. `\p{L}` and `\p{N}` are
//! the Unicode general categories L* and N*; `\s` is the White_Space property; the classes come
//! from a table of the reference's own Unicode version (`unicode_table`). Every character belongs
//! to some alternative, so the matches tile the text with no gaps.

use super::unicode_table;

/// The character classes the regex distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// `\p{L}`.
    Letter,
    /// `\p{N}`.
    Number,
    /// `\r` or `\n` (also whitespace).
    Newline,
    /// Whitespace other than `\r` and `\n`.
    Space,
    /// Everything else (`[^\s\p{L}\p{N}]`).
    Other,
}

/// Class of an ASCII byte, precomputed.
static ASCII_CLASS: [Class; 128] = build_ascii();

const fn build_ascii() -> [Class; 128] {
    let mut t = [Class::Other; 128];
    let mut b = 0usize;
    while b < 128 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphabetic() {
            Class::Letter
        } else if c.is_ascii_digit() {
            Class::Number
        } else if c == b'\r' || c == b'\n' {
            Class::Newline
        } else if c == b' ' || c == b'\t' || c == 0x0B || c == 0x0C {
            Class::Space
        } else {
            Class::Other
        };
        b += 1;
    }
    t
}

/// Class of a character.
#[inline]
pub(crate) fn classify(c: char) -> Class {
    let cp = c as u32;
    if cp < 128 {
        return ASCII_CLASS[cp as usize];
    }
    let table = &unicode_table::RANGES;
    let i = table.partition_point(|&(first, _, _)| first <= cp);
    if i == 0 {
        return Class::Other;
    }
    let (_, last, class) = table[i - 1];
    if cp > last {
        return Class::Other;
    }
    match class {
        unicode_table::LETTER => Class::Letter,
        unicode_table::NUMBER => Class::Number,
        unicode_table::SPACE => Class::Space,
        _ => Class::Other,
    }
}

/// Simple case folding for the contraction alternative: the letters that fold to one of
/// `s t r e v m l d` are those letters in either case, and U+017F LATIN SMALL LETTER LONG S.
#[inline]
fn fold(c: char) -> char {
    match c {
        '\u{17F}' => 's',
        _ => c.to_ascii_lowercase(),
    }
}

/// Splits `text` into pre-tokens, appending their byte ranges `(start, end)` to `out`.
/// `scratch` is reused between calls to hold the decoded characters.
pub(crate) fn split_qwen2(
    text: &str,
    scratch: &mut Vec<(u32, char, Class)>,
    out: &mut Vec<(usize, usize)>,
) {
    scratch.clear();
    scratch.extend(text.char_indices().map(|(i, c)| (i as u32, c, classify(c))));
    let chars = &scratch[..];
    let n = chars.len();
    let offset = |i: usize| {
        if i < n {
            chars[i].0 as usize
        } else {
            text.len()
        }
    };
    let mut i = 0;
    while i < n {
        let end = match_at(chars, i);
        debug_assert!(end > i);
        out.push((offset(i), offset(end)));
        i = end;
    }
}

/// End (exclusive, in characters) of the regex match that starts at character `i`.
fn match_at(chars: &[(u32, char, Class)], i: usize) -> usize {
    let n = chars.len();
    let class = |k: usize| chars[k].2;
    let (_, c, cls) = chars[i];

    // 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if c == '\'' && i + 1 < n {
        let c1 = fold(chars[i + 1].1);
        match c1 {
            's' | 't' | 'm' | 'd' => return i + 2,
            'r' | 'v' | 'l' if i + 2 < n => {
                let c2 = fold(chars[i + 2].1);
                let want = if c1 == 'l' { 'l' } else { 'e' };
                if c2 == want {
                    return i + 3;
                }
            }
            _ => {}
        }
    }

    // 2. [^\r\n\p{L}\p{N}]?\p{L}+
    let letters_from = |mut j: usize| {
        while j < n && class(j) == Class::Letter {
            j += 1;
        }
        j
    };
    match cls {
        Class::Letter => return letters_from(i + 1),
        Class::Space | Class::Other if i + 1 < n && class(i + 1) == Class::Letter => {
            return letters_from(i + 2);
        }
        _ => {}
    }

    // 3. \p{N}
    if cls == Class::Number {
        return i + 1;
    }

    // 4. ' '?[^\s\p{L}\p{N}]+[\r\n]*
    let start = if c == ' ' && i + 1 < n && class(i + 1) == Class::Other {
        i + 1
    } else {
        i
    };
    if class(start) == Class::Other {
        let mut j = start + 1;
        while j < n && class(j) == Class::Other {
            j += 1;
        }
        while j < n && class(j) == Class::Newline {
            j += 1;
        }
        return j;
    }

    // The character is whitespace. Find the maximal whitespace run.
    let mut run_end = i + 1;
    let mut last_newline = None;
    if cls == Class::Newline {
        last_newline = Some(i);
    }
    while run_end < n {
        match class(run_end) {
            Class::Newline => last_newline = Some(run_end),
            Class::Space => {}
            _ => break,
        }
        run_end += 1;
    }
    // 5. \s*[\r\n]+ : greedy \s* backs off to the last newline of the run.
    if let Some(k) = last_newline {
        return k + 1;
    }
    // 6. \s+(?!\S) : the whole run at the end of the text, else all but its last character.
    if run_end == n {
        return run_end;
    }
    if run_end - i >= 2 {
        return run_end - 1;
    }
    // 7. \s+
    run_end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<&str> {
        let mut scratch = Vec::new();
        let mut out = Vec::new();
        split_qwen2(s, &mut scratch, &mut out);
        out.iter().map(|&(a, b)| &s[a..b]).collect()
    }

    #[test]
    fn splits_like_the_regex() {
        assert_eq!(split("Hello, world!"), ["Hello", ",", " world", "!"]);
        assert_eq!(split("I've you'RE"), ["I", "'ve", " you", "'RE"]);
        assert_eq!(split("'Sam"), ["'S", "am"]);
        assert_eq!(split("a  b"), ["a", " ", " b"]);
        assert_eq!(split("x   "), ["x", "   "]);
        assert_eq!(split("  \n  x"), ["  \n", " ", " x"]);
        assert_eq!(split("12 345"), ["1", "2", " ", "3", "4", "5"]);
        assert_eq!(split(" -42"), [" -", "4", "2"]);
        assert_eq!(split("a.\n\nb"), ["a", ".\n\n", "b"]);
        assert_eq!(split("\tfoo"), ["\tfoo"]);
        assert_eq!(split("\nfoo"), ["\n", "foo"]);
        assert_eq!(split(""), Vec::<&str>::new());
        assert_eq!(split(" "), [" "]);
        assert_eq!(split("'"), ["'"]);
        assert_eq!(split("'ſ"), ["'ſ"]);
        assert_eq!(split("'ſx"), ["'ſ", "x"]);
    }

    /// Every code point's class against the reference regex engine's view of it
    /// (`tests/fixtures/tokenizer/unicode_classes.json`, probed through HF `tokenizers`).
    #[test]
    fn classes_match_the_reference_for_every_code_point() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tokenizer/unicode_classes.json"
        );
        let text = std::fs::read_to_string(path).expect("fixture");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let mut mismatches = Vec::new();
        for r in v["ranges"].as_array().expect("ranges") {
            let (a, b) = (
                r[0].as_u64().expect("a") as u32,
                r[1].as_u64().expect("b") as u32,
            );
            let want = r[2].as_str().expect("class");
            for cp in a..=b {
                let Some(c) = char::from_u32(cp) else {
                    assert_eq!(want, "X");
                    continue;
                };
                let got = match classify(c) {
                    Class::Letter => "L",
                    Class::Number => "N",
                    Class::Space => "S",
                    // The probe cannot tell \r and \n from "other".
                    Class::Newline | Class::Other => "O",
                };
                if got != want {
                    mismatches.push(format!("U+{cp:04X} {got} (reference {want})"));
                }
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
        let folds: Vec<u64> = v["contraction_letters_outside_ascii"]
            .as_array()
            .expect("folds")
            .iter()
            .map(|x| x.as_u64().expect("cp"))
            .collect();
        assert_eq!(folds, [0x17F]);
    }
}
