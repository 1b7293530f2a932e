//! Prompt sets for benchmarks: a small embedded corpus (public-domain prose, code written for
//! this project, and public-domain text in several languages and scripts) and a seeded
//! generator of synthetic token-id workloads for the standard prompt and generation lengths.

use crate::rng::{Rng, key};

/// Prompt lengths of the benchmark grid (tokens).
pub const PROMPT_LENGTHS: [usize; 4] = [32, 128, 512, 2048];
/// Generation lengths of the benchmark grid (tokens).
pub const GEN_LENGTHS: [usize; 3] = [32, 128, 512];
/// Ids below this are ordinary BPE tokens in the Qwen vocabulary (151,643 of them); synthetic
/// workloads draw from them, never from special or padding ids.
pub const QWEN_BPE_TOKENS: u32 = 151_643;

/// What a corpus document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocKind {
    /// English prose.
    Text,
    /// Source code.
    Code,
    /// Text in another language or script.
    Multilingual,
}

/// One document of the corpus.
#[derive(Clone, Copy, Debug)]
pub struct Doc {
    /// Short identifier.
    pub name: &'static str,
    /// Kind.
    pub kind: DocKind,
    /// BCP-47 language tag (or the programming language for code).
    pub lang: &'static str,
    /// Where it comes from and why it may be shipped.
    pub source: &'static str,
    /// The text.
    pub text: &'static str,
}

