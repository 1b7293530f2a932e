//! Added tokens (`<|im_start|>`, `<think>`, ...): found in the text before pre-tokenization, the
//! way Hugging Face `tokenizers` does it: leftmost-longest non-overlapping matches, then the
//! `single_word`, `lstrip` and `rstrip` options of each token.

/// One added token.
#[derive(Debug, Clone)]
pub(crate) struct AddedToken {
    /// Token id.
    pub(crate) id: u32,
    /// Its text.
    pub(crate) content: String,
    /// Special (control) token: split only when parsing special tokens, skipped by
    /// `decode(.., skip_special = true)`.
    pub(crate) special: bool,
    /// Only match as a whole word.
    pub(crate) single_word: bool,
    /// Swallow whitespace on the left.
    pub(crate) lstrip: bool,
    /// Swallow whitespace on the right.
    pub(crate) rstrip: bool,
    /// Matched on the normalized text rather than the raw text.
    pub(crate) normalized: bool,
}

/// A piece of input text: plain text or an added token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// Text still to be normalized / pre-tokenized.
    Text(&'a str),
    /// An added token id.
    Token(u32),
}

/// Leftmost-longest matcher over one subset of the added tokens.
#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    tokens: Vec<AddedToken>,
    /// For each first byte, indices into `tokens`, longest content first.
    by_first_byte: Vec<Vec<u32>>,
}

impl Matcher {
    /// Builds a matcher; empty contents are ignored.
    pub(crate) fn new(tokens: Vec<AddedToken>) -> Matcher {
        let mut by_first_byte = vec![Vec::new(); 256];
        for (i, t) in tokens.iter().enumerate() {
            if let Some(&b) = t.content.as_bytes().first() {
                by_first_byte[b as usize].push(i as u32);
            }
        }
        for list in &mut by_first_byte {
            // Longest first; among equal lengths the lower id (the first added) wins.
            list.sort_by_key(|&i| {
                let t = &tokens[i as usize];
                (std::cmp::Reverse(t.content.len()), t.id)
            });
        }
        Matcher {
            tokens,
            by_first_byte,
        }
    }

    /// True when there is nothing to match.
    pub(crate) fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Splits `text`, appending the pieces to `out`. Special tokens are only recognised when
    /// `parse_special` holds; a special token that is skipped still consumes its match (so no
    /// shorter token is found inside it), as in `tokenizers` with `encode_special_tokens`.
    pub(crate) fn split<'a>(&self, text: &'a str, parse_special: bool, out: &mut Vec<Piece<'a>>) {
        if self.tokens.is_empty() {
            if !text.is_empty() {
                out.push(Piece::Text(text));
            }
            return;
        }
        let bytes = text.as_bytes();
        let mut emitted = 0usize; // start of text not yet emitted
        let mut pos = 0usize;
        while pos < bytes.len() {
            let Some((tok, end)) = self.longest_at(bytes, pos) else {
                pos += 1;
                continue;
            };
            let (mut start, mut stop) = (pos, end);
            pos = end;
            if tok.special && !parse_special {
                continue;
            }
            if tok.single_word {
                let start_ok = start == 0 || !ends_with_word(&text[..start]);
                let stop_ok = stop == text.len() || !starts_with_word(&text[stop..]);
                if !(start_ok && stop_ok) {
                    continue;
                }
            }
            if tok.lstrip {
                start = trailing_space_start(&text[..start]).max(emitted);
            }
            if tok.rstrip {
                stop += leading_space_len(&text[stop..]);
            }
            if emitted < start {
                out.push(Piece::Text(&text[emitted..start]));
            }
            out.push(Piece::Token(tok.id));
            emitted = stop;
            // Stripped whitespace on the right is consumed too; a match can only start after it
            // (whitespace never starts an added token in practice, and `tokenizers` would
            // produce overlapping pieces there).
            pos = pos.max(stop);
        }
        if emitted < text.len() {
            out.push(Piece::Text(&text[emitted..]));
        }
    }

    /// The longest token that matches at byte `pos`, with the end of the match.
    #[inline]
    fn longest_at(&self, bytes: &[u8], pos: usize) -> Option<(&AddedToken, usize)> {
        let cands = &self.by_first_byte[bytes[pos] as usize];
        for &i in cands {
            let t = &self.tokens[i as usize];
            let c = t.content.as_bytes();
            if bytes[pos..].starts_with(c) {
                return Some((t, pos + c.len()));
            }
        }
        None
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn ends_with_word(s: &str) -> bool {
    s.chars().next_back().is_some_and(is_word_char)
}

fn starts_with_word(s: &str) -> bool {
    s.chars().next().is_some_and(is_word_char)
}

/// Byte offset where the trailing whitespace of `s` starts.
fn trailing_space_start(s: &str) -> usize {
    s.trim_end_matches(char::is_whitespace).len()
}

/// Byte length of the leading whitespace of `s`.
fn leading_space_len(s: &str) -> usize {
    s.len() - s.trim_start_matches(char::is_whitespace).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(id: u32, content: &str, special: bool) -> AddedToken {
        AddedToken {
            id,
            content: content.into(),
            special,
            single_word: false,
            lstrip: false,
            rstrip: false,
            normalized: false,
        }
    }

    #[test]
    fn leftmost_longest() {
        let m = Matcher::new(vec![
            tok(1, "<a>", true),
            tok(2, "<a><b>", false),
            tok(3, "b", false),
        ]);
        let mut out = Vec::new();
        m.split("x<a><b>y<a>b", true, &mut out);
        assert_eq!(
            out,
            [
                Piece::Text("x"),
                Piece::Token(2),
                Piece::Text("y"),
                Piece::Token(1),
                Piece::Token(3)
            ]
        );
        out.clear();
        m.split("<a>b", false, &mut out);
        assert_eq!(out, [Piece::Text("<a>"), Piece::Token(3)]);
    }

    #[test]
    fn strip_and_single_word() {
        let mut t = tok(7, "<m>", true);
        t.lstrip = true;
        t.rstrip = true;
        let mut w = tok(8, "cat", false);
        w.single_word = true;
        let m = Matcher::new(vec![t, w]);
        let mut out = Vec::new();
        m.split("a  <m>  b cats cat", true, &mut out);
        assert_eq!(
            out,
            [
                Piece::Text("a"),
                Piece::Token(7),
                Piece::Text("b cats "),
                Piece::Token(8)
            ]
        );
    }
}