/// The embedded corpus (a few KB).
pub const CORPUS: &[Doc] = &[
    Doc {
        name: "pride-and-prejudice",
        kind: DocKind::Text,
        lang: "en",
        source: "Jane Austen, Pride and Prejudice (1813), opening; public domain",
        text: "It is a truth universally acknowledged, that a single man in possession of a good \
fortune, must be in want of a wife. However little known the feelings or views of such a man may \
be on his first entering a neighbourhood, this truth is so well fixed in the minds of the \
surrounding families, that he is considered the rightful property of some one or other of their \
daughters. \"My dear Mr. Bennet,\" said his lady to him one day, \"have you heard that Netherfield \
Park is let at last?\" Mr. Bennet replied that he had not.",
    },
    Doc {
        name: "tale-of-two-cities",
        kind: DocKind::Text,
        lang: "en",
        source: "Charles Dickens, A Tale of Two Cities (1859), opening; public domain",
        text: "It was the best of times, it was the worst of times, it was the age of wisdom, it \
was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was \
the season of Light, it was the season of Darkness, it was the spring of hope, it was the winter \
of despair, we had everything before us, we had nothing before us, we were all going direct to \
Heaven, we were all going direct the other way.",
    },
    Doc {
        name: "origin-of-species",
        kind: DocKind::Text,
        lang: "en",
        source: "Charles Darwin, On the Origin of Species (1859), closing sentence; public domain",
        text: "There is grandeur in this view of life, with its several powers, having been \
originally breathed into a few forms or into one; and that, whilst this planet has gone cycling \
on according to the fixed law of gravity, from so simple a beginning endless forms most beautiful \
and most wonderful have been, and are being, evolved.",
    },
    Doc {
        name: "rust-lru",
        kind: DocKind::Code,
        lang: "rust",
        source: "written for this project (MIT OR Apache-2.0)",
        text: "/// A least-recently-used set of expert ids with a fixed capacity.
pub struct Lru {
    cap: usize,
    order: std::collections::VecDeque<u32>,
}

impl Lru {
    pub fn new(cap: usize) -> Self {
        Lru { cap, order: std::collections::VecDeque::with_capacity(cap) }
    }

    /// Marks `id` as used; returns the id evicted to make room, if any.
    pub fn touch(&mut self, id: u32) -> Option<u32> {
        if let Some(pos) = self.order.iter().position(|&x| x == id) {
            self.order.remove(pos);
            self.order.push_back(id);
            return None;
        }
        let evicted = if self.order.len() == self.cap { self.order.pop_front() } else { None };
        self.order.push_back(id);
        evicted
    }
}
",
    },
    Doc {
        name: "python-stats",
        kind: DocKind::Code,
        lang: "python",
        source: "written for this project (MIT OR Apache-2.0)",
        text: "import math
from collections import Counter


def zipf_exponent(counts):
    \"\"\"Least-squares slope of log frequency against log rank.\"\"\"
    freqs = sorted((c for c in counts.values() if c > 0), reverse=True)
    xs = [math.log(r + 1) for r in range(len(freqs))]
    ys = [math.log(f) for f in freqs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    return -sxy / sxx


if __name__ == \"__main__\":
    words = open(\"corpus.txt\", encoding=\"utf-8\").read().split()
    print(f\"{len(words)} words, exponent {zipf_exponent(Counter(words)):.3f}\")
",
    },
    Doc {
        name: "json-config",
        kind: DocKind::Code,
        lang: "json",
        source: "written for this project (MIT OR Apache-2.0)",
        text: "{\"architectures\": [\"SmallThinkerForCausalLM\"], \"hidden_size\": 1536, \
\"num_hidden_layers\": 32, \"moe_num_primary_experts\": 32, \"moe_num_active_primary_experts\": 4, \
\"moe_ffn_hidden_size\": 768, \"rope_theta\": 1500000.0, \"tie_word_embeddings\": true}",
    },
    Doc {
        name: "don-quijote",
        kind: DocKind::Multilingual,
        lang: "es",
        source: "Miguel de Cervantes, Don Quijote de la Mancha (1605), opening; public domain",
        text: "En un lugar de la Mancha, de cuyo nombre no quiero acordarme, no ha mucho tiempo \
que vivía un hidalgo de los de lanza en astillero, adarga antigua, rocín flaco y galgo corredor.",
    },
    Doc {
        name: "faust",
        kind: DocKind::Multilingual,
        lang: "de",
        source: "Johann Wolfgang von Goethe, Faust I (1808), Nacht; public domain",
        text: "Habe nun, ach! Philosophie, Juristerei und Medizin, und leider auch Theologie \
durchaus studiert, mit heißem Bemühn. Da steh ich nun, ich armer Tor! Und bin so klug als wie \
zuvor.",
    },
    Doc {
        name: "les-miserables",
        kind: DocKind::Multilingual,
        lang: "fr",
        source: "Victor Hugo, Les Misérables (1862), opening; public domain",
        text: "En 1815, M. Charles-François-Bienvenu Myriel était évêque de Digne. C'était un \
vieillard d'environ soixante-quinze ans; il occupait le siège de Digne depuis 1806.",
    },
    Doc {
        name: "eugene-onegin",
        kind: DocKind::Multilingual,
        lang: "ru",
        source: "Alexander Pushkin, Eugene Onegin (1833), I.1; public domain",
        text: "Мой дядя самых честных правил, когда не в шутку занемог, он уважать себя заставил \
и лучше выдумать не мог.",
    },
    Doc {
        name: "tao-te-ching",
        kind: DocKind::Multilingual,
        lang: "zh",
        source: "Laozi, Tao Te Ching, chapter 1; public domain",
        text: "道可道，非常道。名可名，非常名。無名天地之始；有名萬物之母。故常無欲，以觀其妙；常有欲，以觀其徼。",
    },
    Doc {
        name: "analects",
        kind: DocKind::Multilingual,
        lang: "zh",
        source: "Confucius, Analects 1.1; public domain",
        text: "子曰：學而時習之，不亦說乎？有朋自遠方來，不亦樂乎？人不知而不慍，不亦君子乎？",
    },
    Doc {
        name: "makura-no-soshi",
        kind: DocKind::Multilingual,
        lang: "ja",
        source: "Sei Shōnagon, The Pillow Book (c. 1002), opening; public domain",
        text: "春はあけぼの。やうやう白くなりゆく山ぎは、すこしあかりて、紫だちたる雲のほそくたなびきたる。",
    },
];

/// Documents of one kind.
pub fn docs(kind: DocKind) -> impl Iterator<Item = &'static Doc> {
    CORPUS.iter().filter(move |d| d.kind == kind)
}

/// A user message in ChatML with the assistant's turn opened, as SmallThinker expects.
pub fn chat_prompt(user: &str) -> String {
    format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}

/// How synthetic token ids are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TokenDist {
    /// Uniform over the ordinary tokens (what the generator's calibration assumes).
    Uniform,
    /// Zipf with this exponent over a seeded permutation of the ordinary tokens (repeats like
    /// natural text: frequent tokens come back, and so do their experts).
    Zipf(f64),
}

/// `len` seeded token ids below `min(vocab, QWEN_BPE_TOKENS)`.
pub fn synthetic_prompt(seed: u64, len: usize, vocab: usize, dist: TokenDist) -> Vec<u32> {
    let n = (vocab as u64).min(u64::from(QWEN_BPE_TOKENS)).max(1);
    let mut rng = Rng::new(key(seed, &[0x9207, len as u64]));
    match dist {
        TokenDist::Uniform => (0..len).map(|_| (rng.below(n as usize)) as u32).collect(),
        TokenDist::Zipf(s) => {
            // Inverse-CDF over ranks; a rank maps to an id by a fixed multiplicative hash.
            let ranks = n.min(1 << 16) as usize;
            let mut cdf = Vec::with_capacity(ranks);
            let mut acc = 0.0;
            for r in 1..=ranks {
                acc += (r as f64).powf(-s);
                cdf.push(acc);
            }
            (0..len)
                .map(|_| {
                    let u = rng.uniform() * acc;
                    let r = cdf.partition_point(|&c| c < u) as u64;
                    ((r.wrapping_mul(0x9E37_79B9) ^ (seed & 0xFFFF)) % n) as u32
                })
                .collect()
        }
    }
}

/// One benchmark workload.
#[derive(Clone, Debug)]
pub struct Workload {
    /// `pp<prompt>-tg<gen>`.
    pub name: String,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Tokens to generate.
    pub gen_len: usize,
}

/// The benchmark grid: every prompt length × generation length, uniform synthetic ids,
/// deterministic in `seed`.
pub fn synthetic_suite(seed: u64, vocab: usize) -> Vec<Workload> {
    let mut out = Vec::new();
    for &p in &PROMPT_LENGTHS {
        for &g in &GEN_LENGTHS {
            out.push(Workload {
                name: format!("pp{p}-tg{g}"),
                prompt: synthetic_prompt(seed ^ (p as u64) << 20, p, vocab, TokenDist::Uniform),
                gen_len: g,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_covers_text_code_and_scripts() {
        assert!(docs(DocKind::Text).count() >= 3);
        assert!(docs(DocKind::Code).count() >= 3);
        assert!(docs(DocKind::Multilingual).count() >= 5);
        let bytes: usize = CORPUS.iter().map(|d| d.text.len()).sum();
        assert!((3_000..20_000).contains(&bytes), "{bytes}");
        assert!(CORPUS.iter().any(|d| {
            d.text
                .chars()
                .any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
        }));
    }

    #[test]
    fn synthetic_prompts_are_seeded_and_in_range() {
        let a = synthetic_prompt(1, 512, 151_936, TokenDist::Uniform);
        assert_eq!(a, synthetic_prompt(1, 512, 151_936, TokenDist::Uniform));
        assert_ne!(a, synthetic_prompt(2, 512, 151_936, TokenDist::Uniform));
        assert!(a.iter().all(|&t| t < QWEN_BPE_TOKENS));
        let small = synthetic_prompt(1, 512, 300, TokenDist::Zipf(1.0));
        assert!(small.iter().all(|&t| t < 300));
        let distinct: std::collections::HashSet<_> = small.iter().collect();
        assert!(distinct.len() < 300, "zipf repeats tokens");
        let suite = synthetic_suite(0, 151_936);
        assert_eq!(suite.len(), 12);
        assert_eq!(suite[11].prompt.len(), 2048);
        assert_eq!(suite[11].gen_len, 512);
    }
}
